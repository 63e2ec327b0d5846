"""
What each device runs natively, for train.py, sample.py, bench.py and the GPU check:
default_device(), the device when none is given; unusable_gpu(), why this torch cannot use the
NVIDIA GPU that is here (then a script stops rather than run on the CPU unasked);
device_problem(device), what is wrong with a device this machine does not have;
native_dtype(device), the dtype to train and sample in; peak_flops(device, dtype), the peak of
the GPU present, for the MFU.
"""

import os
import re
from contextlib import nullcontext
from typing import Optional

import torch

# Where Linux shows an NVIDIA GPU without torch: the kernel module's version line, the device.
NVIDIA_DRIVER = "/proc/driver/nvidia/version"
NVIDIA_DEVICE = "/dev/nvidia0"
# Per CUDA major that torch's wheels are built for, newest first: the oldest Linux driver that
# runs every release of it (NVIDIA's "minor version compatibility"), and the wheel index to
# install torch from for it.
CUDA_MAJORS = ((13, "580.65.06", "cu130"), (12, "525.60.13", "cu126"))
WHEEL_INDEX = "https://download.pytorch.org/whl/"


def default_device() -> str:
    """The device when none is given: cuda where torch can use a GPU, else cpu. A caller checks
    unusable_gpu() first: a GPU torch cannot use is no reason to run on the CPU unasked."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def driver_version() -> Optional[str]:
    """The NVIDIA driver's version (e.g. "535.104.05") from NVIDIA_DRIVER, None if unreadable."""
    try:
        with open(NVIDIA_DRIVER) as f:
            line = f.readline()  # NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05 ...
    except OSError:
        return None
    match = re.search(r"\s(\d+\.\d+(?:\.\d+)?)\s", line + " ")
    return match.group(1) if match else None


def unusable_gpu() -> Optional[str]:
    """None, unless this torch is a CUDA build that cannot use the NVIDIA GPU here (a driver too
    old for its CUDA, ...): then why, the driver's version and the fix, as one line. A machine
    without an NVIDIA GPU, or a CPU build of torch, is no problem: the CPU is its device."""
    if torch.version.cuda is None or torch.cuda.is_available() or not (
            os.path.exists(NVIDIA_DRIVER) or os.path.exists(NVIDIA_DEVICE)):
        return None
    this = f"torch {torch.__version__} (CUDA {torch.version.cuda}) cannot use the NVIDIA GPU here"
    version = driver_version()
    if version is None:
        return (f"{this}, and {NVIDIA_DRIVER} does not tell its driver's version: check the "
                f"driver with nvidia-smi, or give --device=cpu")

    def parts(v: str) -> tuple:
        return tuple(int(p) for p in v.split("."))
    runs = [(major, wheel) for major, oldest, wheel in CUDA_MAJORS
            if parts(version) >= parts(oldest)]
    if not runs:
        return (f"{this}: its driver {version} is older than torch's CUDA wheels need; update "
                f"it to {CUDA_MAJORS[-1][1]} or newer, or give --device=cpu")
    major, wheel = runs[0]
    if major >= parts(torch.version.cuda)[0]:  # the driver is not what stops it
        return (f"{this}, although its driver {version} runs CUDA {major}: check the driver "
                f"with nvidia-smi, or give --device=cpu")
    return (f"{this}: its driver {version} runs CUDA {major} at most; install torch built for "
            f"it (pip install torch --index-url {WHEEL_INDEX}{wheel}) or update the driver, "
            f"or give --device=cpu")


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
        return unusable_gpu() or "CUDA is not available on this machine; use --device=cpu"
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
