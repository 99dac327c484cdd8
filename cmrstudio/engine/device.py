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
    """True where bfloat16 runs natively: CUDA with bf16, or a CPU with AVX512-BF16 or AMX.

    oneDNN also reports bf16 support on plain AVX-512 CPUs, where it is emulated and slower
    than fp32; on Linux the CPU's own flags decide.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        flags = _cpu_flags()
        if flags is not None:
            return bool({"avx512_bf16", "amx_bf16"} & flags)
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def autocast_weights(net: torch.nn.Module) -> torch.nn.Module:
    """Store the weights that bfloat16 autocast casts at every call (convolutions, linear layers) in bfloat16 once.

    Autocast then has nothing to cast, and its results are the same to the bit: it casts these weights to bfloat16
    anyway and keeps the rest (norms, embeddings) in float32. The network must then only be run under autocast."""
    for m in net.modules():
        if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)):
            m.to(torch.bfloat16)
    return net


def _cpu_flags() -> set[str] | None:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


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
