"""The node's software and hardware fingerprint (issue 12 #3): what a
workload's requirements are checked against before a failover or a role
moves here, so that a standby with another CUDA stack is never the target
(the seed's "Node A runs 12.1 and Node B 12.2").

`node_fingerprint(gpu_reading)` returns a JSON-able dict: driver and CUDA
driver version, GPU model, compute capability, count and memory (from the
GPU probe's reading; "no GPU: ..." when there is none), CPU model and the
flags inference kernels dispatch on (avx2, fma, avx512*, amx*), kernel,
Python, and the installed engines' versions (torch with its CUDA build, vLLM,
sentence-transformers, read from package metadata without importing them).
Never raises: a value that cannot be read is left out, not guessed.
"""

from __future__ import annotations

import platform
import re
from importlib import metadata, util
from pathlib import Path
from typing import Any

from vigil.probes.base import Reading

ENGINES = ("torch", "vllm", "tokenizers", "sentence-transformers", "transformers", "llama-cpp-python")
CPU_FLAGS = re.compile(r"^(avx2|fma|avx512\w*|amx\w*|f16c)$")


def node_fingerprint(gpu: Reading, cpuinfo: str = "/proc/cpuinfo") -> dict[str, Any]:
    return {**_gpus(gpu), **_cpu(cpuinfo), "kernel": platform.release(),
            "python": platform.python_version(), "engines": _engines()}


def _gpus(r: Reading) -> dict[str, Any]:
    if not r.available:
        return {"gpu": r.problem or "no GPU"}
    gpus = [g for g in r.values.get("gpus", []) if not g.get("lost")]
    models = sorted({g.get("name") for g in gpus if isinstance(g.get("name"), str)})
    caps = sorted({g.get("compute_capability") for g in gpus if isinstance(g.get("compute_capability"), str)})
    mem = [g["memory_mib"]["total"] for g in gpus if isinstance(g.get("memory_mib"), dict)]
    return {"driver": r.values.get("driver_version"), "cuda_driver": r.values.get("cuda_driver_version"),
            "gpu_model": models[0] if len(models) == 1 else models, "compute_capability":
            caps[0] if len(caps) == 1 else caps, "gpu_count": len(gpus),
            "gpu_memory_mib": min(mem) if mem else None}


def _cpu(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError:
        return {}
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    return {"cpu_model": model.group(1).strip() if model else None,
            "cpu_flags": sorted(f for f in (flags.group(1).split() if flags else []) if CPU_FLAGS.match(f))}


def _engines() -> dict[str, str]:
    out = {}
    for name in ENGINES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    cuda = _torch_cuda()
    if cuda:
        out["torch_cuda"] = cuda
    return out


def _torch_cuda() -> str | None:
    """torch's CUDA build (torch/version.py `cuda = '12.4'`), without importing torch."""
    try:
        spec = util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    if not spec or not spec.submodule_search_locations:
        return None
    try:
        text = (Path(next(iter(spec.submodule_search_locations))) / "version.py").read_text()
    except OSError:
        return None
    m = re.search(r"^cuda\s*(?::\s*\S+)?\s*=\s*'([^']+)'", text, re.M)
    return m.group(1) if m else None
