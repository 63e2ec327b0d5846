"""bench.py --memory: its fake-tensor estimate against a real CPU measurement, against a count by
hand, linear in the batch, and the claim (README, docs/gpus.md) that the shakespeare recipes fit
a 16 GB T4."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import bench
from mot import GPT, GPTConfig

TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=96, dropout=0.1)
FFNS = {"dense": {}, "mot": dict(ffn="mot", n_experts=8, group_size=4),
        "moe": dict(ffn="moe", n_experts=4, moe_top_k=2)}


def estimate(config: GPTConfig, batch_size: int, dtype=torch.bfloat16) -> dict:
    with FakeTensorMode():
        return bench.training_memory(GPT(config), batch_size, dtype)


@pytest.mark.parametrize("ffn", FFNS)
def test_fake_tensors_count_what_real_ones_do(ffn):
    """Every byte: saved tensors, peak, with dropout, MoE's grouped matmul and MoT's groups."""
    config = GPTConfig(**TINY, **FFNS[ffn])
    torch.manual_seed(0)
    assert estimate(config, 8) == bench.training_memory(GPT(config), 8, torch.bfloat16)


def test_dropout_saves_bool_masks_and_attention_no_weights():
    """As on a GPU: dropout adds one bool mask of (B, T, C) after the embeddings and after each
    attention and FFN, and attention's dropout (inside the GPU's kernel) saves nothing more; the
    math path a CPU takes would save (B, nh, T, T) weights."""
    B, T, C, L = 4, TINY["block_size"], TINY["n_embd"], TINY["n_layer"]
    with_dropout = estimate(GPTConfig(**TINY), B)["saved"]
    without = estimate(GPTConfig(**{**TINY, "dropout": 0.0}), B)["saved"]
    assert with_dropout - without == (2 * L + 1) * B * T * C


def test_mot_memory_grows_linearly_with_the_batch():
    """One, two, three groups: the same saved bytes more per group (the weights' 16-bit copies are
    the constant part); the peak, a maximum over the step of such lines, within 1%."""
    config = GPTConfig(**TINY, **FFNS["mot"])
    saved, peak = zip(*((run["saved"], run["peak"]) for run in
                        (estimate(config, groups * config.group_size) for groups in (1, 2, 3))))
    assert saved[1] - saved[0] == saved[2] - saved[1] > 0
    assert peak[2] - peak[1] == pytest.approx(peak[1] - peak[0], rel=0.01)


def test_shakespeare_recipes_fit_a_16gb_t4():
    """The claim of the README and docs/gpus.md, for each recipe as it is, in the T4's float16."""
    short, _, gib, dtype, _ = bench.GPUS[0]
    assert (short, dtype) == ("T4", "float16")
    for name, argv, vocab_size in bench.RECIPES[:3]:
        config, batch_size = bench.recipe_config(argv, vocab_size)
        peak = estimate(config, batch_size, torch.float16)["peak"] / bench.GiB
        assert bench.FRAGMENTATION * peak + bench.CONTEXT_GIB <= gib, name
