"""
What each device runs natively, for train.py, sample.py, bench.py and the GPU check:
device_problem(device), what is wrong with a device this machine does not have;
native_dtype(device), the dtype to train and sample in; peak_flops(device, dtype), the peak of
the GPU present, for the MFU.
"""

import re
from contextlib import nullcontext
from typing import Optional

import torch


def device_here(device: str) -> bool:
    """Whether this machine has `device` (cpu, cuda, cuda:N): the devices the scripts run on."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        return False
    return device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_available()
                                    and (device.index or 0) < torch.cuda.device_count())


def device_problem(device: str) -> Optional[str]:
    """None for a device here, else what is wrong with it and the fix (the caller names the
    setting before it)."""
    if device_here(device):
        return None
    kind = str(device).split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        return "CUDA is not available on this machine; use --device=cpu"
    if kind == "cuda":
        count = torch.cuda.device_count()
        return (f"this machine has {count} GPU{'s' * (count != 1)} (cuda:0 to cuda:{count - 1}); "
                f"use one of them")
    return "use cpu, cuda or cuda:N (the devices these scripts run on)"


def bf16_is_native(device: torch.device) -> bool:
    """Whether the GPU computes in bfloat16 natively (compute capability 8.0 or newer: A100, A10,
    L4, RTX 30xx/40xx, H100). Older GPUs (T4, V100) emulate it slowly, and torch.compile fails on
    it there; torch.cuda.is_bf16_supported() counts that emulation as support."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


def native_dtype(device) -> str:
    """The dtype to train and sample in on `device` (a torch.device or a string such as
    "cuda:1"): bfloat16 where the GPU runs it natively, else float16 (with a GradScaler in
    training), and float32 off CUDA (a CPU emulates both 16-bit types slowly)."""
    device = torch.device(device)
    if device.type != "cuda":
        return "float32"
    return "bfloat16" if bf16_is_native(device) else "float16"


def autocast(device, dtype: str):
    """The context the forward runs in: none for float32, else autocast to the 16-bit dtype on
    the device's type (the weights stay float32)."""
    if dtype == "float32":
        return nullcontext()
    return torch.amp.autocast(torch.device(device).type, dtype=getattr(torch, dtype))


# Dense 16-bit tensor-core peaks (no sparsity) from NVIDIA's data sheets, by a pattern of
# torch.cuda.get_device_name; the first that matches counts.
GPU_PEAK_TFLOPS = [(r"H200", 989), (r"H100 PCIe", 756), (r"H100", 989), (r"A100", 312),
                   (r"\bA10\b", 125), (r"\bL4\b", 121), (r"4090", 165), (r"V100-PCIE", 112),
                   (r"V100", 125), (r"\bT4\b", 65)]


def peak_flops(device, dtype: str) -> Optional[float]:
    """The GPU's peak FLOPS in 16-bit dtypes, for the MFU; None for float32, a CPU, or a GPU not
    in GPU_PEAK_TFLOPS (no MFU is better than a wrong one)."""
    device = torch.device(device)
    if device.type != "cuda" or dtype not in ("bfloat16", "float16"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops * 1e12 for pattern, tflops in GPU_PEAK_TFLOPS
                 if re.search(pattern, name)), None)
