"""Property tests for mot.py (dense / Mixture of Tokens / sparse MoE GPT). Section numbers (§) refer
to MOT_SPEC.md. Tiny models, float64 where exactness matters: `python -m pytest -q test_mot.py`."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import functional_call

import mot
from mot import FFNS, GPT, MLP, GPTConfig, MixtureOfExperts, MixtureOfTokens

DT = torch.float64
# MoT's τ is stored as a float32 log (exp(log τ) ≠ τ in the last bits), so compare MoT with a bit of slack.
TOL = dict(rtol=1e-5, atol=1e-7)
GROUPED = dict(group_size=3, n_experts=4)  # with a batch of 6: two groups of three examples
B6 = (6, 3, 8)  # (B, T, C) for GROUPED layers


# ----------------------------------------------------------------------------- helpers


def tiny_config(**overrides) -> GPTConfig:
    base = dict(block_size=8, vocab_size=32, n_layer=1, n_head=1, n_embd=8, n_experts=4, group_size=2,
                dropout=0.0, ffn="mot")
    return GPTConfig(**{**base, **overrides})


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0) -> torch.Tensor:
    return torch.randn(*shape, generator=generator(seed), dtype=DT)


def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fill every matrix parameter with N(0, 1/fan_in): routing far from uniform, outputs O(1)."""
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() >= 2:  # controller/router (C, E), w1 (E, C, H), w2 (E, H, C): fan_in = shape[-2]
                p.copy_(torch.randn(p.shape, generator=generator(seed), dtype=p.dtype) / math.sqrt(p.shape[-2]))
                seed += 1
    return module


def make_layer(seed=0, **overrides):
    """An FFN layer (MoT by default) built from tiny_config(**overrides), float64, random weights."""
    config = tiny_config(**overrides)
    return randomize_(FFNS[config.ffn](config).to(DT), seed)


def copy_weights(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    """Copy controller/router, w1, w2 from src to dst (not log_temperature: τ comes from dst's config)."""
    missing, unexpected = dst.load_state_dict(
        {k: v for k, v in src.state_dict().items() if k != "log_temperature"}, strict=False)
    assert not unexpected and set(missing) <= {"log_temperature"}


def make_gpt(seed=0, **overrides) -> GPT:
    """A 2-layer float64 GPT in train mode (dropout 0), its MoT/MoE weights randomized."""
    torch.manual_seed(seed)
    model = GPT(tiny_config(**{**dict(n_layer=2, n_head=2, n_embd=16), **overrides})).to(DT).train()
    for layer in model.ffns((MixtureOfTokens, MixtureOfExperts)):
        randomize_(layer, seed)
    return model


def random_tokens(model: GPT, B: int, T: int, seed=0) -> torch.Tensor:
    return torch.randint(model.config.vocab_size, (B, T), generator=generator(seed))


def all_logits(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """Logits at every position (a forward with targets=None returns only the last one)."""
    return model(idx, torch.zeros_like(idx))[0]


def change_after(model: GPT, idx: torch.Tensor, rows, t: int, seed=0) -> torch.Tensor:
    """idx with every token after position t of the given rows replaced by a different token."""
    V, changed = model.config.vocab_size, idx.clone()
    shift = torch.randint(1, V, changed[rows, t + 1:].shape, generator=generator(seed))
    changed[rows, t + 1:] = (changed[rows, t + 1:] + shift) % V
    return changed


def expert(layer, e: int, v: torch.Tensor) -> torch.Tensor:
    """Expert e of a MoT/MoE layer applied to v (..., C): w2[e]·relu(w1[e]·v) (§4)."""
    return F.relu(v @ layer.w1[e]) @ layer.w2[e]


def softmax_list(values) -> list:
    m = max(values)
    exps = [math.exp(v - m) for v in values]
    return [v / sum(exps) for v in exps]


def perturbed(layer, x, deltas: dict, eps: float) -> torch.Tensor:
    """The layer's output on x with each named parameter p moved to p + eps * deltas[name]."""
    params = {name: getattr(layer, name) + eps * d for name, d in deltas.items()}
    return functional_call(layer, params, (x,))


def change_ratios(layer, x, deltas: dict, eps_list) -> list:
    """||out(θ + eps·d) − out(θ)|| / eps for each eps: bounded and constant for a Lipschitz/smooth layer."""
    with torch.no_grad():
        base = layer(x)
        return [float((perturbed(layer, x, deltas, eps) - base).norm() / eps) for eps in eps_list]


def orthogonal_part(v: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """v minus its projection on u: adding it to a weight vector w keeps u·w unchanged (ties)."""
    return v - (v @ u) / (u @ u) * u


def scalar(t: torch.Tensor) -> float:
    return float(t.detach())


def nonzero(t: torch.Tensor) -> bool:
    return bool(t.abs().sum() > 0)


# ----------------------------------------------------------------------------- slow references


@torch.no_grad()
def loop_mot(layer, x, tau=1.0, discrete=False):
    """§1-§5 literally, one (group, position, expert) at a time. Returns (out, merge weights (B, T, E))."""
    B, T, _ = x.shape
    G, E = layer.group_size, layer.w1.shape[0]
    out, weights = torch.zeros_like(x), torch.zeros(B, T, E, dtype=x.dtype)
    for g in range(B // G):
        rows = range(g * G, (g + 1) * G)  # group g: examples g·G … g·G+G−1 (§1)
        for t in range(T):
            for e in range(E):
                logits = [float(x[b, t] @ layer.controller[:, e]) for b in rows]  # §2
                if discrete:  # each expert takes the top token of its group, weight 1
                    w = [float(i == logits.index(max(logits))) for i in range(G)]
                else:
                    w = softmax_list([v / tau for v in logits])  # softmax over the G tokens
                merged = sum(w_i * x[b, t] for w_i, b in zip(w, rows))  # §3
                y = expert(layer, e, merged)  # §4
                for w_i, b in zip(w, rows):
                    out[b, t] += w_i * y  # §5: emit with the same weights
                    weights[b, t, e] = w_i
    return out, weights


@torch.no_grad()
def router_probs(layer, x) -> list:
    """Per token (flattened B·T order), the list of router probabilities softmax_e(x·W_r) (§9)."""
    xf = x.reshape(-1, x.shape[-1])
    return [softmax_list([float(v) for v in xf[n] @ layer.router]) for n in range(len(xf))]


@torch.no_grad()
def loop_moe(layer, x, capacity=None):
    """§9 token choice one token at a time: assignments served in priority order (every token's 1st
    choice in token order, then every 2nd choice, ...); an expert takes at most `capacity` of them.
    Returns (out, number of kept assignments)."""
    xf, probs = x.reshape(-1, x.shape[-1]), router_probs(layer, x)
    E, k = layer.w1.shape[0], layer.top_k
    choices = [sorted(range(E), key=lambda e: -p[e])[:k] for p in probs]
    out, load, kept = torch.zeros_like(xf), [0] * E, 0
    for j in range(k):
        for n, p in enumerate(probs):
            e = choices[n][j]
            if capacity is None or load[e] < capacity:
                load[e] += 1
                kept += 1
                out[n] += p[e] * expert(layer, e, xf[n])
    return out.view_as(x), kept


@torch.no_grad()
def loop_expert_choice(layer, x, capacity):
    """Expert choice: each expert takes the `capacity` tokens of the batch with the highest p_e."""
    xf, probs = x.reshape(-1, x.shape[-1]), router_probs(layer, x)
    out = torch.zeros_like(xf)
    for e in range(layer.w1.shape[0]):
        for n in sorted(range(len(probs)), key=lambda n: -probs[n][e])[:capacity]:
            out[n] += probs[n][e] * expert(layer, e, xf[n])
    return out.view_as(x)


# ----------------------------------------------------------------------------- causality (§1, §9)

FFN_VARIANTS = {
    "dense": dict(ffn="dense"),
    "mot": dict(ffn="mot", group_size=2),
    "mot-half-dense": dict(ffn="mot", group_size=2, n_dense_layers=1),
    "moe-top1": dict(ffn="moe", moe_top_k=1),
    "moe-top2": dict(ffn="moe", moe_top_k=2),
}


@pytest.mark.parametrize("variant", FFN_VARIANTS)
def test_gpt_is_causal(variant):
    """Changing tokens after position t, in any one sequence or in all, leaves every logit at <= t unchanged."""
    model = make_gpt(**FFN_VARIANTS[variant])
    B, T = 4, 6  # two MoT groups of 2
    idx = random_tokens(model, B, T)
    base = all_logits(model, idx)
    for t in range(T - 1):
        for rows in [[b] for b in range(B)] + [list(range(B))]:
            logits = all_logits(model, change_after(model, idx, rows, t, seed=t))
            torch.testing.assert_close(logits[:, :t + 1], base[:, :t + 1], rtol=1e-9, atol=1e-10)
            assert not torch.allclose(logits[rows, t + 1], base[rows, t + 1])  # the change is visible


def test_expert_choice_moe_is_not_causal():
    """Expert choice ranks tokens over the whole batch, so future tokens can change past logits."""
    for seed in range(20):
        model = make_gpt(seed, ffn="moe", moe_routing="expert_choice")
        idx = random_tokens(model, 2, 6, seed)
        t = 2
        changed = all_logits(model, change_after(model, idx, [0, 1], t, seed))
        if not torch.allclose(changed[:, :t + 1], all_logits(model, idx)[:, :t + 1]):
            return
    pytest.fail("expert choice never let a future token change a past logit")


# ----------------------------------------------------------------------------- grouping (§1, §7)


def test_groups_are_computed_independently():
    """Running the whole batch equals running each group of G examples alone."""
    layer, x = make_layer(**GROUPED), randn(*B6)
    torch.testing.assert_close(layer(x), torch.cat([layer(x[:3]), layer(x[3:])]))


def test_permuting_examples_in_a_group_permutes_outputs():
    """A permutation of the examples inside each group permutes outputs and merge weights the same way."""
    layer, x = make_layer(**GROUPED), randn(*B6)
    out, weights = layer(x), layer.merge_weights
    perm = torch.tensor([2, 0, 1, 4, 5, 3])  # stays inside groups {0,1,2} and {3,4,5}
    torch.testing.assert_close(layer(x[perm]), out[perm])
    torch.testing.assert_close(layer.merge_weights, weights[perm])


def test_change_of_one_token_reaches_its_group_at_its_position_only():
    """With G > 1, changing x[b, t] changes out[b', t] for every b' in b's group and nothing else."""
    layer, x = make_layer(**GROUPED), randn(*B6)
    B, T, C = x.shape
    base = layer(x)
    for b in range(B):
        for t in range(T):
            x2 = x.clone()
            x2[b, t] += randn(C, seed=b * T + t)
            diff = (layer(x2) - base).abs().amax(-1)  # (B, T)
            reached = torch.zeros(B, T, dtype=torch.bool)
            reached[b // 3 * 3:(b // 3 + 1) * 3, t] = True
            assert (diff[reached] > 1e-9).all(), (b, t, diff)
            assert (diff[~reached] <= 1e-12).all(), (b, t, diff)


def test_group_size_one_is_the_sum_of_all_experts():
    """G = 1: every merge weight is 1 and out = Σ_e w2[e]·relu(w1[e]·x), no mixing between examples."""
    layer, x = make_layer(group_size=1, n_experts=4), randn(5, 3, 8)
    expected = sum(expert(layer, e, x) for e in range(4))
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.merge_weights, torch.ones(5, 3, 4, dtype=DT))


def test_merge_weights_sum_to_one_over_each_group():
    """merge_weights (B, T, E) are in (0, 1) and sum to 1 over the G examples of each group."""
    layer, x = make_layer(**GROUPED), randn(*B6)
    layer(x)
    w = layer.merge_weights
    assert w.shape == (6, 3, 4) and (w > 0).all() and (w < 1).all()
    torch.testing.assert_close(w.view(2, 3, 3, 4).sum(1), torch.ones(2, 3, 4, dtype=DT))


@pytest.mark.parametrize("routing", ["uniform", "random", "discrete"])
def test_merge_entropy_is_the_normalised_entropy_over_each_group(routing):
    """merge_entropy() = mean over (group, t, e) of −Σ_i w log w / log G: 1 for plain averages, 0 one-hot."""
    layer, x = make_layer(**GROUPED, mot_routing="discrete" if routing == "discrete" else "continuous"), randn(*B6)
    if routing == "uniform":
        with torch.no_grad():
            layer.controller.zero_()
    layer(x)
    w = layer.merge_weights.view(2, 3, 3, 4)
    expected = {"uniform": 1.0, "discrete": 0.0}.get(routing, scalar(-(w * w.log()).sum(1).mean() / math.log(3)))
    assert layer.merge_entropy() == pytest.approx(expected, abs=1e-9)
    assert routing != "random" or 0.05 < expected < 0.95


def test_merge_entropy_after_an_eval_batch_with_a_partial_group():
    """merge_entropy() still works (a number in [0, 1]) after an eval forward whose batch was padded."""
    layer = make_layer(**GROUPED).eval()
    layer(randn(4, 3, 8))
    assert 0.0 <= layer.merge_entropy() <= 1.0


# ----------------------------------------------------------------------------- fast vs slow MoT


@pytest.mark.parametrize("tau", [1.0, 0.25, 4.0, "discrete"])
def test_fast_mot_matches_loop_reference(tau):
    """The batched MoT equals the literal loop over groups, positions and experts (any τ, discrete mode)."""
    discrete = tau == "discrete"
    layer = make_layer(**GROUPED, **(dict(mot_routing="discrete") if discrete else dict(temperature=tau)))
    x = randn(*B6)
    out, weights = loop_mot(layer, x, 1.0 if discrete else tau, discrete)
    torch.testing.assert_close(layer(x), out, **TOL)
    torch.testing.assert_close(layer.merge_weights, weights, **TOL)


@settings(max_examples=30, deadline=None, database=None)
@given(n_groups=st.integers(1, 3), G=st.integers(1, 4), T=st.integers(1, 3), C=st.integers(1, 6),
       E=st.integers(1, 4), H=st.integers(1, 4), tau=st.floats(0.2, 5.0), seed=st.integers(0, 2 ** 16))
def test_fast_mot_matches_loop_on_random_shapes(n_groups, G, T, C, E, H, tau, seed):
    """For random shapes and τ: fast == loop reference, and merge weights sum to 1 over each group."""
    layer = make_layer(seed, n_embd=C, n_experts=E, group_size=G, expert_size=H, temperature=tau)
    x = randn(n_groups * G, T, C, seed=seed)
    out, weights = loop_mot(layer, x, tau)
    torch.testing.assert_close(layer(x), out, **TOL)
    torch.testing.assert_close(layer.merge_weights, weights, **TOL)
    torch.testing.assert_close(layer.merge_weights.view(n_groups, G, T, E).sum(1),
                               torch.ones(n_groups, T, E, dtype=DT))


# ----------------------------------------------------------------------------- continuity (§7)


def test_mot_gradcheck():
    """MoT is differentiable in its input and in controller, w1, w2 (float64 gradcheck, τ != 1)."""
    layer = make_layer(n_embd=4, n_experts=3, group_size=2, expert_size=5, temperature=0.7)
    names = ("controller", "w1", "w2")

    def f(x, *params):
        return functional_call(layer, dict(zip(names, params)), (x,))

    inputs = (randn(4, 2, 4).requires_grad_(), *(getattr(layer, n).detach().clone().requires_grad_() for n in names))
    assert torch.autograd.gradcheck(f, inputs)


def tied_mot_layer(mot_routing="continuous"):
    """A MoT layer and input where examples 0 and 1 (almost) tie for expert 0 at position 0: example 0 wins
    by 1e-12, and the random perturbation direction for the parameters makes example 1 win for any eps > 0."""
    layer, x = make_layer(group_size=2, mot_routing=mot_routing), randn(4, 3, 8)  # groups {0, 1}, {2, 3}
    deltas = {name: randn(*p.shape, seed=7 + i) for i, (name, p) in enumerate(layer.named_parameters())}
    diff = x[0, 0] - x[1, 0]
    with torch.no_grad():
        layer.controller[:, 0] = orthogonal_part(layer.controller[:, 0], diff) + 1e-12 * diff / (diff @ diff)
        deltas["controller"][:, 0] = orthogonal_part(deltas["controller"][:, 0], diff) - diff
    return layer, x, deltas


EPS = (1e-1, 1e-2, 1e-3, 1e-4)


def test_mot_output_change_is_lipschitz_in_parameters():
    """Moving all parameters by eps·d changes MoT's output by O(eps), even at a routing tie."""
    ratios = change_ratios(*tied_mot_layer(), EPS)
    assert max(ratios) < 2 * min(ratios), ratios  # bounded, roughly constant
    assert ratios[-1] == pytest.approx(ratios[-2], rel=1e-2), ratios  # converges to ||J·d||


def test_discrete_mot_is_not_lipschitz_at_a_tie():
    """Contrast: with argmax routing the same perturbations jump, so ||Δout||/eps grows like 1/eps."""
    ratios = change_ratios(*tied_mot_layer("discrete"), EPS)
    assert ratios[-1] > 100 * ratios[0], ratios


def test_top1_moe_output_jumps_under_arbitrarily_small_router_change():
    """Top-1 MoE: at a router tie, nudging the router by ±δ flips the expert; the output jump does not vanish."""
    layer, x = make_layer(ffn="moe", n_experts=2, moe_top_k=1), randn(1, 1, 8)
    token = x[0, 0]
    with torch.no_grad():  # expert 1's logit equals expert 0's for this token
        layer.router[:, 1] = layer.router[:, 0] + orthogonal_part(randn(8, seed=1), token)
    nudge = torch.zeros_like(layer.router)
    nudge[:, 1] = token / token.norm()
    with torch.no_grad():
        expert_gap = float((expert(layer, 0, token) - expert(layer, 1, token)).norm())
        assert expert_gap > 0.1
        for delta in (1e-3, 1e-6, 1e-9):
            jump = perturbed(layer, x, {"router": nudge}, delta) - perturbed(layer, x, {"router": nudge}, -delta)
            # each side sends the token to a different expert with probability 1/2 + O(delta)
            assert float(jump.norm()) == pytest.approx(expert_gap / 2, rel=10 * delta)


# ----------------------------------------------------------------------------- gradients (§7)


def ffn_grads(layer, x, seed=1) -> dict:
    """Gradients of a random linear function of the layer's output."""
    layer.zero_grad()
    (layer(x) * randn(*x.shape, seed=seed)).sum().backward()
    return {name: p.grad for name, p in layer.named_parameters()}


@pytest.mark.parametrize("seed", range(3))
def test_every_mot_expert_gets_a_gradient(seed):
    """MoT: on every batch each expert's w1[e], w2[e] and controller column e get a non-zero gradient."""
    layer = make_layer(seed, **GROUPED)
    grads = ffn_grads(layer, randn(*B6, seed=seed))
    for e in range(4):
        assert nonzero(grads["w1"][e]) and nonzero(grads["w2"][e]) and nonzero(grads["controller"][:, e]), e


@pytest.mark.parametrize("top_k", [1, 2])
def test_unused_moe_expert_gets_no_gradient(top_k):
    """MoE: an expert that no token picks gets exactly zero gradient; the used ones do not."""
    layer, x = make_layer(ffn="moe", n_experts=3, moe_top_k=top_k), randn(2, 4, 8)
    with torch.no_grad():
        layer.router.mul_(0.1)[0, 2] = -10.0  # channel 0 is 1 for every token: expert 2 ranks last
        x[..., 0] = 1.0
    assert ((x @ layer.router).argmin(-1) == 2).all()
    grads = ffn_grads(layer, x)
    assert not nonzero(grads["w1"][2]) and not nonzero(grads["w2"][2])
    assert all(nonzero(grads["w1"][e]) and nonzero(grads["w2"][e]) for e in (0, 1))


# ----------------------------------------------------------------------------- temperature (§2, §7, §8)


def test_small_temperature_approaches_discrete_routing():
    """As τ -> 0 merge weights become one-hot (one token per expert per group) and out -> discrete mode."""
    x = randn(*B6, seed=3)
    discrete = make_layer(**GROUPED, mot_routing="discrete")
    expected = discrete(x)
    logits = (x @ discrete.controller).view(2, 3, 3, 4).topk(2, dim=1).values
    assert (logits[:, 0] - logits[:, 1]).min() > 0.05  # no near-ties in this input
    weight_err, out_err = [], []
    for tau in (1e-1, 1e-2, 1e-3):
        layer = make_layer(seed=99, **GROUPED, temperature=tau)
        copy_weights(discrete, layer)
        out = layer(x)
        weight_err.append(float(1 - layer.merge_weights.view(2, 3, 3, 4).amax(1).min()))
        torch.testing.assert_close(layer.merge_weights.round(), discrete.merge_weights)
        out_err.append(scalar((out - expected).abs().max()))
    assert weight_err[0] > weight_err[1] > weight_err[2] and weight_err[2] < 1e-12, weight_err
    assert out_err[0] > out_err[1] > out_err[2] and out_err[2] < 1e-12, out_err


def test_learnable_temperature_stays_positive_and_gets_gradient():
    """learnable_temperature: τ = exp(θ) is a parameter starting at the config value, θ's gradient is the
    true derivative (non-zero), and τ stays > 0 however far θ moves."""
    layer, x = make_layer(**GROUPED, temperature=0.5, learnable_temperature=True), randn(*B6)
    assert "log_temperature" in dict(layer.named_parameters())
    assert scalar(layer.temperature) == pytest.approx(0.5)
    grad = ffn_grads(layer, x)["log_temperature"]
    theta, h, r = scalar(layer.log_temperature), 1e-6, randn(*B6, seed=1)
    with torch.no_grad():
        loss_at = [float((functional_call(layer, {"log_temperature": torch.tensor(theta + s, dtype=DT)}, (x,)) * r)
                         .sum()) for s in (h, -h)]
    assert float(grad) != 0 and float(grad) == pytest.approx((loss_at[0] - loss_at[1]) / (2 * h), rel=1e-5)
    for theta in (-30.0, -3.0, 3.0):
        with torch.no_grad():
            layer.log_temperature.fill_(theta)
        assert layer.temperature > 0 and torch.isfinite(layer(x)).all()
    fixed = make_layer(**GROUPED)
    assert "log_temperature" not in dict(fixed.named_parameters()) and "log_temperature" in dict(fixed.named_buffers())


# ----------------------------------------------------------------------------- eval padding (§8)


@pytest.mark.parametrize("B", [1, 4, 5])
def test_eval_pads_a_partial_group_with_zero_rows(B):
    """Eval: a batch that is not a multiple of G equals the zero-padded batch's output, sliced to B rows."""
    layer, x = make_layer(**GROUPED).eval(), randn(B, 3, 8)
    out = layer(x)
    assert out.shape == (B, 3, 8) and layer.merge_weights.shape == (B, 3, 4)
    padded = torch.cat([x, torch.zeros(-B % 3, 3, 8, dtype=DT)])
    torch.testing.assert_close(out, layer(padded)[:B])


def test_train_mode_rejects_a_partial_group():
    """Train: a batch that is not a multiple of G raises a ValueError that names group_size."""
    layer = make_layer(**GROUPED).train()
    with pytest.raises(ValueError, match="group_size"):
        layer(randn(4, 3, 8))


def test_generate_single_sequence_with_mot():
    """GPT.generate decodes one sequence with MoT (group_size 4): prefix kept, valid new tokens appended."""
    model = make_gpt(ffn="mot", group_size=4).eval()
    idx = random_tokens(model, 1, 3)
    torch.manual_seed(0)
    out = model.generate(idx, max_new_tokens=7, top_k=5)  # runs past block_size=8: cropping too
    assert out.shape == (1, 10) and torch.equal(out[:, :3], idx)
    assert ((out >= 0) & (out < model.config.vocab_size)).all()


# ----------------------------------------------------------------------------- sparse MoE (§9)


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_moe_token_choice_matches_loop_reference(top_k):
    """Dropless top-k: out(x) = Σ over its top-k experts of p_e(x) · expert_e(x), token by token."""
    layer, x = make_layer(ffn="moe", n_experts=4, moe_top_k=top_k, expert_size=16), randn(2, 4, 8)
    out, kept = loop_moe(layer, x)
    assert kept == 8 * top_k
    torch.testing.assert_close(layer(x), out)


@pytest.mark.parametrize("top_k, capacity_factor", [(1, 0.5), (2, 0.5), (2, 1.0), (1, 1.0)])
def test_moe_capacity_drops_overflow_in_priority_order(top_k, capacity_factor):
    """With capacity ceil(cf·N·k/E), assignments beyond an expert's capacity (1st choices in token order,
    then 2nd choices) are dropped; a token with all its assignments dropped gets exactly zero output."""
    layer = make_layer(ffn="moe", n_experts=4, moe_top_k=top_k, capacity_factor=capacity_factor, expert_size=16)
    x = randn(2, 4, 8, seed=5)
    capacity = math.ceil(capacity_factor * 8 * top_k / 4)
    expected, kept = loop_moe(layer, x, capacity)
    assert kept < 8 * top_k  # something was dropped
    out = layer(x)
    torch.testing.assert_close(out, expected)
    assert torch.equal(out == 0, expected == 0)


@pytest.mark.parametrize("top_k, logits, expected", [
    (1, (math.log(3), 0.0), 0.01 * 4 * (1.0 * 3 / 6)),  # p = (3,1,1,1)/6, f = (1,0,0,0)
    (2, (math.log(3), math.log(2)), 0.01 * 4 * (0.5 * 3 / 7 + 0.5 * 2 / 7)),  # p = (3,2,1,1)/7, f = (½,½,0,0)
])
def test_moe_load_balancing_loss_on_known_routing(top_k, logits, expected):
    """aux_loss = α·E·Σ_e f_e·P_e, computed by hand for a router that sends every token to the same experts."""
    layer, x = make_layer(ffn="moe", n_experts=4, moe_top_k=top_k), randn(2, 4, 8)
    with torch.no_grad():
        layer.router.zero_()
        x[..., :2] = 1.0  # channels 0 and 1 drive experts 0 and 1 identically for every token
        layer.router[0, 0], layer.router[1, 1] = logits
    layer(x)
    assert scalar(layer.aux_loss) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("top_k, capacity_factor", [(1, None), (1, 0.5), (2, None), (1, 3.0)])
def test_expert_choice_each_expert_processes_exactly_capacity_tokens(top_k, capacity_factor, monkeypatch):
    """Expert choice: each expert gets a buffer of exactly ceil(cf·N·k/E) tokens, its top-p_e tokens."""
    layer = make_layer(ffn="moe", n_experts=4, moe_top_k=top_k, moe_routing="expert_choice",
                       capacity_factor=capacity_factor, expert_size=16)
    x = randn(2, 4, 8)
    capacity = math.ceil((capacity_factor or 1.0) * 8 * top_k / 4)
    seen, experts = [], mot.experts
    monkeypatch.setattr(mot, "experts", lambda tokens, w1, w2: seen.append(tuple(tokens.shape)) or experts(tokens, w1, w2))
    out = layer(x)
    assert seen == [(4, capacity, 8)]
    torch.testing.assert_close(out, loop_expert_choice(layer, x, capacity))


def test_gpt_aux_loss_is_sum_of_layers_and_loss_is_cross_entropy_only():
    """GPT.aux_loss is the sum of the MoE layers' aux losses; the returned loss is the LM cross entropy alone."""
    model = make_gpt(ffn="moe", moe_top_k=2)
    idx, targets = random_tokens(model, 2, 6), random_tokens(model, 2, 6, seed=1)
    logits, loss = model(idx, targets)
    layers = model.ffns(MixtureOfExperts)
    assert len(layers) == 2 and all(scalar(m.aux_loss) > 0 for m in layers)
    torch.testing.assert_close(model.aux_loss, sum(m.aux_loss for m in layers))
    torch.testing.assert_close(loss, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1)))
    dense = make_gpt(ffn="dense")
    dense(idx, targets)
    assert scalar(dense.aux_loss) == 0.0


# ----------------------------------------------------------------------------- FLOPs and layout (§6)

SHAPE = dict(n_embd=16, n_head=2, n_experts=4)
C, E = SHAPE["n_embd"], SHAPE["n_experts"]


def flop_pair(ffn: str, **overrides):
    """(dense GPT, `ffn` GPT) of the same shape, and the number of `ffn` layers."""
    dense, other = (GPT(tiny_config(ffn=kind, **SHAPE, **overrides)) for kind in ("dense", ffn))
    return dense, other, overrides["n_layer"] - overrides["n_dense_layers"]


@pytest.mark.parametrize("n_layer, n_dense_layers, group_size", [(2, 0, 2), (2, 1, 2), (3, 1, 4)])
def test_mot_flops_exceed_dense_by_the_mixing_term_only(n_layer, n_dense_layers, group_size):
    """FLOP-matched MoT (H = 4C·G/E) costs dense + 6·n_mot·(C·E controller + 2·C·E merge/emit) per token."""
    dense, mot, n_mot = flop_pair("mot", n_layer=n_layer, n_dense_layers=n_dense_layers, group_size=group_size)
    assert mot.flops_per_token() - dense.flops_per_token() == 6 * n_mot * (C * E + 2 * C * E)
    assert mot.get_num_active_params() - dense.get_num_active_params() == n_mot * C * E
    assert sum(b.ffn.mixing_macs_per_token() for b in mot.transformer.h) == n_mot * 2 * C * E
    layer = mot.ffns(MixtureOfTokens)[0]
    assert layer.w1.shape == (E, C, 4 * C * group_size // E)
    assert layer.w1.numel() + layer.w2.numel() == group_size * 8 * C * C  # G× the dense FFN's parameters


@pytest.mark.parametrize("n_layer, n_dense_layers, top_k", [(2, 0, 1), (2, 1, 2), (3, 1, 4)])
def test_moe_flops_exceed_dense_by_the_router_only(n_layer, n_dense_layers, top_k):
    """FLOP-matched MoE (H = 4C/k) costs dense + 6·n_moe·C·E (the router) per token."""
    dense, moe, n_moe = flop_pair("moe", n_layer=n_layer, n_dense_layers=n_dense_layers, moe_top_k=top_k)
    assert moe.flops_per_token() - dense.flops_per_token() == 6 * n_moe * C * E
    assert moe.ffns(MixtureOfExperts)[0].w1.shape == (E, C, 4 * C // top_k)


@pytest.mark.parametrize("ffn, kind", [("mot", MixtureOfTokens), ("moe", MixtureOfExperts)])
@pytest.mark.parametrize("n_dense_layers", [0, 2, 3])
def test_first_n_dense_layers_have_an_mlp(ffn, kind, n_dense_layers):
    """n_dense_layers: blocks 0..n-1 have a dense MLP, the others the configured FFN."""
    model = GPT(tiny_config(ffn=ffn, n_layer=3, n_dense_layers=n_dense_layers))
    types = [type(b.ffn) for b in model.transformer.h]
    assert types == [MLP] * n_dense_layers + [kind] * (3 - n_dense_layers)


# ----------------------------------------------------------------------------- config validation


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
    (dict(ffn="mot", n_embd=10, n_head=2, group_size=1, n_experts=3), "expert_size"),
    (dict(ffn="moe", n_embd=10, n_head=2, moe_top_k=3, n_experts=4), "expert_size"),
    (dict(temperature=0.0), "temperature"),
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


def test_flop_matched_default_expert_sizes():
    """Valid configs derive expert_size = 4C·G/E (MoT) and 4C/k (MoE); an explicit one is kept."""
    assert tiny_config(ffn="mot", n_embd=8, group_size=2, n_experts=4).expert_size == 16
    assert tiny_config(ffn="moe", n_embd=8, moe_top_k=2, n_experts=4).expert_size == 16
    assert tiny_config(ffn="mot", n_embd=10, group_size=1, n_experts=3, expert_size=7).expert_size == 7
