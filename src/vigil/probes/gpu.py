"""GpuProbe: every NVIDIA GPU of the node, read through NVML (`nvidia-ml-py`,
the `pynvml` module: one pure-Python file that imports without a driver).

What it reads per GPU (issue 12): temperature and the slowdown / shutdown /
GPU-max thresholds NVML reports (never hard-coded) and the thermal margin;
clock-event reasons (HW slowdown, SW/HW thermal, power brake, ...); ECC
counts; remapped rows (pending, failure); retired pages (older GPUs); NVLink
state and error counters per link; power and its limit; memory; the GPU
recovery action (field 230; an unknown value reads "unknown(N)", which the
policy treats as drain); the fabric-manager state on NVSwitch systems; XID
critical-error events (`nvmlEventSetWait`, drained without blocking).

Contract (vigil.probes.base): `read(now)` never raises. A node without an
NVIDIA driver reads `available=False`, "no GPU: NVML library not found";
a field the GPU does not support reads "not_supported" (and `statuses`
records which fields answered); NVML_ERROR_GPU_IS_LOST from any call marks
that GPU `lost` and stops reading it. `nvml` may be any module with
pynvml's names and exception classes (the tests' fake).
"""

from __future__ import annotations

import ctypes
from typing import Any, Callable

from vigil.probes.base import Reading

NOT_SUPPORTED = "not_supported"
RECOVERY = {0: "none", 1: "gpu_reset", 2: "node_reboot", 3: "drain_p2p", 4: "drain_and_reset",
            5: "recover_imex_domain", 6: "bus_reset", 7: "system_reboot"}
FABRIC = {0: "not_supported", 1: "not_started", 2: "in_progress", 3: "completed"}
CLOCK_EVENTS = (("hw_slowdown", "nvmlClocksEventReasonHwSlowdown"),
                ("sw_thermal", "nvmlClocksEventReasonSwThermalSlowdown"),
                ("hw_thermal", "nvmlClocksEventReasonHwThermalSlowdown"),
                ("power_brake", "nvmlClocksEventReasonHwPowerBrakeSlowdown"),
                ("sw_power_cap", "nvmlClocksEventReasonSwPowerCap"),
                ("gpu_idle", "nvmlClocksEventReasonGpuIdle"))
NVLINK_COUNTERS = (("replay", "NVML_NVLINK_ERROR_DL_REPLAY"), ("recovery", "NVML_NVLINK_ERROR_DL_RECOVERY"),
                   ("crc_flit", "NVML_NVLINK_ERROR_DL_CRC_FLIT"), ("crc_data", "NVML_NVLINK_ERROR_DL_CRC_DATA"))


class _Lost(Exception):
    """NVML_ERROR_GPU_IS_LOST: the GPU fell off the bus or needs a reset."""


def _text(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


START_RETRY = 30.0  # s: a node whose NVML did not start tries again this often (a driver installed later)


class GpuProbe:
    name = "gpu"

    def __init__(self, nvml: Any = None, xid_events: bool = True):
        self._nvml = nvml
        self._xid_wanted = xid_events
        self._ready = False
        self._retry_at, self._why_not = float("-inf"), ""  # NVML did not start: asked again then
        self._system: dict[str, Any] = {}
        self._events: Any = None  # the XID event set, when the driver gives one
        self.statuses: dict[str, str] = {}  # field -> "ok" | "not_supported" | NVML error name

    # -- start --------------------------------------------------------------------
    def _lib(self) -> Any:
        if self._nvml is None:
            import pynvml

            self._nvml = pynvml
        return self._nvml

    def _start(self) -> str:
        """'' once NVML answers; else why not (a node without GPUs says so plainly)."""
        n = self._lib()
        try:
            n.nvmlInit()
        except n.NVMLError_LibraryNotFound:
            return "no GPU: NVML library not found (no NVIDIA driver on this node)"
        except n.NVMLError_DriverNotLoaded:
            return "no GPU: the NVIDIA driver is not loaded"
        except n.NVMLError as e:
            return f"NVML does not start: {e}"
        self._ready = True
        self._system = {k: self._value(k, f) for k, f in (
            ("driver_version", lambda: _text(n.nvmlSystemGetDriverVersion())),
            ("cuda_driver_version", lambda: _cuda(n.nvmlSystemGetCudaDriverVersion())))}
        if self._xid_wanted:
            self._events = self._register_xids()
        return ""

    def _register_xids(self) -> Any:
        n = self._nvml
        try:
            events = n.nvmlEventSetCreate()
            for i in range(n.nvmlDeviceGetCount()):
                n.nvmlDeviceRegisterEvents(n.nvmlDeviceGetHandleByIndex(i), n.nvmlEventTypeXidCriticalError,
                                           events)
            self.statuses["xid_events"] = "ok"
            return events
        except n.NVMLError as e:
            self.statuses["xid_events"] = "not_supported" if isinstance(e, n.NVMLError_NotSupported) \
                else type(e).__name__
            return None

    def close(self) -> None:
        if self._ready:
            try:
                if self._events is not None:
                    self._nvml.nvmlEventSetFree(self._events)
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError:
                pass
            self._ready = False

    # -- reading ---------------------------------------------------------------------
    def read(self, now: float) -> Reading:
        if not self._ready:
            if now < self._retry_at:  # loading a library that is not there costs a path search
                return Reading(self.name, now, False, problem=self._why_not)
            problem = self._start()
            if problem:
                self._retry_at, self._why_not = now + START_RETRY, problem
                return Reading(self.name, now, False, problem=problem)
        n = self._nvml
        try:
            count = n.nvmlDeviceGetCount()
        except n.NVMLError as e:
            return Reading(self.name, now, True, dict(self._system, count=0, gpus=[]),
                           problem=f"NVML cannot count the GPUs: {e}")
        gpus = [self._gpu(i) for i in range(count)]
        values = dict(self._system, count=count, gpus=gpus, xids=self._drain_xids())
        lost = [g["index"] for g in gpus if g.get("lost")]
        return Reading(self.name, now, True, values,
                       problem=f"GPU(s) {lost} lost (NVML_ERROR_GPU_IS_LOST)" if lost else "")

    def _value(self, key: str, read: Callable[[], Any]) -> Any:
        n = self._nvml
        try:
            v = read()
        except n.NVMLError_GpuIsLost:
            raise _Lost(key) from None
        except n.NVMLError_NotSupported:
            self.statuses[key] = "not_supported"
            return NOT_SUPPORTED
        except n.NVMLError as e:
            self.statuses[key] = type(e).__name__
            return {"error": str(e)}
        self.statuses[key] = "ok"
        return v

    def _gpu(self, i: int) -> dict[str, Any]:
        n = self._nvml
        g: dict[str, Any] = {"index": i}
        try:
            h = self._value("handle", lambda: n.nvmlDeviceGetHandleByIndex(i))
            if isinstance(h, dict) or h == NOT_SUPPORTED:
                return g | {"problem": f"no handle for GPU {i}: {h}"}
            for key, read in self._fields(h):
                g[key] = self._value(key, read)
        except _Lost as e:
            g.update(lost=True, problem=f"GPU {i} is lost (NVML_ERROR_GPU_IS_LOST reading {e}): it fell "
                                        "off the bus or needs a reset")
            return g
        if isinstance(g.get("temperature_c"), int) and isinstance(g.get("slowdown_c"), int):
            g["thermal_margin_c"] = g["slowdown_c"] - g["temperature_c"]
        return g

    def _fields(self, h: Any) -> list[tuple[str, Callable[[], Any]]]:
        n = self._nvml
        return [
            ("name", lambda: _text(n.nvmlDeviceGetName(h))),
            ("uuid", lambda: _text(n.nvmlDeviceGetUUID(h))),
            ("pci_bus_id", lambda: _text(n.nvmlDeviceGetPciInfo(h).busId)),
            ("compute_capability", lambda: "%d.%d" % tuple(n.nvmlDeviceGetCudaComputeCapability(h))),
            ("temperature_c", lambda: int(n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU))),
            ("slowdown_c", lambda: self._threshold(h, "NVML_TEMPERATURE_THRESHOLD_SLOWDOWN")),
            ("shutdown_c", lambda: self._threshold(h, "NVML_TEMPERATURE_THRESHOLD_SHUTDOWN")),
            ("gpu_max_c", lambda: self._threshold(h, "NVML_TEMPERATURE_THRESHOLD_GPU_MAX")),
            ("clock_events", lambda: self._clock_events(h)),
            ("ecc_uncorrected_volatile", lambda: self._ecc(h, "UNCORRECTED", "NVML_VOLATILE_ECC")),
            ("ecc_corrected_volatile", lambda: self._ecc(h, "CORRECTED", "NVML_VOLATILE_ECC")),
            ("ecc_uncorrected_aggregate", lambda: self._ecc(h, "UNCORRECTED", "NVML_AGGREGATE_ECC")),
            ("remapped_rows", lambda: dict(zip(("correctable", "uncorrectable", "pending", "failure"),
                                               n.nvmlDeviceGetRemappedRows(h)))),
            ("retired_pages", lambda: self._retired(h)),
            ("nvlink", lambda: self._nvlinks(h)),
            ("power_w", lambda: round(n.nvmlDeviceGetPowerUsage(h) / 1000, 1)),
            ("power_limit_w", lambda: round(n.nvmlDeviceGetEnforcedPowerLimit(h) / 1000, 1)),
            ("memory_mib", lambda: (lambda m: {"total": m.total >> 20, "used": m.used >> 20})(
                n.nvmlDeviceGetMemoryInfo(h))),
            ("recovery_action", lambda: self._recovery(h)),
            ("fabric_state", lambda: self._fabric(h)),
        ]

    def _threshold(self, h: Any, which: str) -> int:
        n = self._nvml
        return int(n.nvmlDeviceGetTemperatureThreshold(h, getattr(n, which)))

    def _clock_events(self, h: Any) -> list[str]:
        n = self._nvml
        mask = n.nvmlDeviceGetCurrentClocksEventReasons(h)
        return [name for name, const in CLOCK_EVENTS if mask & getattr(n, const, 0)]

    def _ecc(self, h: Any, kind: str, counter: str) -> int:
        n = self._nvml
        return int(n.nvmlDeviceGetTotalEccErrors(h, getattr(n, f"NVML_MEMORY_ERROR_TYPE_{kind}"),
                                                 getattr(n, counter)))

    def _retired(self, h: Any) -> dict[str, Any]:
        n = self._nvml
        return {"single_bit": len(n.nvmlDeviceGetRetiredPages(
                    h, n.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS)),
                "double_bit": len(n.nvmlDeviceGetRetiredPages(h, n.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR)),
                "pending": bool(n.nvmlDeviceGetRetiredPagesPendingStatus(h))}

    def _nvlinks(self, h: Any) -> list[dict[str, Any]]:
        """Every link NVML knows on this GPU: active or not, and its error counters.
        NotSupported on link 0 means no NVLink at all (raised: the field reads so)."""
        n = self._nvml
        links = []
        for link in range(n.NVML_NVLINK_MAX_LINKS):
            try:
                active = bool(n.nvmlDeviceGetNvLinkState(h, link))
            except (n.NVMLError_NotSupported, n.NVMLError_InvalidArgument):
                if link == 0:
                    raise
                break
            entry: dict[str, Any] = {"link": link, "active": active}
            for name, const in NVLINK_COUNTERS if active else ():
                try:
                    entry[name] = int(n.nvmlDeviceGetNvLinkErrorCounter(h, link, getattr(n, const)))
                except n.NVMLError_NotSupported:
                    entry[name] = NOT_SUPPORTED
            links.append(entry)
        return links

    def _recovery(self, h: Any) -> str:
        n = self._nvml
        (fv,) = n.nvmlDeviceGetFieldValues(h, [n.NVML_FI_DEV_GET_GPU_RECOVERY_ACTION])
        if fv.nvmlReturn != n.NVML_SUCCESS:
            raise n.NVMLError(fv.nvmlReturn)
        v = int(fv.value.uiVal)
        return RECOVERY.get(v, f"unknown({v})")

    def _fabric(self, h: Any) -> str:
        """The versioned call where pynvml has it; the structure goes by reference
        (passed by value, the driver writes through garbage: a segfault, seen on an H200)."""
        n = self._nvml
        versioned = hasattr(n, "nvmlDeviceGetGpuFabricInfoV") and hasattr(n, "c_nvmlGpuFabricInfoV_t")
        info = n.c_nvmlGpuFabricInfoV_t() if versioned else n.c_nvmlGpuFabricInfo_t()
        (n.nvmlDeviceGetGpuFabricInfoV if versioned else n.nvmlDeviceGetGpuFabricInfo)(h, ctypes.byref(info))
        return FABRIC.get(int(info.state), f"unknown({int(info.state)})")

    def _drain_xids(self) -> list[dict[str, Any]]:
        """XID critical errors since the last read (never waits)."""
        n = self._nvml
        out: list[dict[str, Any]] = []
        while self._events is not None and len(out) < 1000:
            try:
                data = n.nvmlEventSetWait(self._events, 0)
            except n.NVMLError_Timeout:
                break
            except n.NVMLError_GpuIsLost:
                out.append({"xid": 79, "gpu": None, "detail": "GPU is lost"})
                break
            except n.NVMLError as e:
                self.statuses["xid_events"] = type(e).__name__
                break
            out.append({"xid": int(data.eventData), "gpu": self._event_gpu(data)})
        return out

    def _event_gpu(self, data: Any) -> str | None:
        try:
            return _text(self._nvml.nvmlDeviceGetUUID(data.device))
        except self._nvml.NVMLError:
            return None


def _cuda(v: int) -> str:
    """NVML's CUDA driver version 12020 -> "12.2"."""
    return f"{v // 1000}.{(v % 1000) // 10}"
