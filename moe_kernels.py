"""
MoE's expert products, for mot.py; a reader of the model can skip this file. (Not kernels.py:
transformers imports a package of that name.)

grouped_mm(a, b, offsets): a token-choice MoE gives each expert a different number of tokens;
sorted by expert, the tokens of expert e are rows offsets[e-1]:offsets[e], and one call multiplies
each run of rows by its expert's matrix.

Where torch's grouped_mm runs (read in PyTorch's source, aten/src/ATen/native/cuda/GroupedBlas.cpp
and GroupedMMUtils.h; its docs say only "bfloat16 on SM >= 80"): on a CPU and on CUDA it takes
float32, bfloat16 and float16 whose rows are 16-byte multiples. On CUDA its fast kernel is for
bfloat16 on compute capability 9.x and 10.x (H100, H200, B200); everywhere else it loops over the
groups with the offsets copied to the host, a wait for the GPU in every call (grouped_mm_syncs):
6 per MoE layer per micro-step (2 products forward, 2 each backward). Here the fast kernel runs on
9.x only (SYNC_FREE): 10.x takes the loop below until a test on one shows torch's gradients
right there. The loop below serves wherever torch's does not (float64, other widths or devices,
10.x, or a torch with neither F.grouped_mm, public since 2.10, nor its older private name
torch._grouped_mm): on CUDA it reads the offsets once per call, 2 waits per layer per micro-step.
Both are linear in memory.
"""

import torch
import torch.nn.functional as F

GROUPED_MM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# torch's op: F.grouped_mm (2.10 on) calls torch._grouped_mm, the same op (2.9 takes CPU tensors;
# 2.8's runs on CUDA only, the tests fail there: docs/gpus.md#which-torch); None: the loop
TORCH_GROUPED_MM = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


# torch.compile on a CPU traces torch's grouped_mm in bfloat16 only; as a custom op the compiler
# needs just the output's shape (register_fake) and the backward (register_autograd), given here.
@torch.library.custom_op("mot::grouped_mm", mutates_args=())
def _grouped_mm(a: torch.Tensor, b: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    return TORCH_GROUPED_MM(a, b, offs=offsets)


@_grouped_mm.register_fake
def _(a, b, offsets):
    if b.dim() == 3:  # (M, K) x (G, K, N) -> (M, N): the forward
        return a.new_empty(a.shape[0], b.shape[2])
    return a.new_empty(offsets.shape[0], a.shape[0], b.shape[1])  # (K, M) x (M, N): b's gradient


def _grouped_mm_backward(ctx, grad):
    a, b, offsets = ctx.saved_tensors
    grad = grad.contiguous()  # grouped_mm rejects the stride-0 gradient of a sum
    return _grouped_mm(grad, b.transpose(1, 2), offsets), _grouped_mm(a.t(), grad, offsets), None


_grouped_mm.register_autograd(_grouped_mm_backward,
                              setup_context=lambda ctx, inputs, output:
                              ctx.save_for_backward(*inputs))


# The compute capabilities (major) where torch's bfloat16 grouped_mm takes its fast kernel, and
# those of them where it is used here: a PyTorch issue reports wrong gradients for empty experts
# on 10.x (B200), so 10.x joins SYNC_FREE once tests/test_device.py passes on one
FAST_KERNEL, SYNC_FREE = (9, 10), (9,)


def fast_kernel(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether torch's grouped_mm would run its fast, sync-free kernel on this device and dtype."""
    return (device.type == "cuda" and dtype == torch.bfloat16
            and torch.cuda.get_device_capability(device)[0] in FAST_KERNEL)


def runs_grouped_mm(device: torch.device, dtype: torch.dtype, k: int, n: int) -> bool:
    """Whether grouped_mm calls torch's for (M, k) x (G, k, n) inputs of this device and dtype:
    on a CPU or CUDA, float32, bfloat16 or float16, rows of 16-byte multiples; never where torch
    has no grouped_mm, nor where its fast kernel is not in SYNC_FREE."""
    align = 16 // dtype.itemsize
    return (TORCH_GROUPED_MM is not None and device.type in ("cpu", "cuda")
            and dtype in GROUPED_MM_DTYPES and k % align == 0 and n % align == 0
            and not (fast_kernel(device, dtype)
                     and torch.cuda.get_device_capability(device)[0] not in SYNC_FREE))


def grouped_mm_syncs(device: torch.device, dtype: torch.dtype, k: int, n: int) -> bool:
    """Whether grouped_mm waits for the GPU (reads the offsets on the host): everywhere on CUDA
    but torch's fast kernel on a SYNC_FREE capability."""
    return device.type == "cuda" and not (runs_grouped_mm(device, dtype, k, n)
                                          and fast_kernel(device, dtype))


def grouped_mm(a: torch.Tensor, b: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Row r of a (M, K), rows sorted by group, times b[its group] (G, K, N) -> (M, N); offsets
    (G,) int32: where each group's rows end (the last is M)."""
    if torch.is_autocast_enabled(a.device.type):  # autocast does not know grouped_mm: cast here
        dtype = torch.get_autocast_dtype(a.device.type)
        a, b = a.to(dtype), b.to(dtype)
    if runs_grouped_mm(a.device, a.dtype, a.shape[1], b.shape[2]):
        return _grouped_mm(a, b, offsets)
    # the same product as a loop over the groups' row ranges: never a (K, N) matrix per row
    ends = offsets.tolist()
    return torch.cat([a[start:end] @ b[g]
                      for g, (start, end) in enumerate(zip([0] + ends[:-1], ends))])
