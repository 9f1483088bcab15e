"""A fake NVML for tests: the names of the real `pynvml` module (every
function it defines exists in pynvml; a test checks), its constants and its
exception classes, the real ones, over GPUs described as plain data.

    nvml = FakeNvml([FakeGpu(temperature=70, slowdown=87, ...)])
    nvml.gpus[0].lost = True            # every later call on it: NVMLError_GpuIsLost
    nvml.gpus[0].unsupported.add("nvmlDeviceGetRemappedRows")
    nvml.xids.append((0, 79))           # an XID event for GPU 0
    FakeNvml(library=False)             # nvmlInit: NVMLError_LibraryNotFound
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml


@dataclass
class FakeGpu:
    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    pci: str = "00000000:3B:00.0"
    capability: tuple[int, int] = (9, 0)
    temperature: int = 45
    slowdown: int = 87
    shutdown: int = 92
    gpu_max: int = 85
    clock_events: int = 0  # a mask of nvmlClocksEventReason*
    ecc: dict[tuple[int, int], int] = field(default_factory=dict)  # (error type, counter) -> count
    remapped: tuple[int, int, int, int] = (0, 0, 0, 0)  # correctable, uncorrectable, pending, failure
    retired: dict[int, int] = field(default_factory=dict)  # cause -> pages
    retired_pending: int = 0
    nvlinks: list[bool] = field(default_factory=list)  # per link: active
    nvlink_errors: int = 0
    power_mw: int = 300_000
    power_limit_mw: int = 700_000
    memory: tuple[int, int] = (80 << 30, 1 << 30)  # total, used (bytes)
    recovery: int = 0
    fabric: int = 0
    lost: bool = False
    unsupported: set[str] = field(default_factory=set)  # function names that raise NotSupported


class FakeNvml:
    NVMLError = pynvml.NVMLError

    def __init__(self, gpus: list[FakeGpu] | None = None, library: bool = True,
                 driver_version: str = "570.124.06", cuda: int = 12080):
        self.gpus = gpus if gpus is not None else [FakeGpu()]
        self.library, self.driver_version, self.cuda = library, driver_version, cuda
        self.xids: list[tuple[int, int]] = []  # (gpu index, xid) waiting to be read
        self.initialized = False

    def __getattr__(self, name: str) -> Any:  # constants and exception classes: the real ones
        if name.startswith(("NVML_", "NVMLError", "nvmlClocksEventReason", "nvmlEventType", "c_nvml")):
            return getattr(pynvml, name)
        raise AttributeError(name)

    def _gpu(self, handle: FakeGpu, fn: str) -> FakeGpu:
        if handle.lost:
            raise pynvml.NVMLError_GpuIsLost()
        if fn in handle.unsupported:
            raise pynvml.NVMLError_NotSupported()
        return handle

    # -- system -----------------------------------------------------------------
    def nvmlInit(self) -> None:
        if not self.library:
            raise pynvml.NVMLError_LibraryNotFound()
        self.initialized = True

    def nvmlShutdown(self) -> None:
        self.initialized = False

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.driver_version

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return self.cuda

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> FakeGpu:
        if not 0 <= i < len(self.gpus):
            raise pynvml.NVMLError_InvalidArgument()
        return self._gpu(self.gpus[i], "nvmlDeviceGetHandleByIndex")

    # -- per GPU ------------------------------------------------------------------
    def nvmlDeviceGetName(self, h: FakeGpu) -> str:
        return self._gpu(h, "nvmlDeviceGetName").name

    def nvmlDeviceGetUUID(self, h: FakeGpu) -> str:
        return self._gpu(h, "nvmlDeviceGetUUID").uuid

    def nvmlDeviceGetPciInfo(self, h: FakeGpu) -> Any:
        return SimpleNamespace(busId=self._gpu(h, "nvmlDeviceGetPciInfo").pci)

    def nvmlDeviceGetCudaComputeCapability(self, h: FakeGpu) -> tuple[int, int]:
        return self._gpu(h, "nvmlDeviceGetCudaComputeCapability").capability

    def nvmlDeviceGetTemperature(self, h: FakeGpu, sensor: int) -> int:
        return self._gpu(h, "nvmlDeviceGetTemperature").temperature

    def nvmlDeviceGetTemperatureThreshold(self, h: FakeGpu, which: int) -> int:
        g = self._gpu(h, "nvmlDeviceGetTemperatureThreshold")
        return {pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN: g.slowdown,
                pynvml.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN: g.shutdown,
                pynvml.NVML_TEMPERATURE_THRESHOLD_GPU_MAX: g.gpu_max}[which]

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: FakeGpu) -> int:
        return self._gpu(h, "nvmlDeviceGetCurrentClocksEventReasons").clock_events

    def nvmlDeviceGetTotalEccErrors(self, h: FakeGpu, kind: int, counter: int) -> int:
        return self._gpu(h, "nvmlDeviceGetTotalEccErrors").ecc.get((kind, counter), 0)

    def nvmlDeviceGetRemappedRows(self, h: FakeGpu) -> tuple[int, int, int, int]:
        return self._gpu(h, "nvmlDeviceGetRemappedRows").remapped

    def nvmlDeviceGetRetiredPages(self, h: FakeGpu, cause: int) -> list[int]:
        return list(range(self._gpu(h, "nvmlDeviceGetRetiredPages").retired.get(cause, 0)))

    def nvmlDeviceGetRetiredPagesPendingStatus(self, h: FakeGpu) -> int:
        return self._gpu(h, "nvmlDeviceGetRetiredPagesPendingStatus").retired_pending

    def nvmlDeviceGetNvLinkState(self, h: FakeGpu, link: int) -> int:
        g = self._gpu(h, "nvmlDeviceGetNvLinkState")
        if not g.nvlinks:
            raise pynvml.NVMLError_NotSupported()
        if link >= len(g.nvlinks):
            raise pynvml.NVMLError_InvalidArgument()
        return int(g.nvlinks[link])

    def nvmlDeviceGetNvLinkErrorCounter(self, h: FakeGpu, link: int, counter: int) -> int:
        return self._gpu(h, "nvmlDeviceGetNvLinkErrorCounter").nvlink_errors

    def nvmlDeviceGetPowerUsage(self, h: FakeGpu) -> int:
        return self._gpu(h, "nvmlDeviceGetPowerUsage").power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, h: FakeGpu) -> int:
        return self._gpu(h, "nvmlDeviceGetEnforcedPowerLimit").power_limit_mw

    def nvmlDeviceGetMemoryInfo(self, h: FakeGpu) -> Any:
        total, used = self._gpu(h, "nvmlDeviceGetMemoryInfo").memory
        return SimpleNamespace(total=total, used=used, free=total - used)

    def nvmlDeviceGetFieldValues(self, h: FakeGpu, ids: list[int]) -> list[Any]:
        g = self._gpu(h, "nvmlDeviceGetFieldValues")
        return [SimpleNamespace(fieldId=i, nvmlReturn=pynvml.NVML_SUCCESS, value=SimpleNamespace(uiVal=g.recovery))
                for i in ids]

    def nvmlDeviceGetGpuFabricInfoV(self, h: FakeGpu, info: Any) -> int:
        if not isinstance(info, type(ctypes.byref(ctypes.c_int()))):  # as NVML: a pointer, never a copy
            raise TypeError("nvmlDeviceGetGpuFabricInfoV needs ctypes.byref(info)")
        info._obj.state = self._gpu(h, "nvmlDeviceGetGpuFabricInfo").fabric
        return pynvml.NVML_SUCCESS

    # -- events ------------------------------------------------------------------------
    def nvmlEventSetCreate(self) -> str:
        return "event-set"

    def nvmlDeviceRegisterEvents(self, h: FakeGpu, types: int, events: Any) -> None:
        self._gpu(h, "nvmlDeviceRegisterEvents")

    def nvmlEventSetWait(self, events: Any, timeout_ms: int) -> Any:
        if not self.xids:
            raise pynvml.NVMLError_Timeout()
        i, xid = self.xids.pop(0)
        return SimpleNamespace(eventData=xid, device=self.gpus[i], eventType=pynvml.nvmlEventTypeXidCriticalError)

    def nvmlEventSetFree(self, events: Any) -> None:
        return None
