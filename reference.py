"""
The algorithm, slowly: Mixture of Tokens' five steps (README, "What Mixture of Tokens computes")
and MoE's routing as plain loops, one group, position and expert at a time, with no
vectorisation. mot.py's layers compute the same (the tests compare them); read these first.

Letters as in the README: B batch, T positions, C channels, G group_size, E experts, τ tau.
Each function takes a layer of mot.py for its weights: controller or router (C, E), w1 (E, C, H),
w2 (E, H, C), and returns plain tensors; a dense one at a time is small enough to check by hand.
"""

import math

import torch


def expert(layer, e: int, v: torch.Tensor) -> torch.Tensor:
    """Expert e of a MoT or MoE layer on one token v (C,): w2[e]·act(w1[e]·v + b1[e]) + b2[e]."""
    hidden = v @ layer.w1[e] + (layer.b1[e] if layer.b1 is not None else 0)
    return layer.activation(hidden) @ layer.w2[e] + (layer.b2[e] if layer.b2 is not None else 0)


def softmax(values: list) -> list:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    return [v / sum(exps) for v in exps]


@torch.no_grad()
def loop_mot(layer, x: torch.Tensor, tau: float = 1.0, discrete: bool = False):
    """MixtureOfTokens on x (B, T, C), B whole groups of G; tau: τ; discrete: each expert takes
    the top token of its group with weight 1 (the τ → 0 limit). Returns (out (B, T, C), the
    merge weights (B, T, E))."""
    B, T, _ = x.shape
    G, E = layer.group_size, layer.w1.shape[0]
    out, weights = torch.zeros_like(x), torch.zeros(B, T, E, dtype=x.dtype)
    for g in range(B // G):
        rows = range(g * G, (g + 1) * G)  # 1. group g: examples g·G ... g·G+G−1
        for t in range(T):  # only tokens of one position are mixed
            for e in range(E):
                # 2. merge weights: the controller's scores, a softmax over the G tokens
                scores = [float(x[b, t] @ layer.controller[:, e]) for b in rows]
                if discrete:
                    w = [float(i == scores.index(max(scores))) for i in range(G)]
                else:
                    w = softmax([score / tau for score in scores])
                merged = sum(w_i * x[b, t] for w_i, b in zip(w, rows))  # 3. merge
                y = expert(layer, e, merged)  # 4. the expert on its mixed token
                for w_i, b in zip(w, rows):
                    out[b, t] += w_i * y  # 5. emit with the same weights
                    weights[b, t, e] = w_i
    return out, weights


@torch.no_grad()
def router_probs(layer, x: torch.Tensor) -> list:
    """Per token (in B·T order), the router's probabilities softmax_e(x·W_router)."""
    tokens = x.reshape(-1, x.shape[-1])
    return [softmax([float(v) for v in token @ layer.router]) for token in tokens]


@torch.no_grad()
def loop_moe(layer, x: torch.Tensor, capacity=None):
    """Token-choice MixtureOfExperts on x (B, T, C), one token at a time: each token's top-k
    experts, weighted by its router probabilities. The assignments are served in priority order
    (every token's 1st choice in token order, then every 2nd choice, ...); with a capacity an
    expert serves at most that many and the rest are dropped. Returns (out, assignments kept)."""
    tokens, probs = x.reshape(-1, x.shape[-1]), router_probs(layer, x)
    E, k = layer.w1.shape[0], layer.top_k
    choices = [sorted(range(E), key=lambda e: -p[e])[:k] for p in probs]
    out, load, kept = torch.zeros_like(tokens), [0] * E, 0
    for j in range(k):
        for n, p in enumerate(probs):
            e = choices[n][j]
            if capacity is None or load[e] < capacity:
                load[e] += 1
                kept += 1
                out[n] += p[e] * expert(layer, e, tokens[n])
    return out.view_as(x), kept


@torch.no_grad()
def loop_expert_choice(layer, x: torch.Tensor, capacity: int) -> torch.Tensor:
    """Expert-choice MixtureOfExperts: each expert takes the `capacity` tokens of the whole batch
    with the highest probability for it (so a token's output depends on the other tokens)."""
    tokens, probs = x.reshape(-1, x.shape[-1]), router_probs(layer, x)
    out = torch.zeros_like(tokens)
    for e in range(layer.w1.shape[0]):
        for n in sorted(range(len(probs)), key=lambda n: -probs[n][e])[:capacity]:
            out[n] += probs[n][e] * expert(layer, e, tokens[n])
    return out.view_as(x)
