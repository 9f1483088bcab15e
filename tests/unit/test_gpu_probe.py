"""Issue 12 #1: the GPU probe, against a fake NVML with pynvml's own names and
exception classes (GPU lost, not supported, library not found), against the
real pynvml on this machine (no NVIDIA driver: it must say so, never invent
readings), and the kernel log's Xid lines."""

from __future__ import annotations

import inspect

import pynvml
import pytest

from vigil.errors import ConfigError
from vigil.probes.config import parse_health
from vigil.probes.gpu import NOT_SUPPORTED, GpuProbe
from vigil.probes.xid import KmsgXids, parse_xid
from vigil.testing.fake_nvml import FakeGpu, FakeNvml


def test_the_fake_defines_only_functions_the_real_pynvml_has():
    fake = [n for n, _ in inspect.getmembers(FakeNvml, inspect.isfunction) if n.startswith("nvml")]
    assert len(fake) > 20 and [n for n in fake if not hasattr(pynvml, n)] == []


def test_without_a_driver_the_real_nvml_says_so_and_reads_nothing():
    r = GpuProbe().read(1.0)  # the real pynvml: this machine has no NVIDIA driver
    assert not r.available and r.values == {} and r.problem.startswith("no GPU: NVML library not found")


def test_a_healthy_gpu_reads_every_field_with_thresholds_from_nvml():
    nvml = FakeNvml([FakeGpu(temperature=70, slowdown=90, shutdown=95, nvlinks=[True, False])])
    r = GpuProbe(nvml).read(2.0)
    (g,) = r.values["gpus"]
    assert r.available and r.problem == "" and r.values["cuda_driver_version"] == "12.8"
    assert g["slowdown_c"] == 90 and g["thermal_margin_c"] == 20 and g["compute_capability"] == "9.0"
    assert g["remapped_rows"] == {"correctable": 0, "uncorrectable": 0, "pending": 0, "failure": 0}
    assert g["recovery_action"] == "none" and g["fabric_state"] == "not_supported"
    assert g["nvlink"] == [{"link": 0, "active": True, "replay": 0, "recovery": 0, "crc_flit": 0, "crc_data": 0},
                           {"link": 1, "active": False}]
    assert g["power_w"] == 300.0 and g["memory_mib"] == {"total": 81920, "used": 1024}
    nvml.gpus[0].slowdown = 80  # never a constant: the margin follows what NVML reports
    assert GpuProbe(nvml).read(3.0).values["gpus"][0]["thermal_margin_c"] == 10


def test_a_lost_gpu_is_marked_lost_and_the_others_still_read():
    nvml = FakeNvml([FakeGpu(), FakeGpu(uuid="GPU-2")])
    probe = GpuProbe(nvml)
    probe.read(1.0)
    nvml.gpus[0].lost = True
    r = probe.read(2.0)
    assert r.values["gpus"][0]["lost"] and "NVML_ERROR_GPU_IS_LOST" in r.problem
    assert r.values["gpus"][1]["uuid"] == "GPU-2" and not r.values["gpus"][1].get("lost")


def test_unsupported_fields_read_not_supported_and_are_recorded():
    gpu = FakeGpu(unsupported={"nvmlDeviceGetRemappedRows", "nvmlDeviceGetGpuFabricInfo"})
    probe = GpuProbe(FakeNvml([gpu]))
    g = probe.read(1.0).values["gpus"][0]
    assert g["remapped_rows"] == NOT_SUPPORTED and g["fabric_state"] == NOT_SUPPORTED
    assert g["nvlink"] == NOT_SUPPORTED  # no NVLink on this GPU
    assert probe.statuses["remapped_rows"] == "not_supported" and probe.statuses["temperature_c"] == "ok"


def test_slowdown_reasons_recovery_actions_and_xid_events():
    mask = pynvml.nvmlClocksEventReasonHwThermalSlowdown | pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown
    nvml = FakeNvml([FakeGpu(clock_events=mask, recovery=4, remapped=(0, 1, 1, 0))])
    probe = GpuProbe(nvml)
    g = probe.read(1.0).values["gpus"][0]
    assert g["clock_events"] == ["hw_thermal", "power_brake"] and g["recovery_action"] == "drain_and_reset"
    assert g["remapped_rows"]["pending"] == 1
    nvml.gpus[0].recovery = 99
    nvml.xids += [(0, 79), (0, 48)]
    r = probe.read(2.0)
    assert r.values["gpus"][0]["recovery_action"] == "unknown(99)"  # the policy drains on unknown
    assert [x["xid"] for x in r.values["xids"]] == [79, 48] and probe.read(3.0).values["xids"] == []


@pytest.mark.parametrize("line, pci, xid", [
    ("4,1234,56789,-;NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python3, GPU has fallen off the bus.",
     "0000:3b:00", 79),
    ("[ 1234.5678] NVRM: Xid (PCI:0000:C1:00): 48, pid='<unknown>', name=<unknown>, An uncorrectable "
     "double bit error (DBE) has been detected on GPU in the framebuffer at partition 0, subpartition 0.",
     "0000:c1:00", 48),
    ("6,99,1,-;NVRM: Xid (PCI:0000:07:00): 13, Graphics SM Warp Exception on (GPC 0, TPC 1, SM 0)",
     "0000:07:00", 13),
])
def test_kernel_log_xid_lines_parse(line, pci, xid):
    e = parse_xid(line)
    assert e is not None and e.pci == pci and e.xid == xid and e.detail


@pytest.mark.parametrize("line", ["6,1,2,-;usb 1-1: new device", "NVRM: loading NVIDIA UNIX x86_64 Kernel Module",
                                  "NVRM: Xid (PCI:0000:3b:00): not-a-number", ""])
def test_other_kernel_log_lines_are_not_xids(line):
    assert parse_xid(line) is None


def test_the_log_reader_reports_only_new_xids(tmp_path):
    log = tmp_path / "kmsg"
    log.write_text("6,1,1,-;NVRM: Xid (PCI:0000:3b:00): 31, old news\n")
    reader = KmsgXids(str(log))
    assert reader.read(1.0).values["xids"] == []  # starts at the end
    with log.open("a") as f:
        f.write("6,2,2,-;usb 1-1: new device\n4,3,3,-;NVRM: Xid (PCI:0000:3b:00): 79, GPU has fallen off the bus.\n")
    assert [x["xid"] for x in reader.read(2.0).values["xids"]] == [79]
    reader.close()
    missing = KmsgXids(str(tmp_path / "none")).read(3.0)
    assert not missing.available and "cannot read the kernel log" in missing.problem


def test_a_plain_log_file_is_read_a_whole_line_at_a_time(tmp_path):
    """A file something appends to (health.kernel_log: PATH) may be read mid-line: the
    half is kept until its end arrives, and a line that never ends stays bounded. A
    file truncated or rotated under the reader is read from its new start."""
    log = tmp_path / "kernel.log"
    log.write_text("")
    reader = KmsgXids(str(log))
    reader.read(1.0)
    with log.open("a") as f:
        f.write("[ 1.0] NVRM: Xid (PCI:0000:3b:00): 4")
    assert reader.read(2.0).values["xids"] == []
    with log.open("a") as f:
        f.write("8, DBE (double bit error) ECC error\n" + "x" * 100_000)
    assert [x["xid"] for x in reader.read(3.0).values["xids"]] == [48]
    assert len(reader._partial) <= 4096
    log.write_text("[ 2.0] NVRM: Xid (PCI:0000:3b:00): 79, GPU has fallen off the bus.\n")  # copytruncate
    assert [x["xid"] for x in reader.read(4.0).values["xids"]] == [79], "a truncated file is read from its start"
    with log.open("a") as f:
        f.write("[ 2.5] NVRM: Xid (PCI:0000:3b:00): 63, ECC page retirement\n")  # just before the rotation
    log.rename(tmp_path / "kernel.log.1")  # rotated: a new file under the name
    (tmp_path / "kernel.log").write_text("[ 3.0] NVRM: Xid (PCI:0000:3b:00): 94, Contained ECC error\n")
    assert [x["xid"] for x in reader.read(5.0).values["xids"]] == [63, 94], \
        "the old file read to its end, then the new one from its start"
    reader.close()


@pytest.mark.parametrize("value,path", [("auto", "/dev/kmsg"), ("off", ""), (False, ""),
                                        ("/var/lib/vigil/kernel.log", "/var/lib/vigil/kernel.log")])
def test_health_kernel_log_is_auto_off_or_a_path(value, path):
    assert parse_health({"kernel_log": value}).kernel_log == path


@pytest.mark.parametrize("value", ["kernel.log", "", 7, ["/dev/kmsg"], "/x\0y"])
def test_a_bad_kernel_log_setting_names_the_field_and_the_choices(value):
    with pytest.raises(ConfigError) as e:
        parse_health({"kernel_log": value})
    assert "health.kernel_log" in str(e.value) and "absolute path" in str(e.value)


def test_the_fingerprint_names_the_gpu_stack_cpu_flags_and_engines(tmp_path):
    from vigil.probes.fingerprint import node_fingerprint

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu sse2 avx2 fma avx512f "
                       "avx512_bf16 amx_tile amx_bf16 sse4_2\n")
    reading = GpuProbe(FakeNvml([FakeGpu(), FakeGpu()], cuda=12010)).read(1.0)
    fp = node_fingerprint(reading, str(cpuinfo))
    assert fp["cuda_driver"] == "12.1" and fp["driver"] == "570.124.06" and fp["gpu_count"] == 2
    assert fp["gpu_model"] == "NVIDIA H100 80GB HBM3" and fp["compute_capability"] == "9.0"
    assert fp["gpu_memory_mib"] == 81920 and fp["cpu_model"].startswith("Intel")
    assert fp["cpu_flags"] == ["amx_bf16", "amx_tile", "avx2", "avx512_bf16", "avx512f", "fma"]
    assert fp["python"] and "torch" in fp["engines"]  # installed here (the model server's)
    nogpu = node_fingerprint(GpuProbe(FakeNvml(library=False)).read(1.0), str(cpuinfo))
    assert nogpu["gpu"].startswith("no GPU: NVML library not found") and "cuda_driver" not in nogpu



def test_nvml_that_does_not_start_is_asked_again_every_start_retry_not_every_round():
    """A node without a driver does not search for the library every health
    round; a driver installed later is found at the next retry."""
    from vigil.probes.gpu import START_RETRY

    nvml = FakeNvml([FakeGpu()], library=False)
    probe = GpuProbe(nvml)
    assert not probe.read(10.0).available
    nvml.library = True  # the driver is installed
    r = probe.read(10.0 + START_RETRY / 2)
    assert not r.available and r.problem.startswith("no GPU") and not nvml.initialized
    assert probe.read(10.0 + START_RETRY).available and nvml.initialized
