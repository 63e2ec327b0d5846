"""Checks that need the device they run on: run by experiments/gpu_check.sh with
MOT_TEST_DEVICE=cuda (or cpu). Not part of the CPU test suite (pytest collects test_*.py only).

    MOT_TEST_DEVICE=cuda python -m pytest -q experiments/gpu_tests.py
"""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mot import GPT, GPTConfig, MixtureOfExperts, MixtureOfTokens  # noqa: E402
from test_mot import loop_moe, loop_mot, randn  # noqa: E402

DEVICE = os.environ.get("MOT_TEST_DEVICE", "cpu")
CUDA = DEVICE.startswith("cuda")
DTYPE = torch.bfloat16 if CUDA and torch.cuda.is_bf16_supported() else torch.float32
KINDS = dict(dense={}, mot=dict(n_experts=8, group_size=4), moe=dict(n_experts=4, moe_top_k=2))


def gpt(kind: str) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=32, vocab_size=64, n_layer=2, n_head=2, n_embd=64, ffn=kind,
                         **KINDS[kind])).to(DEVICE)


@pytest.mark.parametrize("kind", KINDS)
def test_a_training_step_never_waits_for_the_gpu(kind):
    """Forward, backward, clipping and the fused AdamW of a step, under autocast, with torch's
    sync debug mode set to raise on any host-device synchronisation."""
    if not CUDA:
        pytest.skip("torch.cuda.set_sync_debug_mode needs CUDA")
    model = gpt(kind)
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cuda")
    idx = torch.randint(0, 64, (8, 32), device=DEVICE)

    def step():
        with torch.autocast("cuda", dtype=DTYPE):
            _, loss = model(idx, idx)
        (loss + model.aux_loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # the first step allocates the optimizer's state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_mot_on_the_device_matches_the_loop_reference():
    torch.manual_seed(0)
    layer = MixtureOfTokens(16, n_experts=8, group_size=4).to(DEVICE).eval()
    x = randn(8, 5, 16).float().to(DEVICE)
    expected, _ = loop_mot(layer.double().cpu(), x.double().cpu(), layer.temperature.item())
    out = layer.float().to(DEVICE)(x)
    torch.testing.assert_close(out.cpu().double(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, DTYPE])
def test_moe_on_the_device_matches_the_loop_reference(dtype):
    """Whichever path runs on this device and dtype (grouped_mm or the gather), the outputs are
    the loop's to the dtype's precision."""
    torch.manual_seed(0)
    layer = MixtureOfExperts(16, n_experts=4, top_k=2, expert_size=32).to(DEVICE)
    x = randn(4, 8, 16).float().to(DEVICE)
    expected, _ = loop_moe(layer.double().cpu(), x.double().cpu())
    layer = layer.to(DEVICE, dtype)
    tolerance = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=0.05, atol=0.05)
    torch.testing.assert_close(layer(x.to(dtype)).cpu().double(), expected, **tolerance)


@pytest.mark.parametrize("kind", KINDS)
def test_generation_with_the_cache_equals_recomputing(kind):
    model = gpt(kind).eval()
    prompt = torch.randint(0, 64, (4, 3), device=DEVICE)
    with_cache = model.generate(prompt, 12, temperature=0, kv_cache=True)
    torch.testing.assert_close(with_cache, model.generate(prompt, 12, temperature=0,
                                                          kv_cache=False))
