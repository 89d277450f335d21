"""Describe the machine a benchmark ran on (no hostname): CPU, cores, GPU, library versions."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
from pathlib import Path
from typing import Any

import torch

LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "safetensors")


def cpu_model() -> str:
    """CPU model name from ``/proc/cpuinfo`` (falls back to :func:`platform.processor`)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (affinity mask), else ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_flags() -> list[str]:
    """The SIMD flags relevant to GEMM speed that the CPU reports (avx2, avx512f, amx, ...)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return []
    text = cpuinfo.read_text(errors="replace")
    match = re.search(r"^flags\s*:(.*)$", text, flags=re.MULTILINE)
    flags = set(match.group(1).split()) if match else set()
    wanted = (
        "avx2",
        "fma",
        "avx512f",
        "avx512bw",
        "avx512_vnni",
        "avx512_bf16",
        "avx_vnni",
        "amx_tile",
        "amx_int8",
    )
    return [flag for flag in wanted if flag in flags]


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries whose speed we measure."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def int8_tier(flags: list[str]) -> str:
    """The CPU's int8 matrix-multiply tier from its flags: ``amx``, ``vnni``, ``avx512``, ``avx2`` or ``""``.

    It decides how much faster than fp32 int8 inference can run (AMX tiles and VNNI dot products
    multiply int8 natively; plain AVX-512/AVX2 need two instructions per pair and saturate beyond
    7-bit codes).
    """
    if "amx_int8" in flags:
        return "amx"
    if "avx512_vnni" in flags or "avx_vnni" in flags:
        return "vnni"
    if "avx512bw" in flags:
        return "avx512"
    return "avx2" if "avx2" in flags else ""


def machine_slug(device: str) -> str:
    """Short hostname-free machine label for file names, e.g. ``cpu2-x86_64-amx`` or ``cuda-a100``."""
    if device.startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0).lower()
        name = re.sub(r"nvidia|geforce|tesla", "", name)
        return "cuda-" + (re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "gpu")
    tier = int8_tier(cpu_flags())
    return f"cpu{usable_cores()}-{platform.machine()}" + (f"-{tier}" if tier else "")


def describe_machine(device: str) -> dict[str, Any]:
    """Everything needed to compare results across machines (no hostname, no user names)."""
    info: dict[str, Any] = {
        "slug": machine_slug(device),
        "device": device,
        "cpu_model": cpu_model(),
        "cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "cpu_flags": cpu_flags(),
        "arch": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "memory_gb": _memory_gb(),
        "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
        "versions": library_versions(),
    }
    return info


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (other processes competing for the CPU), if known."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _memory_gb() -> float | None:
    meminfo = Path("/proc/meminfo")
    if not meminfo.exists():
        return None
    match = re.search(r"^MemTotal:\s+(\d+) kB", meminfo.read_text(), flags=re.MULTILINE)
    return round(int(match.group(1)) / 1024**2, 1) if match else None
