"""Choosing the torch device (CUDA, then MPS, then CPU), whether it runs bfloat16 natively, and describing it."""

from __future__ import annotations

import platform

import torch

from cmrstudio.errors import CmrError


def pick_device(pref: str | None = None) -> torch.device:
    if pref:
        try:
            dev = torch.device(pref)
        except RuntimeError:
            raise CmrError(f"--device {pref!r} is not a device name; use cpu, cuda, cuda:0 or mps.") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise CmrError("--device cuda was asked for, but this machine has no usable CUDA GPU; use --device cpu.")
        if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise CmrError("--device mps was asked for, but MPS is not available here; use --device cpu.")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def bf16_native(device: torch.device) -> bool:
    """True where bfloat16 runs natively (CUDA with bf16, or a CPU with AVX-512 BF16 / AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    return f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads, {_cpu_name()}"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.system()
