"""
Models made from other weights, as functions of mot.py's GPT:

    from_checkpoint(path, device)   the GPT train.py saved (memory-mapped), and its checkpoint
    from_pretrained(name_or_path)   GPT-2's weights (through transformers) as a dense GPT
    upcycle(model, ffn, **settings) a dense GPT grown into MoT or MoE ("sparse upcycling")
    to_sparse(model, routing)       a MoT GPT converted: "token_choice", a MoE that mixes no
                                    examples; "discrete", one-hot merge weights, still grouped

train.py, sample.py and the experiments call these; the model itself is all in mot.py.
"""

import os
from dataclasses import replace
from typing import Tuple

import torch

from mot import FFNS, GPT, GPTConfig, MixtureOfTokens

# GPT-2's checkpoints, as transformers' GPT2LMHeadModel holds them: the same tensors under the
# same names but for `mlp` (here `ffn`), with the matrices of its Conv1D layers stored transposed.
GPT2_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# GPT-2's sizes on the Hugging Face hub, the names from_pretrained downloads (it also takes a
# directory written by transformers' save_pretrained).
GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
# The settings of the dense FFN's surroundings, which upcycling keeps.
TRUNK_FIELDS = ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "bias", "activation")


def nonfinite(tensors: dict) -> list:
    """The names of the floating-point tensors of `tensors` (a state dict) that hold a NaN or an
    infinity: the weights of a run that diverged."""
    return [name for name, t in tensors.items() if t.is_floating_point() and not t.isfinite().all()]


def from_checkpoint(path: str, device: str = "cpu", needs: tuple = ()) -> Tuple[GPT, dict]:
    """The GPT saved by train.py at `path`, on `device` in eval mode, and the checkpoint's other
    entries (its weights are the model's); a ValueError saying what is wrong with a missing,
    damaged, foreign or diverged file, or one that lacks an entry of `needs` (those the caller
    reads besides the model: its run's config, the optimizer's state, ...).

    The file is memory-mapped, never read whole: the model takes the weights as they lie in
    it (built on the meta device, it allocates none of its own), and only they come into
    memory, on the CPU, then on `device`. The optimizer's moments, twice the weights, come in
    only if a resume reads them."""
    if not os.path.exists(path):
        raise ValueError(f"no checkpoint at {path}: train one first")
    try:
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # a damaged file can fail anywhere inside the unpickler
        raise ValueError(f"cannot read checkpoint {path} (truncated or corrupted?): "
                         f"{str(e).split('. ')[0]}") from None
    required = {"model", "model_args", "iter_num", "meta"}
    missing = sorted((required | set(needs)) - set(checkpoint if isinstance(checkpoint, dict)
                                                   else {}))
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: not a checkpoint written by "
                         f"train.py")
    try:
        with torch.device("meta"):  # no weights of its own (aux_loss: meta until a forward)
            model = GPT(GPTConfig(**checkpoint["model_args"]))
        model.load_state_dict(checkpoint["model"], assign=True)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path} does not hold a model of this mot.py: "
                         f"{str(e).splitlines()[0]}") from None
    # assign gives each name its own Parameter: tie the embedding to lm_head again, as GPT does
    model.transformer.wte.weight = model.lm_head.weight
    model.to(device).eval()
    bad = nonfinite(model.state_dict())
    if bad:  # train.py never saves such weights; sampling from them fails deep inside
        raise ValueError(f"{path} holds non-finite weights ({len(bad)} tensors, {bad[0]} "
                         f"first): its run diverged; train it again with a lower "
                         f"learning_rate or with grad_clip set")
    del checkpoint["model"]
    return model, checkpoint


def gpt2_config(hf_config) -> GPTConfig:
    """The GPTConfig of a transformers GPT2Config: GPT-2's biases, GELU and LayerNorm eps 1e-5
    (nn.LayerNorm's), or a ValueError naming what this GPT cannot run."""
    supported = dict(activation_function=("gelu_new", "gelu_pytorch_tanh"),
                     layer_norm_epsilon=(1e-5,), n_inner=(None, 4 * hf_config.n_embd),
                     scale_attn_weights=(True,), scale_attn_by_inverse_layer_idx=(False,),
                     reorder_and_upcast_attn=(False,))
    for key, values in supported.items():
        if getattr(hf_config, key, values[0]) not in values:
            raise ValueError(f"GPT-2 config has {key}={getattr(hf_config, key)!r}: this GPT "
                             f"supports {' or '.join(map(repr, values))}")
    return GPTConfig(block_size=hf_config.n_positions, vocab_size=hf_config.vocab_size,
                     n_layer=hf_config.n_layer, n_head=hf_config.n_head, n_embd=hf_config.n_embd,
                     dropout=0.0, bias=True, activation="gelu")


def gpt2_state_dict(hf_state: dict) -> dict:
    """A GPT2LMHeadModel's state dict under this GPT's names, Conv1D matrices transposed."""
    state = {}
    for name, tensor in hf_state.items():
        if name.endswith((".attn.bias", ".attn.masked_bias")):  # causal masks of old versions
            continue
        state[name.replace(".mlp.", ".ffn.")] = tensor.t() if name.endswith(GPT2_CONV1D) else tensor
    state.setdefault("lm_head.weight", state["transformer.wte.weight"])  # tied
    return state


def from_pretrained(name_or_path: str) -> GPT:
    """GPT-2 (one of GPT2_NAMES, which transformers downloads, or a directory written by
    transformers' save_pretrained) as a dense GPT in eval mode, with GPT-2's settings: biases,
    GELU (tanh), vocab_size 50257, block_size 1024."""
    try:
        from transformers import GPT2LMHeadModel
    except ImportError:
        raise ImportError("convert.from_pretrained needs the transformers package: "
                          "pip install transformers") from None
    hf = GPT2LMHeadModel.from_pretrained(name_or_path)
    model = GPT(gpt2_config(hf.config))
    model.load_state_dict(gpt2_state_dict(hf.state_dict()))
    return model.eval()


def to_sparse(model: GPT, routing: str) -> GPT:
    """A new GPT whose MoT layers no longer blend the tokens of a group, for transition tuning,
    weights copied. Only "token_choice" decodes sequences independently:
    "discrete": the same layers with one-hot argmax merge weights (the τ → 0 limit): each expert
    takes the one token of its group that scores highest for it, and gives its output to that
    token alone. Which token that is still depends on the others of the group (an argmax over
    it, zero rows of a padded group included): the examples of a group are still coupled,
    through the choice, and a sequence decoded alone still depends on its padding;
    "token_choice": top-k token-choice MoE layers, k = E/G (the same expert FLOPs per token),
    whose experts are the MoT experts and whose router is the MoT controller divided by τ: the
    logits MoT's softmax saw (RESULTS.md compares it with the raw controller). Each token
    chooses its own experts: nothing depends on the other examples.
    The new GPT has this one's dtype, device and training mode."""
    cfg = model.config
    if FFNS[cfg.ffn] is not MixtureOfTokens:
        raise ValueError(f"to_sparse converts MoT layers, but this model has ffn={cfg.ffn!r}")
    if routing == "discrete":
        sparse_config = replace(cfg, mot_routing="discrete")
    elif routing == "token_choice":
        sparse_config = replace(cfg, ffn="moe", moe_routing="token_choice",
                                capacity_factor=None,
                                moe_top_k=max(1, cfg.n_experts // cfg.group_size),
                                expert_size=model.ffns(MixtureOfTokens)[0].w1.shape[2])
    else:
        raise ValueError(f"routing={routing!r}: use 'discrete' or 'token_choice'")
    state = model.state_dict()
    if routing == "token_choice":  # the controller over τ becomes the router; MoE has no τ
        state = {name: tensor for name, tensor in state.items()
                 if not name.endswith((".ffn.controller", ".log_temperature"))}
        for i, block in enumerate(model.transformer.h):
            if isinstance(block.ffn, MixtureOfTokens):
                state[f"transformer.h.{i}.ffn.router"] = (
                    block.ffn.controller / block.ffn.temperature).detach()
    weight = model.lm_head.weight
    sparse = GPT(sparse_config).to(device=weight.device, dtype=weight.dtype)
    sparse.load_state_dict(state)
    return sparse.train(model.training)


@torch.no_grad()
def upcycle(model: GPT, ffn: str, **settings) -> GPT:
    """A new GPT grown from a dense one ("sparse upcycling"): the same attention, embeddings,
    norms and first n_dense_layers FFNs, and in the other blocks `ffn` layers (a key of FFNS
    whose class is `upcyclable`: MoT, MoE) whose experts start from the block's dense FFN.
    settings: the new layers' GPTConfig fields (n_experts, group_size, expert_size, temperature,
    moe_top_k, n_dense_layers, dropout, ...); the TRUNK_FIELDS stay the model's.

    Experts of width H cut the dense FFN's 4C hidden units into k = 4C/H slices, expert e
    taking slice e mod k with its rows of c_fc, columns of c_proj and c_fc's biases, and
    c_proj's bias divided by k: each run of k experts sums to the dense FFN (k = 1: every
    expert a copy, Komatsuzaki et al. 2022). A layer whose experts must be copies (upcyclable
    "copies": MoE, which weights its experts by router probabilities) gets expert_size 4C when
    it is None. The controller (MoT) or router (MoE) is drawn as in a new layer
    (docs/gpt2_and_upcycling.md: what the layer computes at step 0). The new GPT has the
    model's dtype, device and training mode."""
    cfg = model.config
    if cfg.ffn != "dense":
        raise ValueError(f"upcycle grows a dense model, but this one has ffn={cfg.ffn!r}")
    if ffn not in FFNS or FFNS[ffn].upcyclable is None:
        raise ValueError(f"upcycle into ffn={ffn!r}: use one of "
                         f"{[k for k, c in FFNS.items() if c.upcyclable]}")
    kept = sorted(set(settings) & set(TRUNK_FIELDS + ("ffn", "expert_bias")))
    if kept:
        raise ValueError(f"upcycle keeps the source's {', '.join(kept)}: leave them out")
    slices = FFNS[ffn].upcyclable == "slices"
    if not slices and settings.get("expert_size") is None:
        settings["expert_size"] = 4 * cfg.n_embd
    try:
        config = replace(cfg, ffn=ffn, expert_bias=cfg.bias, **settings)
    except TypeError as e:
        raise ValueError(f"upcycle: {e}") from None
    weight = model.lm_head.weight
    grown = GPT(config).to(device=weight.device, dtype=weight.dtype)
    source = model.state_dict()
    for name, tensor in grown.state_dict().items():
        if name in source:
            tensor.copy_(source[name])
    for dense, block in zip(model.transformer.h, grown.transformer.h):
        if block.ffn.upcyclable is None:  # the first n_dense_layers
            continue
        E, C, H = block.ffn.w1.shape
        k = 4 * C // H
        if 4 * C % H or E % k or (k > 1 and not slices):
            raise ValueError(f"upcycle: expert_size={H} must be 4·n_embd={4 * C} (copies)"
                             + (f" or 4·n_embd/k with n_experts={E} a multiple of k (slices)"
                                if slices else ""))
        units = torch.arange(E, device=weight.device) % k  # the slice of each expert
        w_fc = dense.ffn.c_fc.weight.view(k, H, C)  # slice j: hidden units jH:(j+1)H
        block.ffn.w1.copy_(w_fc.transpose(1, 2)[units])
        block.ffn.w2.copy_(dense.ffn.c_proj.weight.view(C, k, H).permute(1, 2, 0)[units])
        if cfg.bias:
            block.ffn.b1.copy_(dense.ffn.c_fc.bias.view(k, H)[units])
            block.ffn.b2.copy_((dense.ffn.c_proj.bias / k).expand(E, C))
    return grown.train(model.training)
