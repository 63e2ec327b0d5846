"""Tests of mot.py: the properties that define Mixture of Tokens (causality, grouping, continuity),
checked with hypothesis over random configurations, and the layers against the slow loops of
reference.py, which follow the README's steps 1-5 literally. Tiny models, float64 where exactness
matters: `python -m pytest -q test_mot.py`.

The tests that take the `device` fixture run on pytest's --device (conftest.py; default cpu; the
GPU check gives cuda): their models and inputs are drawn on the CPU, the same numbers on every
device, then moved there, and reference.py's loops run on the CPU; in 16 bits they allow
TOLERANCE. The others state what no device changes (settings, FLOP counts) or the CPU's own facts
(init draws, saved bytes, torch's paths on a faked GPU), and run on the CPU."""

import copy
import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch.func import functional_call

import convert
import devices
import mot
import moe_kernels
from bench import saved_bytes
from mot import (FFNS, GPT, MLP, Block, GPTConfig, MixtureOfExperts, MixtureOfTokens,
                 MixtureOfTokensEmitSoftmax)
from reference import expert, loop_expert_choice, loop_moe, loop_mot

DT = torch.float64
# MoT's τ is stored as a float32 log (exp(log τ) ≠ τ in the last bits): compare with slack.
TOL = dict(rtol=1e-5, atol=1e-7)
GROUPED = dict(group_size=3, n_experts=4)  # with a batch of 6: two groups of three examples
B6 = (6, 3, 8)  # (B, T, C) for GROUPED layers
# MoT and its variants, selected by class: the MoT-only tests (a new grouped FFN is not one)
MOT_KINDS = tuple(kind for kind, ffn in FFNS.items() if issubclass(ffn, MixtureOfTokens))
# Property tests: the same examples on every run (no flaky CI), several per property.
PROPERTY = settings(max_examples=25, deadline=None, database=None, derandomize=True)
# max |error| / max |float64 reference| allowed in each dtype: a few roundings of its precision
TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 3e-3, torch.float32: 1e-4}


# ----------------------------------------------------------------------------- helpers


def tiny_config(**overrides) -> GPTConfig:
    base = dict(block_size=8, vocab_size=32, n_layer=1, n_head=1, n_embd=8, n_experts=4,
                group_size=2, dropout=0.0, ffn="mot")
    return GPTConfig(**{**base, **overrides})


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0, device="cpu") -> torch.Tensor:
    """Drawn on the CPU, so the same numbers on every device."""
    return torch.randn(*shape, generator=generator(seed), dtype=DT).to(device)


def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fill every matrix parameter with N(0, 1/fan_in): routing far from uniform, outputs O(1)."""
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() >= 2:  # controller/router (C, E), w1 (E, C, H), w2 (E, H, C): fan_in = [-2]
                p.copy_(torch.randn(p.shape, generator=generator(seed), dtype=p.dtype)
                        / math.sqrt(p.shape[-2]))
                seed += 1
    return module


def make_layer(seed=0, device="cpu", **overrides):
    """An FFN layer (MoT by default) from tiny_config(**overrides), float64, random weights, in
    eval mode, where MoT keeps its merge weights for inspection (tiny_config has no dropout)."""
    config = tiny_config(**overrides)
    return randomize_(FFNS[config.ffn].from_config(config).to(DT), seed).to(device).eval()


def copy_weights(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    """Copy controller/router, w1, w2 from src to dst (not log_temperature: τ is dst's own)."""
    missing, unexpected = dst.load_state_dict(
        {k: v for k, v in src.state_dict().items() if k != "log_temperature"}, strict=False)
    assert not unexpected and set(missing) <= {"log_temperature"}


def make_gpt(seed=0, device="cpu", **overrides) -> GPT:
    """A float64 GPT (2 layers unless overridden) in train mode, dropout 0, FFN weights random;
    built on the CPU (the same weights on every device), then moved to the device."""
    torch.manual_seed(seed)
    model = GPT(tiny_config(**{**dict(n_layer=2, n_head=2, n_embd=16), **overrides}))
    model = model.to(DT).train()
    for layer in model.ffns((MixtureOfTokens, MixtureOfExperts)):
        randomize_(layer, seed)
    return model.to(device)


def random_tokens(model: GPT, B: int, T: int, seed=0) -> torch.Tensor:
    """Token ids on the model's device."""
    ids = torch.randint(model.config.vocab_size, (B, T), generator=generator(seed))
    return ids.to(model.lm_head.weight.device)


def all_logits(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """Logits at every position (a forward with targets=None returns only the last one)."""
    return model(idx, torch.zeros_like(idx))[0]


def change_after(model: GPT, idx: torch.Tensor, rows, t: int, seed=0) -> torch.Tensor:
    """idx with every token after position t of the given rows replaced by a different token."""
    V, changed = model.config.vocab_size, idx.clone()
    shift = torch.randint(1, V, changed[rows, t + 1:].shape, generator=generator(seed))
    shift = shift.to(idx.device)
    changed[rows, t + 1:] = (changed[rows, t + 1:] + shift) % V
    return changed


def perturbed(layer, x, deltas: dict, eps: float) -> torch.Tensor:
    """The layer's output on x with each named parameter p moved to p + eps * deltas[name]."""
    params = {name: getattr(layer, name) + eps * d for name, d in deltas.items()}
    return functional_call(layer, params, (x,))


def change_ratios(layer, x, deltas: dict, eps_list) -> list:
    """||out(θ + eps·d) − out(θ)|| / eps for each eps: bounded and constant for a smooth layer."""
    with torch.no_grad():
        base = layer(x)
        return [float((perturbed(layer, x, deltas, eps) - base).norm() / eps) for eps in eps_list]


def on(device: torch.device, layer, x: torch.Tensor):
    """A drawn (layer, input) on the device of the test."""
    return layer.to(device), x.to(device)


def on_cpu(loop, layer, x: torch.Tensor, *args):
    """reference.py's loop on CPU copies of the layer and x: the definition, the same on every
    device; its tensors back on x's device."""
    result = loop(copy.deepcopy(layer).cpu(), x.cpu(), *args)
    back = [r.to(x.device) if isinstance(r, torch.Tensor) else r
            for r in (result if isinstance(result, tuple) else (result,))]
    return tuple(back) if isinstance(result, tuple) else back[0]


def orthogonal_part(v: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """v minus its projection on u: adding it to a weight vector w keeps u·w unchanged (ties)."""
    return v - (v @ u) / (u @ u) * u


def scalar(t: torch.Tensor) -> float:
    return float(t.detach())


def nonzero(t: torch.Tensor) -> bool:
    return bool(t.abs().sum() > 0)


# ----------------------------------------------------------------------------- random setups


@st.composite
def gpt_setups(draw, kinds=None):
    """(config, batch size, seed) of a random tiny GPT: any FFN kind (of FFNS as it is when
    drawn, or of `kinds`), heads, widths, experts, group size, expert width, τ, top-k, dense
    first blocks; the batch is whole groups, of every layer."""
    kinds = kinds or tuple(FFNS)
    n_head, head_size = draw(st.integers(1, 2)), draw(st.integers(2, 4))  # LayerNorm needs C > 1
    E, G = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    n_layer = draw(st.integers(1, 2))
    config = tiny_config(ffn=draw(st.sampled_from(kinds)), n_layer=n_layer, n_head=n_head,
                         n_embd=n_head * head_size, n_experts=E, group_size=G,
                         expert_size=draw(st.integers(1, 5)), block_size=draw(st.integers(2, 5)),
                         temperature=draw(st.floats(0.2, 5.0)), moe_top_k=draw(st.integers(1, E)),
                         n_dense_layers=draw(st.integers(0, n_layer - 1)))
    whole = math.lcm(G, FFNS[config.ffn].group_size)  # MoT's G, or a group size of the class
    return config, whole * draw(st.integers(1, 3)), draw(st.integers(0, 2 ** 16))


@st.composite
def ffn_setups(draw, kinds=None):
    """(layer, x) of a random FFN layer of any kind (of FFNS as it is when drawn, or of `kinds`;
    float64, matrices N(0, 1/fan_in), eval mode) and an input of whole groups of its group_size
    (B = n·G, T, C)."""
    kinds = kinds or tuple(FFNS)
    n_groups, T, C = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(2, 6))
    E, seed = draw(st.integers(1, 4)), draw(st.integers(0, 2 ** 16))
    layer = make_layer(seed, ffn=draw(st.sampled_from(kinds)), n_embd=C, n_experts=E,
                       group_size=draw(st.integers(1, 4)), expert_size=draw(st.integers(1, 5)),
                       moe_top_k=draw(st.integers(1, E)), temperature=draw(st.floats(0.2, 5.0)))
    return layer, randn(n_groups * layer.group_size, T, C, seed=seed)


@st.composite
def mot_setups(draw, kinds=MOT_KINDS, G=st.integers(1, 4), E=st.integers(1, 4),
               H=st.integers(1, 5)):
    """(layer, x) of a random MoT layer (a MixtureOfTokens: MoT or a variant; float64, weights
    N(0, 1/fan_in)) and an input of whole groups (B = n·G, T, C)."""
    n_groups, T, C = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 6))
    G, seed = draw(G), draw(st.integers(0, 2 ** 16))
    layer = make_layer(seed, ffn=draw(st.sampled_from(kinds)), n_embd=C, n_experts=draw(E),
                       group_size=G, expert_size=draw(H), temperature=draw(st.floats(0.2, 5.0)))
    return layer, randn(n_groups * G, T, C, seed=seed)


# ----------------------------------------------------------------------------- causality


def check_causal(setup, data, device="cpu"):
    """Changing the tokens after position t, in any set of sequences, leaves every logit at
    positions <= t unchanged; the change is visible at t + 1."""
    config, B, seed = setup
    model = make_gpt(seed, device, **vars(config))
    T = config.block_size
    idx = random_tokens(model, B, T, seed)
    t = data.draw(st.integers(0, T - 2), label="t")
    rows = data.draw(st.lists(st.integers(0, B - 1), min_size=1, unique=True), label="rows")
    base, changed = all_logits(model, idx), all_logits(model, change_after(model, idx, rows, t))
    torch.testing.assert_close(changed[:, :t + 1], base[:, :t + 1], rtol=1e-9, atol=1e-10)
    assert (changed[rows, t + 1] - base[rows, t + 1]).abs().max() > 1e-12


@PROPERTY
@given(setup=gpt_setups(), data=st.data())
def test_gpt_is_causal(setup, data, device):
    """check_causal for every FFN kind of FFNS (when drawn: a kind registered later is covered
    too)."""
    check_causal(setup, data, device)


def test_expert_choice_moe_is_not_causal(device):
    """Expert choice ranks tokens over the whole batch, so future tokens can change past logits."""
    for seed in range(20):
        model = make_gpt(seed, device, ffn="moe", moe_routing="expert_choice")
        idx = random_tokens(model, 2, 6, seed)
        t = 2
        changed = all_logits(model, change_after(model, idx, [0, 1], t, seed))
        if not torch.allclose(changed[:, :t + 1], all_logits(model, idx)[:, :t + 1]):
            return
    pytest.fail("expert choice never let a future token change a past logit")


# ----------------------------------------------------------------------------- grouping


def check_groups(setup, device="cpu"):
    """The batch's output equals each group of group_size examples run alone; permuting the
    examples inside each group permutes the outputs (and MoT's merge weights) the same way."""
    layer, x = on(device, *setup)
    G = layer.group_size
    out, weights = layer(x), getattr(layer, "merge_weights", None)
    torch.testing.assert_close(out, torch.cat([layer(group) for group in x.split(G)]))
    perm = torch.cat([g * G + torch.randperm(G, generator=generator(g))
                      for g in range(len(x) // G)]).to(device)
    torch.testing.assert_close(layer(x[perm]), out[perm])
    if isinstance(layer, MixtureOfTokens):
        torch.testing.assert_close(layer.merge_weights, weights[perm])


@PROPERTY
@given(setup=ffn_setups())
def test_groups_are_independent_and_permutations_inside_a_group_commute(setup, device):
    """check_groups for every FFN kind of FFNS (when drawn: a kind registered later is covered
    too)."""
    check_groups(setup, device)


@PROPERTY
@given(setup=mot_setups(E=st.integers(3, 4), H=st.integers(4, 5)), data=st.data())
def test_a_token_reaches_its_group_at_its_position_only(setup, data, device):
    """Changing x[b, t] changes out[b', t] for every b' in b's group, and nothing else: tokens
    are mixed across the examples of a group, never across positions or groups."""
    layer, x = on(device, *setup)
    B, T, C = x.shape
    G = layer.group_size
    b, t = data.draw(st.integers(0, B - 1), label="b"), data.draw(st.integers(0, T - 1), label="t")
    changed = x.clone()
    changed[b, t] += randn(C, seed=b * T + t, device=device)
    diff = (layer(changed) - layer(x)).abs().amax(-1)  # (B, T)
    reached = torch.zeros(B, T, dtype=torch.bool, device=device)
    reached[b // G * G:(b // G + 1) * G, t] = True
    assert (diff[reached] > 1e-9).all(), diff
    assert (diff[~reached] <= 1e-12).all(), diff


@PROPERTY
@given(setup=mot_setups(kinds=("mot",), G=st.just(1)))
def test_group_size_one_is_a_dense_ffn_of_width_experts_times_expert_size(setup, device):
    """G = 1: every merge weight is 1, so MoT is one dense ReLU FFN whose hidden layer is all
    the experts' hidden units side by side (width E·H), and examples do not interact."""
    layer, x = on(device, *setup)
    E, C, H = layer.w1.shape
    w_in = layer.w1.permute(1, 0, 2).reshape(C, E * H)  # (C, E·H)
    w_out = layer.w2.reshape(E * H, C)  # (E·H, C)
    torch.testing.assert_close(layer(x), F.relu(x @ w_in) @ w_out)
    torch.testing.assert_close(layer.merge_weights,
                               torch.ones(*x.shape[:2], E, dtype=DT, device=device))


@PROPERTY
@given(setup=mot_setups(kinds=("mot",)))
def test_mot_matches_the_loop_reference(setup, device):
    """For random shapes and τ: the layer equals the literal loop of steps 1-5, and its merge
    weights sum to 1 over each group."""
    layer, x = on(device, *setup)
    n_groups, G, T, E = len(x) // layer.group_size, layer.group_size, x.shape[1], \
        layer.w1.shape[0]
    out, weights = on_cpu(loop_mot, layer, x, layer.temperature.item())
    torch.testing.assert_close(layer(x), out, **TOL)
    torch.testing.assert_close(layer.merge_weights, weights, **TOL)
    torch.testing.assert_close(layer.merge_weights.view(n_groups, G, T, E).sum(1),
                               torch.ones(n_groups, T, E, dtype=DT, device=device))


@pytest.mark.parametrize("tau", [1.0, 0.25, 4.0, "discrete"])
def test_mot_matches_the_loop_reference_at_fixed_temperatures(tau, device):
    """The same at τ = 0.25, 1, 4 exactly as configured, and in discrete (argmax) mode."""
    discrete = tau == "discrete"
    layer = make_layer(device=device, **GROUPED, **(dict(mot_routing="discrete") if discrete
                                                    else dict(temperature=tau)))
    x = randn(*B6, device=device)
    out, weights = on_cpu(loop_mot, layer, x, 1.0 if discrete else tau, discrete)
    torch.testing.assert_close(layer(x), out, **TOL)
    torch.testing.assert_close(layer.merge_weights, weights, **TOL)


def test_emit_softmax_variant_emits_a_convex_combination_of_the_experts(device):
    """mot_emit_softmax merges like MoT, but a token's emit weights are a softmax over experts."""
    mixture = make_layer(device=device, **GROUPED)
    variant = make_layer(device=device, **GROUPED, ffn="mot_emit_softmax")
    x = randn(*B6, device=device)
    torch.testing.assert_close(variant.state_dict(), mixture.state_dict())  # the same weights
    logits = (x @ variant.controller).view(2, 3, 3, 4).transpose(1, 2)  # (n, T, G, E)
    emit = variant.get_emit_weights(logits, variant.get_merge_weights(logits))
    torch.testing.assert_close(emit.sum(-1), torch.ones(2, 3, 3, dtype=DT, device=device))
    torch.testing.assert_close(emit, torch.softmax(logits, dim=-1))
    assert not torch.allclose(variant(x), mixture(x))
    torch.testing.assert_close(variant.merge_weights, mixture.merge_weights)


@pytest.mark.parametrize("routing", ["uniform", "random", "discrete"])
def test_merge_entropy_is_the_normalised_entropy_over_each_group(routing, device):
    """merge_entropy() = mean over (group, t, e) of −Σ_i w log w / log G: 1 for plain averages,
    0 for one-hot weights."""
    discrete = routing == "discrete"
    layer = make_layer(device=device, **GROUPED,
                       mot_routing="discrete" if discrete else "continuous")
    x = randn(*B6, device=device)
    if routing == "uniform":
        with torch.no_grad():
            layer.controller.zero_()
    layer(x)
    w = layer.merge_weights.view(2, 3, 3, 4)
    expected = {"uniform": 1.0, "discrete": 0.0}.get(
        routing, scalar(-(w * w.log()).sum(1).mean() / math.log(3)))
    assert layer.merge_entropy() == pytest.approx(expected, abs=1e-9)
    assert routing != "random" or 0.05 < expected < 0.95


def test_merge_entropy_after_an_eval_batch_with_a_partial_group(device):
    """merge_entropy() is a number in [0, 1] after an eval forward whose batch was padded."""
    model = make_gpt(device=device, **GROUPED).eval()
    model(random_tokens(model, 4, 3))
    for layer in model.ffns(MixtureOfTokens):
        assert 0.0 <= layer.merge_entropy() <= 1.0


# ----------------------------------------------------------------------------- continuity

EPS = (1e-1, 1e-2, 1e-3, 1e-4)


def tie(layer, x) -> dict:
    """Make examples 0 and 1 (one group) tie for expert 0 at position 0, example 0 winning by
    1e-12, and return a random direction for every parameter in which example 1 wins for any
    step eps > 0: a discrete router switches there, a continuous one does not notice."""
    deltas = {name: randn(*p.shape, seed=7 + i, device=p.device)
              for i, (name, p) in enumerate(layer.named_parameters())}
    diff = x[0, 0] - x[1, 0]
    with torch.no_grad():
        layer.controller[:, 0] = (orthogonal_part(layer.controller[:, 0], diff)
                                  + 1e-12 * diff / (diff @ diff))
        deltas["controller"][:, 0] = orthogonal_part(deltas["controller"][:, 0], diff) - diff
    return deltas


@PROPERTY
@given(setup=mot_setups(G=st.just(2), H=st.integers(4, 5)))
def test_mot_is_lipschitz_in_its_parameters_even_at_a_routing_tie(setup, device):
    """Moving every parameter by eps·d changes the output by at most L·eps, for eps from 1e-1
    down to 1e-4, L = 2·(the ratio at the smallest eps), at a routing tie too; the ratio
    converges (the layer is differentiable there). The same weights with argmax routing (the
    τ → 0 limit) jump: ||Δout||/eps grows like 1/eps."""
    layer, x = on(device, *setup)
    assume(float((x[0, 0] - x[1, 0]).norm()) > 0.1)
    deltas = tie(layer, x)
    ratios = change_ratios(layer, x, deltas, EPS)
    assume(ratios[-1] > 1e-9)  # not a layer whose ReLUs are all off
    assert max(ratios) < 2 * ratios[-1], ratios
    assert ratios[-1] == pytest.approx(ratios[-2], rel=1e-2), ratios
    if type(layer) is MixtureOfTokens:
        # the switch moves expert 0's output from example 0 to example 1: visible unless it is 0
        assume(nonzero(expert(layer, 0, x[0, 0])) or nonzero(expert(layer, 0, x[1, 0])))
        layer.discrete = True
        jumps = change_ratios(layer, x, deltas, EPS)
        assert jumps[-1] > 100 * jumps[0], jumps


def test_mot_gradcheck(device):
    """MoT is differentiable in its input and in controller, w1, w2 (float64 gradcheck, τ != 1)."""
    layer = make_layer(device=device, n_embd=4, n_experts=3, group_size=2, expert_size=5,
                       temperature=0.7)
    names = ("controller", "w1", "w2")

    def f(x, *params):
        return functional_call(layer, dict(zip(names, params)), (x,))

    inputs = (randn(4, 2, 4, device=device).requires_grad_(),
              *(getattr(layer, n).detach().clone().requires_grad_() for n in names))
    assert torch.autograd.gradcheck(f, inputs)


def test_top1_moe_output_jumps_under_arbitrarily_small_router_change(device):
    """Top-1 MoE: at a router tie, nudging the router by ±δ flips the expert; the output jump
    does not vanish as δ -> 0."""
    layer = make_layer(device=device, ffn="moe", n_experts=2, moe_top_k=1)
    x = randn(1, 1, 8, device=device)
    token = x[0, 0]
    with torch.no_grad():  # expert 1's logit equals expert 0's for this token
        layer.router[:, 1] = layer.router[:, 0] + orthogonal_part(randn(8, seed=1, device=device),
                                                                  token)
    nudge = torch.zeros_like(layer.router)
    nudge[:, 1] = token / token.norm()
    with torch.no_grad():
        expert_gap = float((expert(layer, 0, token) - expert(layer, 1, token)).norm())
        assert expert_gap > 0.1
        for delta in (1e-3, 1e-6, 1e-9):
            jump = (perturbed(layer, x, {"router": nudge}, delta)
                    - perturbed(layer, x, {"router": nudge}, -delta))
            # each side sends the token to a different expert with probability 1/2 + O(delta)
            assert float(jump.norm()) == pytest.approx(expert_gap / 2, rel=10 * delta)


# ----------------------------------------------------------------------------- gradients


def ffn_grads(layer, x, seed=1) -> dict:
    """Gradients of a random linear function of the layer's output."""
    layer.zero_grad()
    (layer(x) * randn(*x.shape, seed=seed, device=x.device)).sum().backward()
    return {name: p.grad for name, p in layer.named_parameters()}


@pytest.mark.parametrize("seed", range(3))
def test_every_mot_expert_gets_a_gradient(seed, device):
    """MoT: on every batch each expert's w1[e], w2[e] and controller column e get a gradient."""
    layer = make_layer(seed, device, **GROUPED)
    grads = ffn_grads(layer, randn(*B6, seed=seed, device=device))
    for e in range(4):
        assert (nonzero(grads["w1"][e]) and nonzero(grads["w2"][e])
                and nonzero(grads["controller"][:, e])), e


@pytest.mark.parametrize("top_k", [1, 2])
def test_unused_moe_expert_gets_no_gradient(top_k, device):
    """MoE: an expert that no token picks gets exactly zero gradient; the used ones do not."""
    layer = make_layer(device=device, ffn="moe", n_experts=3, moe_top_k=top_k)
    x = randn(2, 4, 8, device=device)
    with torch.no_grad():
        layer.router.mul_(0.1)[0, 2] = -10.0  # channel 0 is 1 for every token: expert 2 last
        x[..., 0] = 1.0
    assert ((x @ layer.router).argmin(-1) == 2).all()
    grads = ffn_grads(layer, x)
    assert not nonzero(grads["w1"][2]) and not nonzero(grads["w2"][2])
    assert all(nonzero(grads["w1"][e]) and nonzero(grads["w2"][e]) for e in (0, 1))


# ----------------------------------------------------------------------------- temperature


def test_small_temperature_approaches_discrete_routing(device):
    """As τ -> 0 merge weights become one-hot (one token per expert per group) and the output
    approaches discrete mode."""
    x = randn(*B6, seed=3, device=device)
    discrete = make_layer(device=device, **GROUPED, mot_routing="discrete")
    expected = discrete(x)
    logits = (x @ discrete.controller).view(2, 3, 3, 4).topk(2, dim=1).values
    assert (logits[:, 0] - logits[:, 1]).min() > 0.05  # no near-ties in this input
    weight_err, out_err = [], []
    for tau in (1e-1, 1e-2, 1e-3):
        layer = make_layer(seed=99, device=device, **GROUPED, temperature=tau)
        copy_weights(discrete, layer)
        out = layer(x)
        weight_err.append(float(1 - layer.merge_weights.view(2, 3, 3, 4).amax(1).min()))
        torch.testing.assert_close(layer.merge_weights.round(), discrete.merge_weights)
        out_err.append(scalar((out - expected).abs().max()))
    assert weight_err[0] > weight_err[1] > weight_err[2] and weight_err[2] < 1e-12, weight_err
    assert out_err[0] > out_err[1] > out_err[2] and out_err[2] < 1e-12, out_err


def test_learnable_temperature_stays_positive_and_gets_gradient(device):
    """learnable_temperature: τ = exp(θ) is a parameter starting at the config value, θ's
    gradient is the true derivative (non-zero), and τ stays > 0 however far θ moves."""
    layer = make_layer(device=device, **GROUPED, temperature=0.5, learnable_temperature=True)
    x = randn(*B6, device=device)
    assert "log_temperature" in dict(layer.named_parameters())
    assert scalar(layer.temperature) == pytest.approx(0.5)
    grad = ffn_grads(layer, x)["log_temperature"]
    theta, h, r = scalar(layer.log_temperature), 1e-6, randn(*B6, seed=1, device=device)
    with torch.no_grad():
        loss_at = [float((functional_call(layer, {"log_temperature": torch.tensor(
            theta + s, dtype=DT, device=device)}, (x,)) * r).sum()) for s in (h, -h)]
    assert float(grad) != 0
    assert float(grad) == pytest.approx((loss_at[0] - loss_at[1]) / (2 * h), rel=1e-5)
    for theta in (-30.0, -3.0, 3.0):
        with torch.no_grad():
            layer.log_temperature.fill_(theta)
        assert layer.temperature > 0 and torch.isfinite(layer(x)).all()
    fixed = make_layer(**GROUPED)
    assert "log_temperature" not in dict(fixed.named_parameters())
    assert "log_temperature" in dict(fixed.named_buffers())


# ----------------------------------------------------------------------------- eval padding


def make_block(seed=0, device="cpu", **overrides) -> Block:
    """A float64 Block of tiny_config(**overrides) in eval mode, its FFN's matrices random."""
    torch.manual_seed(seed)
    config = tiny_config(**overrides)
    block = Block(config, config.ffn).to(DT)
    randomize_(block.ffn, seed)
    return block.to(device).eval()


@pytest.mark.parametrize("B", [1, 4, 5])
def test_eval_pads_a_partial_group_with_zero_rows(B, device):
    """Eval: where the batch is not whole groups, a Block runs its FFN on the batch filled up with
    zero rows and keeps the real rows' outputs: every kind whose group_size > 1 (3 where the kind
    takes it from the config) decodes a partial group with no code of its own. MoT keeps the
    padded batch's merge weights."""
    grouped = []
    for kind in FFNS:
        block, x = make_block(device=device, ffn=kind, **GROUPED), randn(B, 3, 8, device=device)
        G = block.ffn.group_size
        if G == 1:
            continue
        grouped.append(kind)
        out = block(x)
        assert out.shape == (B, 3, 8)
        if isinstance(block.ffn, MixtureOfTokens):
            assert block.ffn.merge_weights.shape == (B + -B % G, 3, 4)
        h = x + block.attn(block.ln_1(x))
        padded = torch.cat([block.ln_2(h), torch.zeros(-B % G, 3, 8, dtype=DT, device=device)])
        torch.testing.assert_close(out, h + block.ffn(padded)[:B])
    assert set(MOT_KINDS) <= set(grouped)


def test_train_mode_rejects_a_partial_group(device):
    """Train: a batch that is not whole groups raises a ValueError naming group_size, for every
    kind whose group_size > 1."""
    for kind in FFNS:
        block = make_block(device=device, ffn=kind, **GROUPED).train()
        G = block.ffn.group_size
        if G > 1:
            with pytest.raises(ValueError, match=f"group_size={G}"):
                block(randn(G + 1, 3, 8, device=device))


def test_merge_entropy_before_any_forward_says_so():
    with pytest.raises(RuntimeError, match="run the layer"):
        make_layer(**GROUPED).merge_entropy()


def check_generate_one(kind: str, device="cpu"):
    """GPT.generate decodes one sequence (a partial group of 4 for MoT; of its group_size for
    another grouped FFN): prefix kept, valid tokens, with and without the KV cache."""
    model = make_gpt(device=device, ffn=kind, group_size=4).eval()
    idx = random_tokens(model, 1, 3)
    for kv_cache in (True, False):
        torch.manual_seed(0)  # runs past block_size=8: cropping too
        out = model.generate(idx, max_new_tokens=7, top_k=5, kv_cache=kv_cache)
        assert out.shape == (1, 10) and torch.equal(out[:, :3], idx)
        assert ((out >= 0) & (out < model.config.vocab_size)).all()


@pytest.mark.parametrize("kind", sorted(FFNS))
def test_generate_decodes_one_sequence_with_every_kind(kind, device):
    check_generate_one(kind, device)


# ----------------------------------------------------------------------------- decoding


def float32_gpt(kind: str, seed=0, device="cpu", **overrides) -> GPT:
    """A float32 GPT in eval mode, FFN weights random, block_size 8."""
    model = make_gpt(seed, device, **{**dict(ffn=kind, n_experts=4, group_size=2, moe_top_k=2),
                                      **overrides})
    return model.float().eval()


def check_kv_cache(kind: str, B: int, device="cpu"):
    """Greedy decoding with the KV cache gives the same tokens as recomputing the whole context
    at every step, also past block_size (8); while the cache is in use, each step's logits equal
    a full forward's last-position logits. A grouped FFN too, with whole and zero-padded groups:
    a step feeds the batch's tokens of one position, exactly the groups of a full forward (for
    MoT, which mixes only the tokens of one position)."""
    model = float32_gpt(kind, device=device)
    idx = random_tokens(model, B, 3)
    tokens = model.generate(idx, max_new_tokens=9, temperature=0)  # 12 tokens > block_size
    assert torch.equal(tokens, model.generate(idx, max_new_tokens=9, temperature=0,
                                              kv_cache=False))
    cache = [{} for _ in model.transformer.h]
    with torch.no_grad():
        for start, end in [(0, 3)] + [(t, t + 1) for t in range(3, 8)]:
            step, _ = model(tokens[:, start:end], kv_cache=cache)
            full, _ = model(tokens[:, :end])
            torch.testing.assert_close(step, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("B", [1, 3, 4])  # group_size 2: a padded group, and whole groups
@pytest.mark.parametrize("kind", sorted(FFNS))
def test_kv_cache_decodes_exactly_as_recomputing_everything(kind, B, device):
    check_kv_cache(kind, B, device)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("kind", ["dense", "mot", "moe"])
def test_kv_cache_in_16_bits_decodes_as_recomputing_up_to_a_rounding_tie(kind, dtype, device):
    """In 16 bits (sample.py decodes in a GPU's native dtype) the cache's kernels round otherwise
    than a full forward's, so greedy decoding may part from recomputing where two tokens tie:
    at the first token where they differ, the two tokens' logits (recomputed) are within
    TOLERANCE of the largest logit."""
    model = float32_gpt(kind, device=device).to(dtype)
    prompt, block = random_tokens(model, 4, 3), model.config.block_size
    cached = model.generate(prompt, max_new_tokens=9, temperature=0)
    recomputed = model.generate(prompt, max_new_tokens=9, temperature=0, kv_cache=False)
    differ = (cached != recomputed).any(0).nonzero().flatten().tolist()
    for t in differ[:1]:
        with torch.no_grad():
            logits = model(cached[:, max(0, t - block):t])[0][:, -1].float()
        rows = (cached[:, t] != recomputed[:, t]).nonzero().flatten()
        gap = (logits[rows, recomputed[rows, t]] - logits[rows, cached[rows, t]]).abs().max()
        assert gap <= TOLERANCE[dtype] * logits.abs().max(), (t, gap)


def test_a_one_token_step_attends_to_the_cache_without_a_mask(monkeypatch):
    """Attention with a cache: a whole prompt is causal, one new token sees every key with no
    mask (so flash attention may run it), a chunk after cached keys takes the shifted triangle."""
    model, calls, attention = float32_gpt("dense", n_layer=1), [], F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda q, k, v, attn_mask, is_causal,
                        **kw: calls.append((attn_mask, is_causal))
                        or attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, **kw))
    tokens, cache = random_tokens(model, 2, 6), [{}]
    with torch.no_grad():
        for start, end in ((0, 3), (3, 4), (4, 6)):
            model(tokens[:, start:end], kv_cache=cache)
    masks = [(None if mask is None else mask.int().tolist(), causal) for mask, causal in calls]
    assert masks == [(None, True), (None, False), ([[1, 1, 1, 1, 1, 0], [1] * 6], False)]


@pytest.mark.parametrize("kv_cache", [True, False])
def test_companions_group_a_lone_sequence_with_real_text(kv_cache, device):
    """With companions, one sequence is decoded as row 0 of the batch [sequence; companions]: each
    new token is the argmax of that row's logits in a full forward over the batch, companions
    teacher-forced; they are not returned."""
    model = float32_gpt("mot", device=device, group_size=4)
    idx, companions = random_tokens(model, 1, 3), random_tokens(model, 3, 8, seed=1)
    tokens = model.generate(idx, max_new_tokens=5, temperature=0, companions=companions,
                            kv_cache=kv_cache)
    assert tokens.shape == (1, 8) and torch.equal(tokens[:, :3], idx)
    with torch.no_grad():
        logits = all_logits(model, torch.cat([tokens, companions]))  # (4, 8, vocab)
    assert torch.equal(logits[0, 2:7].argmax(-1), tokens[0, 3:])
    alone = model.generate(idx, max_new_tokens=5, temperature=0, kv_cache=kv_cache)
    assert not torch.equal(alone, tokens)  # zero padding is another group
    with pytest.raises(ValueError, match="L >= 8"):
        model.generate(idx, max_new_tokens=5, companions=companions[:, :7])


def test_kv_cache_refuses_moe_whose_tokens_compete_across_positions(device):
    for overrides in (dict(moe_routing="expert_choice"), dict(capacity_factor=1.0)):
        model = float32_gpt("moe", device=device, **overrides)
        idx = random_tokens(model, 2, 3)
        with pytest.raises(ValueError, match="kv_cache=False"):
            model.generate(idx, max_new_tokens=2)
        assert model.generate(idx, max_new_tokens=2, kv_cache=False).shape == (2, 5)


def test_generate_temperature_zero_is_greedy_and_bad_settings_are_errors(device):
    model = float32_gpt("mot", device=device)
    idx = random_tokens(model, 2, 3)
    with torch.no_grad():
        expected = model(idx)[0][:, -1].argmax(-1)
    assert torch.equal(model.generate(idx, max_new_tokens=1, temperature=0)[:, -1], expected)
    for bad in (dict(temperature=-1.0), dict(top_k=0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            model.generate(idx, max_new_tokens=1, **bad)


def test_forward_takes_targets_of_any_layout_and_rejects_bad_ids(device):
    """targets may be a strided view (x, y = seq[:, :-1], seq[:, 1:]); an empty batch or
    sequence, or ids outside [0, vocab_size), is a ValueError naming the limit."""
    model = float32_gpt("dense", device=device)
    seq = random_tokens(model, 2, 7)
    x, y = seq[:, :-1], seq[:, 1:]
    torch.testing.assert_close(model(x, y)[1], model(x, y.contiguous())[1])
    for idx, match in ((seq[:0], "at least one token"), (seq[:, :0], "at least one token"),
                       (seq + 32, "vocab_size=32"), (seq - 40, "vocab_size=32")):
        with pytest.raises(ValueError, match=match):
            model(idx)


@pytest.mark.parametrize("routing", ["discrete", "token_choice"])
@pytest.mark.parametrize("dtype, training", [(torch.float64, True), (torch.bfloat16, False)])
def test_to_sparse_keeps_dtype_and_mode(routing, dtype, training, device):
    model = make_gpt(device=device, ffn="mot").to(dtype).train(training)
    sparse = convert.to_sparse(model, routing)
    assert all(p.dtype == dtype for p in sparse.parameters())
    assert all(p.device == device for p in sparse.parameters())  # and on the model's device
    assert sparse.training == training


# ----------------------------------------------------------------------------- sparse MoE


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_moe_token_choice_matches_loop_reference(top_k, device):
    """Dropless top-k: out(x) = Σ over its top-k experts of p_e(x) · expert_e(x), per token."""
    layer = make_layer(device=device, ffn="moe", n_experts=4, moe_top_k=top_k, expert_size=16)
    x = randn(2, 4, 8, device=device)
    out, kept = on_cpu(loop_moe, layer, x)
    assert kept == 8 * top_k
    torch.testing.assert_close(layer(x), out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("kind, capacity", [("mot", None), ("moe", None), ("moe", 16)])
def test_layers_in_each_dtype_match_the_loops_up_to_rounding(kind, capacity, dtype, device):
    """MoT, and top-2 MoE with and without a capacity (widths where MoE runs torch's grouped_mm),
    in the dtype on the device: within TOLERANCE of reference.py's loops, run in float64 on the
    CPU on the same weights and input, rounded to the dtype. MoE's router logits are a
    permutation of 0..3 for each token, so every dtype routes alike (a tie would swap experts)."""
    torch.manual_seed(0)
    if kind == "mot":
        layer, x = MixtureOfTokens(64, n_experts=8, group_size=4).eval(), torch.randn(8, 5, 64)
    else:  # 32 tokens, top-2 of 4 experts: capacity 16 (factor 1.0) drops some
        layer = MixtureOfExperts(64, n_experts=4, top_k=2, capacity_factor=capacity and 1.0)
        x = torch.randn(4, 8, 64)
        x[..., :4] = torch.rand(4, 8, 4).argsort(-1).float()
        with torch.no_grad():
            layer.router.zero_()[:4] = torch.eye(4)
    layer, x = layer.to(dtype), x.to(dtype)
    loop = copy.deepcopy(layer).double()
    expected, _ = (loop_mot(loop, x.double(), loop.temperature.item()) if kind == "mot" else
                   loop_moe(loop, x.double(), capacity))
    with torch.no_grad():
        out = layer.to(device)(x.to(device))
    assert out.dtype == dtype
    assert relative_error(out, expected) <= TOLERANCE[dtype]


@pytest.mark.parametrize("top_k, capacity_factor", [(1, None), (2, None), (2, 0.5)])
def test_moe_grouped_matmul_in_float32_matches_the_loop_reference(top_k, capacity_factor,
                                                                  device):
    """In float32 with widths that are multiples of 4, the experts run in torch's grouped_mm
    (float64 takes a loop over the experts): the same outputs and gradients as the loop (float64,
    on the CPU)."""
    layer = make_layer(device=device, ffn="moe", n_experts=4, moe_top_k=top_k,
                       capacity_factor=capacity_factor, expert_size=16).float()
    x = randn(4, 8, 8, seed=2, device=device).float().requires_grad_()
    capacity = None if capacity_factor is None else math.ceil(capacity_factor * 32 * top_k / 4)
    reference = make_layer(ffn="moe", n_experts=4, moe_top_k=top_k, expert_size=16,
                           capacity_factor=capacity_factor)  # float64: the expert loop
    copy_weights(layer, reference)
    expected, _ = loop_moe(reference, x.detach().double().cpu(), capacity)
    out = layer(x)
    torch.testing.assert_close(out, expected.float().to(device), rtol=1e-5, atol=1e-6)
    grads = ffn_grads(layer, x)
    reference_grads = ffn_grads(reference.train(), x.detach().double().cpu())
    for name in ("router", "w1", "w2"):
        torch.testing.assert_close(grads[name], reference_grads[name].float().to(device),
                                   rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("device, dtype, capability, grouped, syncs", [
    ("cuda", torch.bfloat16, (9, 0), True, False), ("cuda", torch.bfloat16, (10, 0), False, True),
    ("cuda", torch.bfloat16, (8, 0), True, True), ("cuda", torch.bfloat16, (8, 9), True, True),
    ("cuda", torch.bfloat16, (12, 0), True, True), ("cuda", torch.float16, (7, 5), True, True),
    ("cuda", torch.float16, (9, 0), True, True), ("cuda", torch.float32, (7, 0), True, True),
    ("cuda", torch.float64, (9, 0), False, True), ("cpu", torch.float32, None, True, False),
    ("cpu", torch.bfloat16, None, True, False), ("cpu", torch.float16, None, True, False),
    ("cpu", torch.float64, None, False, False), ("mps", torch.float32, None, False, False)])
def test_moe_runs_grouped_mm_where_torch_takes_it_and_knows_where_it_syncs(
        monkeypatch, device, dtype, capability, grouped, syncs):
    """torch's grouped_mm takes 16-bit and float32 rows of 16-byte multiples on a CPU and on
    CUDA of any capability (faked here); on CUDA only bfloat16 on 9.x runs without reading the
    offsets on the host (10.x's fast kernel is not trusted: the loop). Unaligned widths and other
    dtypes or devices: the loop."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert moe_kernels.runs_grouped_mm(torch.device(device), dtype, 64, 32) == grouped
    assert moe_kernels.grouped_mm_syncs(torch.device(device), dtype, 64, 32) == syncs
    assert not moe_kernels.runs_grouped_mm(torch.device(device), dtype, 64, 6)  # 12/24-byte rows
    assert moe_kernels.grouped_mm_syncs(torch.device(device), dtype, 64, 6) == (device == "cuda")


def gathered_mm(a, b, offsets):
    """The grouped product the slow, obvious way: each row times its own copy of its group's
    matrix (a (K, N) matrix per row: what the fallback must never do)."""
    group = torch.searchsorted(offsets, torch.arange(a.shape[0], device=a.device), right=True)
    return torch.bmm(a.unsqueeze(1), b[group]).squeeze(1)


@pytest.mark.parametrize("dtype, k, n", [(torch.float64, 8, 16), (torch.float32, 6, 10),
                                         (torch.float32, 8, 16)])
@pytest.mark.parametrize("rows", [(3, 0, 5, 1), (0, 0, 4, 0)])  # rows per group, empty ones too
def test_grouped_mm_equals_the_gathered_product_with_its_gradients(dtype, k, n, rows, device):
    """Whichever path grouped_mm takes (the loop for float64 or unaligned widths, torch's
    grouped_mm otherwise), its output and the gradients of both operands are the gather's."""
    offsets = torch.tensor(rows).cumsum(0).to(device, torch.int32)
    a = torch.randn(sum(rows), k, generator=generator(0), dtype=dtype).to(device).requires_grad_()
    b = torch.randn(len(rows), k, n, generator=generator(1), dtype=dtype).to(device)
    b.requires_grad_()
    weights = torch.randn(sum(rows), n, generator=generator(2), dtype=dtype).to(device)
    results = []
    for product in (moe_kernels.grouped_mm, gathered_mm):
        out = product(a, b, offsets)
        results.append((out, *torch.autograd.grad((out * weights).sum(), (a, b))))
    tolerance = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else {}
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected, **tolerance)


def relative_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    """max |x - reference| / max |reference|, in float64 on the CPU."""
    reference = reference.detach().double().cpu()
    return float((x.detach().double().cpu() - reference).abs().max() / reference.abs().max())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_grouped_mm_in_each_dtype_is_the_float64_product_up_to_rounding(dtype, device):
    """At the shakespeare MoE recipe's widths (384 -> 1536: torch's grouped_mm, on CUDA its fast
    kernel or its loop over the groups) with uneven groups, one empty: the output and both
    gradients within TOLERANCE of float64's on the same numbers (drawn in the dtype)."""
    K, N, sizes = 384, 1536, [64, 0, 32, 32, 64, 16, 16, 32]
    offsets = torch.tensor(sizes).cumsum(0).to(torch.int32)
    a, b, grad = (torch.randn(*shape, generator=generator(seed)).to(dtype) for seed, shape in
                  enumerate([(sum(sizes), K), (len(sizes), K, N), (sum(sizes), N)]))
    b = b / K ** 0.5
    a64, b64 = (t.double().requires_grad_() for t in (a, b))
    ends = offsets.tolist()
    expected = torch.cat([a64[start:end] @ b64[g]  # group by group (a gather: 1 GiB here)
                          for g, (start, end) in enumerate(zip([0] + ends[:-1], ends))])
    expected.backward(grad.double())
    a, b = (t.to(device).requires_grad_() for t in (a, b))
    out = moe_kernels.grouped_mm(a, b, offsets.to(device))
    out.backward(grad.to(device))
    assert out.dtype == dtype
    for got, reference in ((out, expected), (a.grad, a64.grad), (b.grad, b64.grad)):
        assert relative_error(got, reference) <= TOLERANCE[dtype]


@pytest.mark.parametrize("dtype, n_embd", [(torch.float64, 64), (torch.float32, 66)])
def test_moe_off_torchs_grouped_mm_stays_linear_in_memory(dtype, n_embd):
    """16,384 tokens through a top-1 MoE of 8 experts of width 256: off torch's grouped_mm
    (float64, or rows of 66 floats) the layer keeps no more for its backward than on it, per
    byte of width; a (C, H) matrix per token would be 1 GiB in float32."""
    def layer_bytes(dtype, n_embd):
        torch.manual_seed(0)
        layer = MixtureOfExperts(n_embd, n_experts=8, expert_size=256).to(dtype)
        x = torch.randn(64, 256, n_embd, dtype=dtype)
        return saved_bytes(lambda: layer(x).sum())

    grouped = layer_bytes(torch.float32, 64)
    assert moe_kernels.runs_grouped_mm(torch.device("cpu"), torch.float32, 64, 256)
    assert not moe_kernels.runs_grouped_mm(torch.device("cpu"), dtype, n_embd, 256)
    assert layer_bytes(dtype, n_embd) <= 1.1 * grouped * dtype.itemsize / 4 * n_embd / 64


def test_a_moe_layer_calls_torchs_grouped_mm_6_times_per_micro_step(monkeypatch):
    """Off torch's fast kernel every call of its grouped_mm reads the offsets on the host, one
    wait for the GPU (moe_kernels.py): a MoE layer's forward and backward call it 6 times (its 2
    products, then 2 for each one's gradients), top-1 or top-2, whatever the experts' loads."""
    calls = []
    torchs = moe_kernels.TORCH_GROUPED_MM
    monkeypatch.setattr(moe_kernels, "TORCH_GROUPED_MM",
                        lambda *args, **kwargs: calls.append(1) or torchs(*args, **kwargs))
    for top_k in (1, 2):
        torch.manual_seed(top_k)
        layer = MixtureOfExperts(64, n_experts=4, top_k=top_k, expert_size=32)
        calls.clear()
        layer(torch.randn(4, 8, 64)).sum().backward()
        assert len(calls) == 6, top_k


def host_reads(monkeypatch) -> list:
    """A list to which, from now on, every read of a tensor's value on the host (each a wait for
    the GPU) appends the name of its method."""
    reads = []
    for method in ("item", "tolist", "__bool__", "__int__", "__float__"):
        original = getattr(torch.Tensor, method)
        monkeypatch.setattr(torch.Tensor, method, lambda self, *a, _o=original, _m=method:
                            reads.append(_m) or _o(self, *a))
    return reads


def test_a_training_forward_reads_nothing_back_to_the_host(monkeypatch, device):
    """In training mode no FFN kind's forward and backward reads a tensor's value on the host
    (each read waits for the GPU); the id check runs in eval mode, MoT keeps its merge weights
    only there."""
    reads = host_reads(monkeypatch)
    for kind in FFNS:  # float32: MoE's experts in torch's grouped_mm (float64 reads its offsets)
        model = make_gpt(device=device, ffn=kind, n_experts=4, group_size=2, moe_top_k=2).float()
        idx = random_tokens(model, 4, 8)
        _, loss = model(idx, idx)
        (loss + model.aux_loss).backward()
        assert reads == [], (kind, reads)
        assert all(layer.merge_weights is None for layer in model.ffns(MixtureOfTokens))
    with pytest.raises(ValueError, match="vocab_size"):
        model.eval()(idx + 1000)


@pytest.mark.parametrize("kv_cache", [True, False])
def test_decoding_steps_read_nothing_back_to_the_host(monkeypatch, kv_cache, device):
    """generate reads values back to the host twice, checking the prompt's and the companions'
    ids, whether it decodes 0, 1 or 9 tokens: a step (forward, top-k sampling, a companion's
    token) reads nothing, for every FFN kind, with and without the cache (9 steps run past
    block_size 8: the cropped window too)."""
    models = {kind: float32_gpt(kind, device=device, group_size=4) for kind in FFNS}
    idx, companions = random_tokens(models["dense"], 3, 3), random_tokens(models["dense"], 1, 12)
    reads = host_reads(monkeypatch)
    for kind, model in models.items():
        counted = {}
        for steps in (0, 1, 9):
            reads.clear()
            tokens = model.generate(idx, steps, temperature=1.0, top_k=5, kv_cache=kv_cache,
                                    companions=companions)
            counted[steps] = list(reads)
            assert tokens.shape == (3, 3 + steps)
        assert counted == {steps: ["__bool__"] * 2 for steps in (0, 1, 9)}, kind


@pytest.mark.parametrize("kind", ["dense", "mot", "moe"])
def test_fused_adamw_matches_the_for_loop_adamw(kind, device):
    """configure_optimizers asks for torch's fused AdamW on a CPU and on CUDA; a few steps of it
    leave the weights within float32 round-off of the plain for-loop AdamW's."""
    models = [float32_gpt(kind, device=device).train() for _ in range(2)]
    fused = models[0].configure_optimizers(0.1, 1e-2, (0.9, 0.99), device.type)
    assert fused.defaults["fused"]
    loop = torch.optim.AdamW([dict(g, params=[dict(models[1].named_parameters())[n]
                                              for n, p in models[0].named_parameters()
                                              if any(p is q for q in g["params"])])
                              for g in fused.param_groups], lr=1e-2, betas=(0.9, 0.99),
                             foreach=False)
    idx = random_tokens(models[0], 4, 8)
    for _ in range(5):
        for model, optimizer in zip(models, (fused, loop)):
            _, loss = model(idx, idx)
            (loss + model.aux_loss).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    torch.testing.assert_close(models[0].state_dict(), models[1].state_dict(), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("overrides", [dict(), dict(capacity_factor=1.0),
                                       dict(moe_routing="expert_choice")])
def test_moe_trains_under_bfloat16_autocast(overrides, device):
    """bfloat16 autocast on the device: a MoE GPT's forward and backward run and give finite
    gradients (the expert matmuls in bfloat16, the weights and their gradients in float32)."""
    torch.manual_seed(0)
    model = GPT(tiny_config(ffn="moe", n_layer=2, n_embd=16, n_head=2, moe_top_k=2, **overrides))
    model.to(device)
    idx = torch.randint(0, 32, (4, 8), generator=generator(0)).to(device)
    with devices.autocast(device, "bfloat16"):
        _, loss = model(idx, idx)
    (loss + model.aux_loss).backward()
    assert torch.isfinite(loss)
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
               for p in model.parameters() if p.grad is not None)


def test_compiled_moe_gpt_has_one_graph_and_no_recompiles(device):
    """torch.compile(fullgraph=True) traces a token-choice MoE GPT whole (a graph break would
    raise), and three batches with different routing run that one graph: the dispatch has no
    data-dependent size. Losses equal eager mode's."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = GPT(tiny_config(ffn="moe", n_layer=2, n_embd=16, n_head=2, moe_top_k=2)).to(device)
    compiled = torch.compile(model, fullgraph=True)
    for seed in range(3):
        idx = torch.randint(0, 32, (4, 8), generator=generator(seed)).to(device)
        _, loss = compiled(idx, idx)
        (loss + model.aux_loss).backward()
        torch.testing.assert_close(loss, model(idx, idx)[1], rtol=1e-5, atol=1e-6)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]


@pytest.mark.parametrize("top_k, capacity_factor", [(1, 0.5), (2, 0.5), (2, 1.0), (1, 1.0)])
def test_moe_capacity_drops_overflow_in_priority_order(top_k, capacity_factor, device):
    """With capacity ceil(cf·N·k/E), assignments beyond an expert's capacity (1st choices in
    token order, then 2nd choices) are dropped; a token with all its assignments dropped gets
    exactly zero output."""
    layer = make_layer(device=device, ffn="moe", n_experts=4, moe_top_k=top_k,
                       capacity_factor=capacity_factor, expert_size=16)
    x = randn(2, 4, 8, seed=5, device=device)
    capacity = math.ceil(capacity_factor * 8 * top_k / 4)
    expected, kept = on_cpu(loop_moe, layer, x, capacity)
    assert kept < 8 * top_k  # something was dropped
    out = layer(x)
    torch.testing.assert_close(out, expected)
    assert torch.equal(out == 0, expected == 0)


@pytest.mark.parametrize("top_k, logits, expected", [
    (1, (math.log(3), 0.0), 0.01 * 4 * (1.0 * 3 / 6)),  # p = (3,1,1,1)/6, f = (1,0,0,0)
    # p = (3,2,1,1)/7, f = (½,½,0,0)
    (2, (math.log(3), math.log(2)), 0.01 * 4 * (0.5 * 3 / 7 + 0.5 * 2 / 7)),
])
def test_moe_load_balancing_loss_on_known_routing(top_k, logits, expected, device):
    """aux_loss = α·E·Σ_e f_e·P_e, by hand for a router that sends every token the same way."""
    layer = make_layer(device=device, ffn="moe", n_experts=4, moe_top_k=top_k)
    x = randn(2, 4, 8, device=device)
    with torch.no_grad():
        layer.router.zero_()
        x[..., :2] = 1.0  # channels 0 and 1 drive experts 0 and 1 identically for every token
        layer.router[0, 0], layer.router[1, 1] = logits
    layer(x)
    assert scalar(layer.aux_loss) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("top_k, capacity_factor", [(1, None), (1, 0.5), (2, None), (1, 3.0)])
def test_expert_choice_each_expert_processes_exactly_capacity_tokens(top_k, capacity_factor,
                                                                      monkeypatch, device):
    """Expert choice: each expert gets a buffer of exactly ceil(cf·N·k/E) tokens, its top-p_e
    tokens."""
    layer = make_layer(device=device, ffn="moe", n_experts=4, moe_top_k=top_k,
                       moe_routing="expert_choice", capacity_factor=capacity_factor,
                       expert_size=16)
    x = randn(2, 4, 8, device=device)
    capacity = math.ceil((capacity_factor or 1.0) * 8 * top_k / 4)
    seen, experts = [], mot.experts
    monkeypatch.setattr(mot, "experts", lambda tokens, w1, w2, *rest:
                        seen.append(tuple(tokens.shape)) or experts(tokens, w1, w2, *rest))
    out = layer(x)
    assert seen == [(4, capacity, 8)]
    torch.testing.assert_close(out, on_cpu(loop_expert_choice, layer, x, capacity))


def test_gpt_aux_loss_is_sum_of_layers_and_loss_is_cross_entropy_only(device):
    """GPT.aux_loss is the sum of the MoE layers' aux losses; the returned loss is the LM cross
    entropy alone."""
    model = make_gpt(device=device, ffn="moe", moe_top_k=2)
    idx, targets = random_tokens(model, 2, 6), random_tokens(model, 2, 6, seed=1)
    logits, loss = model(idx, targets)
    layers = model.ffns(MixtureOfExperts)
    assert len(layers) == 2 and all(scalar(m.aux_loss) > 0 for m in layers)
    torch.testing.assert_close(model.aux_loss, sum(m.aux_loss for m in layers))
    torch.testing.assert_close(loss, F.cross_entropy(logits.view(-1, logits.size(-1)),
                                                     targets.view(-1)))
    dense = make_gpt(device=device, ffn="dense")
    dense(idx, targets)
    assert scalar(dense.aux_loss) == 0.0


# ----------------------------------------------------------------------------- layers and registry


def test_layers_stand_alone_from_plain_arguments(device):
    """Each FFN is built from plain arguments, with no GPTConfig, and works at once."""
    torch.manual_seed(0)
    x = torch.randn(8, 5, 64).to(device)
    for layer in (MLP(n_embd=64), MixtureOfTokens(n_embd=64, n_experts=8, group_size=4),
                  MixtureOfTokensEmitSoftmax(n_embd=64, n_experts=8, group_size=4),
                  MixtureOfExperts(n_embd=64, n_experts=8, top_k=2)):
        out = layer.to(device)(x)
        assert out.shape == x.shape and torch.isfinite(out).all() and out.abs().max() > 0


@pytest.mark.parametrize("kind", sorted(FFNS))
def test_from_config_sets_every_constructor_argument_by_name(kind, monkeypatch):
    """from_config passes each argument of the FFN's constructor by keyword: an argument added to
    __init__ but not to from_config, or passed by position (which an inserted argument would
    silently shift), fails here."""
    cls = FFNS[kind]
    expected = set(inspect.signature(cls.__init__).parameters) - {"self"}
    passed = {}

    def record(self, *args, **kwargs):
        passed.update(args=args, kwargs=kwargs)

    monkeypatch.setattr(cls, "__init__", record)
    cls.from_config(tiny_config(ffn=kind))
    assert passed["args"] == ()
    assert set(passed["kwargs"]) == expected


def test_layers_initialise_themselves_as_gpt2():
    """reset_parameters draws N(0, 0.02), and N(0, residual_init_std) for the projection back into
    the residual stream (w2, c_proj); in a GPT that is 0.02/sqrt(2·n_layer). MoT's controller
    draws N(0, 1/sqrt(n_embd))."""
    torch.manual_seed(0)
    layers = [MixtureOfTokens(256, 32, 8, residual_init_std=0.005),
              MixtureOfExperts(256, 32, 2, residual_init_std=0.005)]
    for layer in layers:
        for name, p in layer.named_parameters():
            expected = {"w2": 0.005, "controller": 1 / 16}.get(name, 0.02)
            assert float(p.std()) == pytest.approx(expected, rel=0.02), name
            assert abs(float(p.mean())) < expected / 50, name
    mlp = MLP(256, residual_init_std=0.005)
    assert float(mlp.c_fc.weight.std()) == pytest.approx(0.02, rel=0.02)
    assert float(mlp.c_proj.weight.std()) == pytest.approx(0.005, rel=0.02)
    model = GPT(tiny_config(n_layer=8, n_embd=256, n_experts=32, group_size=8))
    assert float(model.transformer.h[0].ffn.w2.std()) == pytest.approx(0.005, rel=0.02)
    assert float(model.transformer.h[0].ffn.controller.std()) == pytest.approx(256 ** -0.5,
                                                                             rel=0.05)


@pytest.mark.parametrize("std, expected", [(None, 1 / 16), (0.02, 0.02), (1.0, 1.0)])
def test_controller_init_std_sets_the_controllers_initial_scale(std, expected):
    """GPTConfig.controller_init_std is the std of every MoT controller at init, by default
    1/sqrt(n_embd) (the rest of the layer is unchanged): it sets how peaked the merge weights
    start."""
    torch.manual_seed(0)
    model = GPT(tiny_config(n_layer=2, n_embd=256, n_experts=64, group_size=8,
                            controller_init_std=std))
    for layer in model.ffns(MixtureOfTokens):
        assert float(layer.controller.std()) == pytest.approx(expected, rel=0.03)
        assert float(layer.w1.std()) == pytest.approx(0.02, rel=0.03)


def test_dense_gpt_init_is_nanogpts_draw_for_draw():
    """A dense GPT built after torch.manual_seed(0) holds exactly the weights nanoGPT's init
    (normal 0.02 everywhere, then the residual projections redrawn) gives for that seed."""
    torch.manual_seed(0)
    params = dict(GPT(tiny_config(ffn="dense", n_layer=2, n_head=2, n_embd=16)).named_parameters())
    expected = {  # the first three values of each tensor, from the original implementation
        "transformer.wte.weight": [0.02040267176926136, -0.017309878021478653,
                                   0.004936789628118277],
        "transformer.wpe.weight": [0.007470014039427042, 0.052300259470939636,
                                   0.003060605376958847],
        "transformer.h.0.attn.c_attn.weight": [-0.024009333923459053, 0.02891431748867035,
                                               0.0023431754671037197],
        "transformer.h.1.ffn.c_fc.weight": [-0.015025373548269272, -0.0126036973670125,
                                            0.012885022908449173],
        "transformer.h.1.ffn.c_proj.weight": [-0.00787345040589571, 0.006905537098646164,
                                              0.001200989936478436],
    }
    for name, values in expected.items():
        assert params[name].flatten()[:3].tolist() == values, name
    torch.manual_seed(0)  # with biases, nn.Linear's own init draws more numbers first
    params = dict(GPT(tiny_config(ffn="dense", n_layer=2, n_head=2, n_embd=16, bias=True))
                  .named_parameters())
    assert params["transformer.h.1.ffn.c_fc.weight"].flatten()[:3].tolist() == [
        -0.026797963306307793, -0.03115566447377205, -0.03415827080607414]
    assert params["transformer.h.1.ffn.c_fc.bias"].abs().max() == 0


@pytest.mark.parametrize("kind", FFNS)
def test_every_registered_kind_builds_a_gpt_that_trains(kind, device):
    """Every key of FFNS is a valid GPTConfig.ffn: the GPT builds, counts its FLOPs, and one
    AdamW step lowers its loss on a fixed batch."""
    torch.manual_seed(0)
    model = GPT(tiny_config(ffn=kind, n_layer=2, n_embd=16, n_head=2)).to(device)
    assert model.flops_per_token() > 0
    assert all(isinstance(b.ffn, FFNS[kind]) for b in model.transformer.h)
    optimizer = model.configure_optimizers(0.0, 1e-2, (0.9, 0.99), device.type)
    idx = torch.randint(0, 32, (4, 8), generator=generator(0)).to(device)
    losses = []
    for _ in range(3):
        _, loss = model(idx, idx)
        (loss + model.aux_loss).backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


# ----------------------------------------------------------------------------- FLOPs and sizes

SHAPE = dict(n_embd=16, n_head=2, n_experts=4)
C, E = SHAPE["n_embd"], SHAPE["n_experts"]


def flop_pair(ffn: str, **overrides):
    """(dense GPT, `ffn` GPT) of the same shape, and the number of `ffn` layers."""
    dense, other = (GPT(tiny_config(ffn=kind, **SHAPE, **overrides)) for kind in ("dense", ffn))
    return dense, other, overrides["n_layer"] - overrides["n_dense_layers"]


@pytest.mark.parametrize("ffn", MOT_KINDS)
@pytest.mark.parametrize("n_layer, n_dense_layers, group_size", [(2, 0, 2), (2, 1, 2), (3, 1, 4)])
def test_mot_flops_exceed_dense_by_the_mixing_term_only(ffn, n_layer, n_dense_layers, group_size):
    """FLOP-matched MoT (H = 4C·G/E) costs dense + 6·n_mot·(C·E controller + 2·C·E merge/emit)
    per token, with G× the dense FFN's parameters."""
    dense, mot, n_mot = flop_pair(ffn, n_layer=n_layer, n_dense_layers=n_dense_layers,
                                  group_size=group_size)
    assert mot.flops_per_token() - dense.flops_per_token() == 6 * n_mot * (C * E + 2 * C * E)
    assert mot.get_num_active_params() - dense.get_num_active_params() == n_mot * C * E
    assert sum(b.ffn.mixing_macs_per_token() for b in mot.transformer.h) == n_mot * 2 * C * E
    layer = mot.ffns(MixtureOfTokens)[0]
    assert layer.w1.shape == (E, C, 4 * C * group_size // E)
    assert layer.w1.numel() + layer.w2.numel() == group_size * 8 * C * C


@pytest.mark.parametrize("n_layer, n_dense_layers, top_k", [(2, 0, 1), (2, 1, 2), (3, 1, 4)])
def test_moe_flops_exceed_dense_by_the_router_only(n_layer, n_dense_layers, top_k):
    """FLOP-matched MoE (H = 4C/k) costs dense + 6·n_moe·C·E (the router) per token."""
    dense, moe, n_moe = flop_pair("moe", n_layer=n_layer, n_dense_layers=n_dense_layers,
                                  moe_top_k=top_k)
    assert moe.flops_per_token() - dense.flops_per_token() == 6 * n_moe * C * E
    assert moe.ffns(MixtureOfExperts)[0].w1.shape == (E, C, 4 * C // top_k)


@pytest.mark.parametrize("ffn, kind", [("mot", MixtureOfTokens), ("moe", MixtureOfExperts)])
@pytest.mark.parametrize("n_dense_layers", [0, 2, 3])
def test_first_n_dense_layers_have_an_mlp(ffn, kind, n_dense_layers):
    """n_dense_layers: blocks 0..n-1 have a dense MLP, the others the configured FFN."""
    model = GPT(tiny_config(ffn=ffn, n_layer=3, n_dense_layers=n_dense_layers))
    types = [type(b.ffn) for b in model.transformer.h]
    assert types == [MLP] * n_dense_layers + [kind] * (3 - n_dense_layers)


def test_each_layer_computes_its_flop_matched_expert_size():
    """expert_size=None: 4C·G/E for MoT, 4C/k for MoE; an explicit size is kept; a width that is
    not an integer is a ValueError naming expert_size."""
    assert MixtureOfTokens(8, n_experts=4, group_size=2).w1.shape == (4, 8, 16)
    assert MixtureOfExperts(8, n_experts=4, top_k=2).w1.shape == (4, 8, 16)
    assert MixtureOfTokens(10, n_experts=3, group_size=1, expert_size=7).w1.shape == (3, 10, 7)
    for overrides in (dict(ffn="mot", group_size=1, n_experts=3),
                      dict(ffn="moe", moe_top_k=3, n_experts=4)):
        with pytest.raises(ValueError, match="set expert_size"):
            GPT(tiny_config(n_embd=10, n_head=2, **overrides))


@pytest.mark.parametrize("overrides, field", [
    (dict(ffn="sparse"), "ffn"),
    (dict(n_embd=10, n_head=3), "n_embd"),
    (dict(n_layer=0), "n_layer"),
    (dict(n_head=-2), "n_head"),
    (dict(n_embd=0), "n_embd"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(block_size=-1), "block_size"),
    (dict(n_experts=0), "n_experts"),
    (dict(group_size=0), "group_size"),
    (dict(moe_top_k=0), "moe_top_k"),
    (dict(ffn="moe", moe_top_k=5, n_experts=4), "moe_top_k"),
    (dict(expert_size=0), "expert_size"),
    (dict(temperature=0.0), "temperature"),
    (dict(controller_init_std=0.0), "controller_init_std"),
    (dict(capacity_factor=0.0), "capacity_factor"),
    (dict(mot_routing="argmax"), "mot_routing"),
    (dict(moe_routing="switch"), "moe_routing"),
    (dict(n_dense_layers=2), "n_dense_layers"),
    (dict(dropout=1.0), "dropout"),
    (dict(aux_loss_coef=-0.1), "aux_loss_coef"),
])
def test_invalid_config_raises_value_error_naming_the_field(overrides, field):
    """Each invalid GPTConfig raises ValueError whose message names the offending field."""
    with pytest.raises(ValueError, match=rf"GPTConfig\.{field}="):
        tiny_config(**overrides)
