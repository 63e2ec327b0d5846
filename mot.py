"""
A GPT whose feed-forward layers (FFNs) are dense, Mixture of Tokens (MoT) or sparse Mixture of
Experts (MoE); MoT: Antoniak et al., "Mixture of Tokens: Continuous MoE through Cross-Example
Aggregation", arXiv 2310.15961. Read top to bottom: config, attention, the FFNs (dense, MoT and
its variant, MoE) and their registry FFNS, block, GPT. MixtureOfTokens states MoT's five steps.
"""

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from moe_kernels import grouped_mm

INIT_STD = 0.02  # GPT-2's init: N(0, 0.02) for every weight matrix


@dataclass
class GPTConfig:
    block_size: int = 256
    vocab_size: int = 50304
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0
    bias: bool = False  # biases in Linears and LayerNorms (experts: see expert_bias)
    activation: str = "relu"  # of every FFN: "relu" (the MoT authors') | "gelu" (GPT-2's, tanh)
    expert_bias: bool = False  # biases in the experts: upcycling copies a dense FFN's into them
    ffn: str = "dense"  # a key of FFNS: "dense" | "mot" | "moe" | "mot_emit_softmax"
    n_dense_layers: int = 0  # the first n blocks keep a dense FFN (the paper: the first half)
    n_experts: int = 32
    group_size: int = 32  # MoT: examples mixed together at each position (step 1)
    expert_size: Optional[int] = None  # width of one expert; None: expert FLOPs = dense FFN's
    temperature: float = 1.0  # MoT softmax temperature τ
    learnable_temperature: bool = False  # MoT: τ = exp(θ), θ learned
    mot_routing: str = "continuous"  # MoT: "continuous" (softmax) | "discrete" (argmax, τ → 0)
    # MoT: std of W_ctrl's init; None = 1/sqrt(n_embd), the authors' scale: logits of std ~1 at
    # init (README, "The controller's scale matters")
    controller_init_std: Optional[float] = None
    moe_top_k: int = 1
    moe_routing: str = "token_choice"  # MoE: "token_choice" | "expert_choice" (NOT causal)
    capacity_factor: Optional[float] = None  # MoE: None = dropless
    aux_loss_coef: float = 0.01  # MoE: Switch load-balancing loss weight α

    def __post_init__(self):
        def require(ok, field, why):
            if not ok:
                raise ValueError(f"GPTConfig.{field}={getattr(self, field)!r}: {why}")

        for field in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "n_experts",
                      "group_size", "moe_top_k"):
            require(getattr(self, field) > 0, field, "must be a positive integer")
        require(self.ffn in FFNS, "ffn", f"must be in {tuple(FFNS)}")
        require(self.activation in ACTIVATIONS, "activation", f"must be in {tuple(ACTIVATIONS)}")
        require(self.n_embd % self.n_head == 0, "n_embd", f"not a multiple of n_head={self.n_head}")
        require(0 <= self.dropout < 1, "dropout", "must be in [0, 1)")
        require(0 <= self.n_dense_layers <= self.n_layer, "n_dense_layers", "must be 0..n_layer")
        require(self.expert_size is None or self.expert_size > 0, "expert_size",
                "must be positive, or None for the FLOP-matched width")
        require(self.temperature > 0, "temperature", "must be > 0")
        require(self.controller_init_std is None or self.controller_init_std > 0,
                "controller_init_std", "must be > 0, or None for the default")
        require(self.mot_routing in ("continuous", "discrete"), "mot_routing",
                "must be 'continuous' or 'discrete'")
        require(self.moe_routing in ("token_choice", "expert_choice"), "moe_routing",
                "must be 'token_choice' or 'expert_choice'")
        require(self.moe_top_k <= self.n_experts, "moe_top_k",
                f"must be <= n_experts={self.n_experts}")
        require(self.capacity_factor is None or self.capacity_factor > 0, "capacity_factor",
                "must be > 0, or None for dropless")
        require(self.aux_loss_coef >= 0, "aux_loss_coef", "must be >= 0")

    @property
    def residual_init_std(self) -> float:
        """GPT-2 scales the init of the projections into the residual stream: 1/sqrt(2·n_layer)."""
        return INIT_STD / math.sqrt(2 * self.n_layer)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: Optional[dict] = None) -> torch.Tensor:
        """x (B, T, C). With a cache (a dict, empty at first) the keys and values of earlier
        positions come from it and this call's are added: decoding feeds only the new tokens."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in (q, k, v))  # (B, nh, T, hs)
        if cache is not None:
            if cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v  # (B, nh, past + T, hs)
        # query i sits at position past + i and sees every key up to there: a whole sequence is
        # the causal triangle; one new token sees every key (no mask: flash attention may run it)
        S = k.size(2)
        mask = (None if S == T or T == 1
                else torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=S == T,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.c_proj(y))


# ----------------------------------------------------------------------------- the FFNs
# Every FFN maps (B, T, C) to (B, T, C), initialises itself, and provides from_config(config)
# (its constructor takes plain arguments), num_active_params() (the parameters whose multiply-adds
# a token pays for) and the attributes of FFN below. FFNS (after the classes) maps GPTConfig.ffn
# to the class: a new FFN is one class and one line there.


class FFN(nn.Module):
    """The attributes GPT, train.py, convert.py and the tests read from an FFN layer, with the
    answers of a plain one; a layer sets those that differ (as a class or instance attribute)."""
    group_size = 1  # the batch is whole groups of this many examples (eval: Block pads them)
    mixes_examples = False  # an example's output depends on the other examples of the batch
    causal = True  # a position's output depends on no later position
    upcyclable = None  # convert.upcycle may grow a dense FFN into it: "copies" | "slices" (of it)
    aux_loss = None  # a loss training adds, set by each forward (MoE: load balancing)

    def mixing_macs_per_token(self) -> int:
        """Multiply-adds per token not with a parameter (MoT's merge and emit): FLOPs too."""
        return 0


# The activation of every FFN of a GPT (GPTConfig.activation): one for all, a fair comparison
def relu(x: torch.Tensor) -> torch.Tensor:
    """ReLU, the MoT authors' choice. In place: the matmul that produces x does not keep its
    output for the backward pass, and one large allocation less is measurably faster on a CPU."""
    return F.relu(x, inplace=True)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's GELU, the tanh approximation it was trained with (transformers' gelu_new)."""
    return F.gelu(x, approximate="tanh")


ACTIVATIONS = {"relu": relu, "gelu": gelu}


class MLP(FFN):
    """The dense FFN: C -> 4C -> C."""

    def __init__(self, n_embd: int, dropout: float = 0.0, bias: bool = False,
                 residual_init_std: float = INIT_STD, activation: str = "relu"):
        super().__init__()
        self.activation = ACTIVATIONS[activation]
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.residual_init_std = residual_init_std
        # GPT draws these weights again, as nanoGPT does: drawing them here from a forked random
        # stream leaves GPT's stream, and so its weights for a given seed, exactly nanoGPT's
        with torch.random.fork_rng():
            self.reset_parameters()

    @classmethod
    def from_config(cls, config: GPTConfig) -> "MLP":
        return cls(n_embd=config.n_embd, dropout=config.dropout, bias=config.bias,
                   residual_init_std=config.residual_init_std, activation=config.activation)

    def reset_parameters(self) -> None:
        for linear, std in ((self.c_fc, INIT_STD), (self.c_proj, self.residual_init_std)):
            nn.init.normal_(linear.weight, mean=0.0, std=std)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.activation(self.c_fc(x))))

    def num_active_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


# The experts of MoT and MoE: E FFNs of width H, stacked in tensors w1 (E, C, H) and w2 (E, H, C).
def experts(tokens: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, activation=relu,
            b1: Optional[torch.Tensor] = None, b2: Optional[torch.Tensor] = None) -> torch.Tensor:
    """E stacked expert FFNs in two batched matmuls: tokens (E, N, C), w1 (E, C, H), w2 (E, H, C),
    biases b1 (E, H) and b2 (E, C) or None -> (E, N, C): expert e computes
    w2[e]·activation(w1[e]·token + b1[e]) + b2[e] on its N tokens."""
    def linear(x, w, b):
        return torch.bmm(x, w) if b is None else torch.baddbmm(b.unsqueeze(1), x, w)
    return linear(activation(linear(tokens, w1, b1)), w2, b2)


def expert_biases(module: nn.Module, n_experts: int, expert_size: int, n_embd: int,
                  bias: bool) -> None:
    """module.b1 (E, H) and module.b2 (E, C), zero at init, or None when bias is False."""
    module.b1 = nn.Parameter(torch.zeros(n_experts, expert_size)) if bias else None
    module.b2 = nn.Parameter(torch.zeros(n_experts, n_embd)) if bias else None


def expert_params(module: nn.Module) -> int:
    """The parameters of all of module's experts: w1, w2 and their biases."""
    return sum(p.numel() for p in (module.w1, module.w2, module.b1, module.b2) if p is not None)


def flop_matched(hidden: int, per: int, formula: str) -> int:
    """The FLOP-matched expert width hidden/per, or a ValueError naming the fix."""
    if hidden % per:
        raise ValueError(f"expert_size=None asks for the FLOP-matched width {formula} = "
                         f"{hidden}/{per}, which is not an integer: set expert_size, or change "
                         f"n_experts, group_size or moe_top_k")
    return hidden // per


class MixtureOfTokens(FFN):
    """Mixture of Tokens: at each position, the G tokens of a group of G examples are mixed into
    one token per expert, and each expert's output goes back to them with the same weights. Every
    expert sees every token of its group, so the layer is continuous. For an input x (B, T, C):

    1. Group: examples g·G ... g·G+G-1 of the batch form group g, whose tokens x_i = x[g·G+i, t]
       at each position t are mixed (only tokens of one position: the model stays causal).
    2. Merge weights: the controller W_ctrl (C, E) scores each token for each expert, and a
       softmax over the group normalises the scores: w[i, e] = softmax_i(x_i · W_ctrl[:, e] / τ).
    3. Merge: one mixed token per expert, m_e = Σ_i w[i, e] · x_i.
    4. Experts: one FFN each, y_e = W2[e] · act(W1[e] · m_e), W1 (E, C, H) and W2 (E, H, C)
       holding all E of them (act: GPTConfig.activation, ReLU by default).
    5. Emit with the same weights: token i gets back out_i = Σ_e w[i, e] · y_e.

    Letters: B batch, T positions, C channels, G group_size, n = B/G groups, E experts,
    H expert_size, τ temperature. The algorithm, slowly: reference.loop_mot. Subclasses change how
    the weights are computed by overriding get_merge_weights and get_emit_weights."""
    mixes_examples = True  # step 1
    upcyclable = "slices"  # any k experts of width 4C/k that sum to the dense FFN (convert.py)

    def __init__(self, n_embd: int, n_experts: int, group_size: int,
                 expert_size: Optional[int] = None, temperature: float = 1.0,
                 learnable_temperature: bool = False, routing: str = "continuous",
                 dropout: float = 0.0, residual_init_std: float = INIT_STD,
                 controller_init_std: Optional[float] = None, activation: str = "relu",
                 expert_bias: bool = False):
        super().__init__()
        C, E, G = n_embd, n_experts, group_size
        H = expert_size or self.flop_matched_expert_size(C, E, G)
        self.group_size, self.discrete = G, routing == "discrete"
        self.controller = nn.Parameter(torch.empty(C, E))  # W_ctrl, no bias (step 2)
        self.w1 = nn.Parameter(torch.empty(E, C, H))  # E stacked experts (step 4)
        self.w2 = nn.Parameter(torch.empty(E, H, C))
        expert_biases(self, E, H, C, expert_bias)
        self.activation = ACTIVATIONS[activation]
        log_temperature = torch.tensor(math.log(temperature))  # τ = exp(θ) stays > 0
        if learnable_temperature:
            self.log_temperature = nn.Parameter(log_temperature)
        else:
            self.register_buffer("log_temperature", log_temperature)
        self.dropout = nn.Dropout(dropout)
        self.residual_init_std = residual_init_std
        # the controller's scale sets how peaked the merge weights start: too small and every
        # token gets back its group's average, too large and the routing is one-hot from the start
        self.controller_init_std = controller_init_std or C ** -0.5
        self.merge_weights: Optional[torch.Tensor] = None  # (B, T, E), last eval-mode forward
        self.reset_parameters()
        # An argmax passes no gradient: with discrete routing only the experts train, and the
        # controller and τ are frozen, so that DDP does not wait for gradients that never come.
        if self.discrete:
            self.controller.requires_grad_(False)
            self.log_temperature.requires_grad_(False)

    @classmethod
    def from_config(cls, config: GPTConfig) -> "MixtureOfTokens":
        return cls(n_embd=config.n_embd, n_experts=config.n_experts, group_size=config.group_size,
                   expert_size=config.expert_size, temperature=config.temperature,
                   learnable_temperature=config.learnable_temperature, routing=config.mot_routing,
                   dropout=config.dropout, residual_init_std=config.residual_init_std,
                   controller_init_std=config.controller_init_std, activation=config.activation,
                   expert_bias=config.expert_bias)

    @staticmethod
    def flop_matched_expert_size(n_embd: int, n_experts: int, group_size: int) -> int:
        """H with E·H/G = 4C: a token pays for E/G experts of width H, as for one dense 4C FFN."""
        return flop_matched(4 * n_embd * group_size, n_experts, "4·n_embd·group_size/n_experts")

    def reset_parameters(self) -> None:
        nn.init.normal_(self.controller, mean=0.0, std=self.controller_init_std)
        nn.init.normal_(self.w1, mean=0.0, std=INIT_STD)
        nn.init.normal_(self.w2, mean=0.0, std=self.residual_init_std)

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp()

    def extra_repr(self) -> str:
        (E, C, H), routing = self.w1.shape, "discrete" if self.discrete else "continuous"
        return (f"n_embd={C}, n_experts={E}, group_size={self.group_size}, expert_size={H}, "
                f"temperature={self.temperature.item():.3g}, routing={routing}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C), by the steps and letters of the class docstring; B is whole
        groups (in a GPT, Block pads a partial group with zero rows in eval mode)."""
        B, T, C = x.shape
        G, E = self.group_size, self.controller.shape[1]
        # 1. group: example g·G + i is token i of group g. One copy into this layout, which the
        # matmuls of steps 2 and 3 would each make of their own
        groups = x.view(-1, G, T, C).transpose(1, 2).contiguous()  # (n, T, G, C)
        # 2. controller scores, and the merge weights: a softmax over the G tokens of a group
        logits = groups @ self.controller  # (n, T, G, E)
        weights = self.get_merge_weights(logits)  # (n, T, G, E), sums to 1 over G
        # 3. merge: one mixed token per expert
        merged = weights.transpose(2, 3) @ groups  # (n, T, E, C)
        # 4. experts: expert e runs on its n·T mixed tokens
        y = experts(merged.flatten(0, 1).transpose(0, 1), self.w1, self.w2,
                    self.activation, self.b1, self.b2)  # (E, n·T, C)
        y = y.transpose(0, 1).view(-1, T, E, C)  # (n, T, E, C)
        # 5. emit: each token gets back the expert outputs, weighted as it was merged
        out = self.get_emit_weights(logits, weights) @ y  # (n, T, G, C)
        if not self.training:  # kept for inspection (merge_entropy); a copy training skips
            # in x's layout (B, T, E), as reference.loop_mot returns them; the softmax ran over
            # the G of (n, T, G, E), B = n·G split in two: view(n, G, T, E) gets it back
            self.merge_weights = weights.detach().transpose(1, 2).reshape(B, T, E)
        return self.dropout(out.transpose(1, 2).reshape(B, T, C))  # (B, T, C)

    def get_merge_weights(self, logits: torch.Tensor) -> torch.Tensor:
        """Step 2: a softmax over the G tokens of each group (dim -2), per position and expert."""
        if self.discrete:  # the τ → 0 limit: each expert takes the top token of its group
            return torch.zeros_like(logits).scatter_(-2, logits.argmax(-2, keepdim=True), 1.0)
        return torch.softmax(logits / self.temperature, dim=-2)

    def get_emit_weights(self, logits: torch.Tensor, merge_weights: torch.Tensor) -> torch.Tensor:
        """Step 5: MoT sends each expert's output back with the merge weights."""
        return merge_weights

    def merge_entropy(self) -> float:
        """Mean entropy of the last eval-mode forward's merge weights over each group / log(G):
        1 = every expert takes its group's plain average, 0 = one token per expert."""
        if self.merge_weights is None:
            raise RuntimeError("merge_entropy() summarises the merge weights of the last eval-mode "
                               "forward: call .eval() and run the layer (or its GPT) on a batch")
        G = self.group_size
        if G == 1:
            return 0.0
        B, T, E = self.merge_weights.shape
        w = self.merge_weights.view(B // G, G, T, E)  # (n, G, T, E): sums to 1 over G
        return (-(w * w.clamp_min(1e-30).log()).sum(1).mean() / math.log(G)).item()

    def num_active_params(self) -> int:
        # Each group of G tokens pays for one application of every expert.
        return self.controller.numel() + expert_params(self) // self.group_size

    def mixing_macs_per_token(self) -> int:
        return 2 * self.controller.numel()  # merge and emit: C·E each


class MixtureOfTokensEmitSoftmax(MixtureOfTokens):
    """MoT whose emit weights are a softmax over the experts, as Soft MoE combines its slots:
    each token gets back a convex combination of the expert outputs."""

    def get_emit_weights(self, logits: torch.Tensor, merge_weights: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits / self.temperature, dim=-1)  # (n, T, G, E), sums to 1 over E


class MixtureOfExperts(FFN):
    """Sparse MoE baseline. Token choice: each token goes to its top-k experts, weighted by its
    router probabilities; with a capacity factor an expert takes at most
    ceil(capacity_factor·N·k/E) tokens and the rest are dropped (the residual carries them).
    Expert choice: each expert takes its top-c tokens of the whole batch. It looks at all
    positions at once, so it is NOT causal: a training baseline only, wrong for decoding.

    self.aux_loss holds the Switch load-balancing loss α·E·Σ_e f_e·P_e of the last forward
    (token choice; 0 for expert choice, which is balanced by construction)."""
    upcyclable = "copies"  # each expert the dense FFN: its gates then weight copies

    def __init__(self, n_embd: int, n_experts: int, top_k: int = 1,
                 expert_size: Optional[int] = None, routing: str = "token_choice",
                 capacity_factor: Optional[float] = None, aux_loss_coef: float = 0.01,
                 dropout: float = 0.0, residual_init_std: float = INIT_STD,
                 activation: str = "relu", expert_bias: bool = False):
        super().__init__()
        C, E = n_embd, n_experts
        H = expert_size or self.flop_matched_expert_size(C, E, top_k)
        self.top_k, self.capacity_factor = top_k, capacity_factor
        self.expert_choice, self.aux_loss_coef = routing == "expert_choice", aux_loss_coef
        # expert choice, or a capacity, makes the tokens of the batch compete for the experts
        self.causal = not self.expert_choice and capacity_factor is None
        self.mixes_examples = not self.causal
        self.router = nn.Parameter(torch.empty(C, E))
        self.w1 = nn.Parameter(torch.empty(E, C, H))
        self.w2 = nn.Parameter(torch.empty(E, H, C))
        expert_biases(self, E, H, C, expert_bias)
        self.activation = ACTIVATIONS[activation]
        self.dropout = nn.Dropout(dropout)
        self.residual_init_std = residual_init_std
        self.aux_loss = torch.zeros(())
        self.reset_parameters()

    @classmethod
    def from_config(cls, config: GPTConfig) -> "MixtureOfExperts":
        return cls(n_embd=config.n_embd, n_experts=config.n_experts, top_k=config.moe_top_k,
                   expert_size=config.expert_size, routing=config.moe_routing,
                   capacity_factor=config.capacity_factor, aux_loss_coef=config.aux_loss_coef,
                   dropout=config.dropout, residual_init_std=config.residual_init_std,
                   activation=config.activation, expert_bias=config.expert_bias)

    @staticmethod
    def flop_matched_expert_size(n_embd: int, n_experts: int, top_k: int) -> int:
        """H with k·H = 4C: a token pays for k experts of width H, as for one dense 4C FFN."""
        return flop_matched(4 * n_embd, top_k, "4·n_embd/moe_top_k")

    def extra_repr(self) -> str:
        E, C, H = self.w1.shape
        routing = "expert_choice" if self.expert_choice else "token_choice"
        return (f"n_embd={C}, n_experts={E}, top_k={self.top_k}, expert_size={H}, "
                f"routing={routing}, capacity_factor={self.capacity_factor}")

    def reset_parameters(self) -> None:
        nn.init.normal_(self.router, mean=0.0, std=INIT_STD)
        nn.init.normal_(self.w1, mean=0.0, std=INIT_STD)
        nn.init.normal_(self.w2, mean=0.0, std=self.residual_init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        E, k = self.w1.shape[0], self.top_k
        xf = x.reshape(-1, C)  # (N, C)
        N = xf.shape[0]
        probs = torch.softmax(xf @ self.router, dim=-1)  # (N, E)
        if self.expert_choice:
            capacity = min(N, math.ceil(N * k * (self.capacity_factor or 1.0) / E))
            gates, token = probs.t().topk(capacity, dim=1)  # (E, c): each expert picks its tokens
            y = experts(xf[token], self.w1, self.w2, self.activation, self.b1,
                        self.b2) * gates.unsqueeze(-1)  # (E, c, C)
            out = y.new_zeros(N, C).index_add_(0, token.flatten(), y.view(-1, C))
            self.aux_loss = torch.zeros((), device=x.device)
            return self.dropout(out.view(B, T, C))
        gates, expert = probs.topk(k, dim=-1)  # (N, k)
        # The N·k assignments in priority order, every token's 1st choice, then every 2nd, ...:
        # assignment i is token i % N. Sorted by expert (stable: each queue keeps that order).
        expert, gates = expert.t().reshape(-1), gates.t().reshape(-1)  # (kN,)
        order = torch.argsort(expert, stable=True)  # (kN,)
        # (E,) assignments per expert; not bincount, which waits for the GPU to size its output
        load = expert.new_zeros(E).index_add_(0, expert, torch.ones_like(expert))
        offsets = load.cumsum(0).to(torch.int32)  # expert e: sorted rows offsets[e-1]:offsets[e]
        gates = gates[order]
        if self.capacity_factor is not None:  # an expert serves the first `capacity` of its queue
            capacity = math.ceil(self.capacity_factor * N * k / E)
            place = torch.arange(N * k, device=x.device) - (offsets - load)[expert[order]]
            gates = gates * (place < capacity)  # dropped: computed, weighted 0 (shapes stay fixed)
        hidden = grouped_mm(xf.index_select(0, order % N), self.w1, offsets)  # (kN, H)
        if self.b1 is not None:
            hidden = hidden + self.b1[expert[order]]
        y = grouped_mm(self.activation(hidden), self.w2, offsets)  # (kN, C), sorted
        if self.b2 is not None:
            y = y + self.b2[expert[order]]
        y = y * gates.unsqueeze(-1)
        y = y.index_select(0, order.argsort())  # back to priority order: choice j of token n
        out = y.view(k, N, C).sum(0)  # (N, C): each token's k weighted expert outputs
        # Switch load balancing: f_e = fraction of assignments to e, P_e = mean probability of e.
        self.aux_loss = self.aux_loss_coef * E * (load.float() / (N * k) * probs.mean(0)).sum()
        return self.dropout(out.view(B, T, C))

    def num_active_params(self) -> int:
        experts_per_token = self.top_k * (self.capacity_factor or 1.0 if self.expert_choice else 1)
        per_expert = expert_params(self) // self.w1.shape[0]
        return self.router.numel() + int(experts_per_token * per_expert)


FFNS = {"dense": MLP, "mot": MixtureOfTokens, "moe": MixtureOfExperts,
        "mot_emit_softmax": MixtureOfTokensEmitSoftmax}


# ----------------------------------------------------------------------------- the model


class Block(nn.Module):
    def __init__(self, config: GPTConfig, ffn: str):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.ffn = FFNS[ffn].from_config(config)

    def forward(self, x: torch.Tensor, cache: Optional[dict] = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.ffn_in_groups(self.ln_2(x))

    def ffn_in_groups(self, x: torch.Tensor) -> torch.Tensor:
        """The FFN on x (B, T, C), whole groups of its group_size; in eval mode a partial group
        is padded with zero rows (mixed in, then cut), so any grouped FFN decodes one sequence."""
        B, G = x.size(0), self.ffn.group_size
        if B % G == 0:
            return self.ffn(x)
        if self.training:
            raise ValueError(f"{type(self.ffn).__name__}: batch size {B} is not divisible by "
                             f"group_size={G}: use a multiple of {G} or change group_size")
        return self.ffn(F.pad(x, (0, 0, 0, 0, 0, G - B % G)))[:B]  # (B + padding, T, C), cut


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, "dense" if i < config.n_dense_layers else config.ffn)
                             for i in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.aux_loss = torch.zeros(())  # the sum of the layers' aux_loss, last forward
        # nanoGPT's init, draw for draw, so that a dense GPT equals nanoGPT's for the same seed
        # (this redraws MLP's weights, from the same distributions as MLP.reset_parameters).
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=config.residual_init_std)

    def _init_weights(self, module: nn.Module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def ffns(self, kind: type) -> list:
        """The FFN layers that are instances of `kind` (a class or a tuple of classes)."""
        return [b.ffn for b in self.transformer.h if isinstance(b.ffn, kind)]

    def check_ids(self, idx: torch.Tensor) -> None:
        """A ValueError unless every id of idx is in [0, vocab_size): a wait for the GPU."""
        V = self.config.vocab_size
        if not ((idx >= 0) & (idx < V)).all():
            raise ValueError(f"token ids must be in [0, vocab_size={V}): got ids from "
                             f"{idx.min().item()} to {idx.max().item()}")

    def forward(self, idx: torch.Tensor, targets: Optional[torch.Tensor] = None,
                kv_cache: Optional[list] = None, ids_checked: bool = False):
        """Token ids idx (B, T) -> (logits, loss). With targets (B, T) (any layout; -1 = ignore):
        the logits of every position and the mean cross entropy; without: the last position's
        logits only. kv_cache (one dict per block, see generate) holds the keys and values of the
        positions before idx. ids_checked: the caller vouches for idx's ids (generate)."""
        B, T = idx.shape
        V = self.config.vocab_size
        past = kv_cache[0]["k"].size(2) if kv_cache and kv_cache[0] else 0  # cached positions
        if B == 0 or T == 0:
            raise ValueError(f"idx has shape {tuple(idx.shape)}: give at least one token")
        if past + T > self.config.block_size:
            raise ValueError(f"sequence length {past + T} exceeds "
                             f"block_size={self.config.block_size}")
        # checked where ids come from outside (eval mode), not from train.py's checked data or
        # generate's own samples: there the check would wait for the GPU at every step
        if not (self.training or ids_checked or torch.compiler.is_compiling()):
            self.check_ids(idx)
        pos = torch.arange(past, past + T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # B, T, C
        for block, cache in zip(self.transformer.h, kv_cache or [None] * len(self.transformer.h)):
            x = block(x, cache)
        x = self.transformer.ln_f(x)
        self.aux_loss = sum((b.ffn.aux_loss for b in self.transformer.h
                             if b.ffn.aux_loss is not None), torch.zeros((), device=idx.device))
        if targets is None:  # inference: only the last position is needed
            return self.lm_head(x[:, [-1], :]), None
        logits = self.lm_head(x)  # (B, T, vocab)
        loss = F.cross_entropy(logits.view(-1, V), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def get_num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def get_num_active_params(self) -> int:
        """Parameters whose multiply-adds one token pays for (non-embedding, lm_head counted)."""
        ffn_all = sum(p.numel() for b in self.transformer.h for p in b.ffn.parameters())
        ffn_active = sum(b.ffn.num_active_params() for b in self.transformer.h)
        return self.get_num_params() - ffn_all + ffn_active

    def flops_per_token(self, seq_len: Optional[int] = None) -> int:
        """Forward+backward FLOPs per token: active parameters and MoT's mixing, 6 FLOPs per
        multiply-add, plus attention (PaLM, appendix B)."""
        cfg, T = self.config, seq_len or self.config.block_size
        mixing = sum(b.ffn.mixing_macs_per_token() for b in self.transformer.h)
        return 6 * (self.get_num_active_params() + mixing) + 12 * cfg.n_layer * cfg.n_embd * T

    def estimate_mfu(self, fwdbwd_per_iter: int, dt: float, peak_flops: float) -> float:
        """Model FLOPs utilisation against `peak_flops` (devices.peak_flops: the GPU's)."""
        flops = self.flops_per_token() * self.config.block_size * fwdbwd_per_iter
        return flops / dt / peak_flops

    def configure_optimizers(self, weight_decay: float, learning_rate: float, betas,
                             device_type: str):
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        # one fused kernel for the whole update, where torch has one: at matched FLOPs MoT holds
        # many more parameters than dense, and the for-loop update is a large part of its step
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas,
                                 fused=device_type in ("cpu", "cuda"))

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: Optional[int] = None, kv_cache: bool = True,
                 companions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Sample max_new_tokens after idx (B, T); temperature 0 = greedy (argmax). Call
        model.eval() first. A grouped FFN (group_size > 1) groups the B sequences as in training;
        a partial group is padded with zero rows (Block.ffn_in_groups) unless companions fill it.

        companions (K, L), L >= T + max_new_tokens: K windows of training text that join the
        batch after idx, so that a few sequences are grouped with real text as in training, fed
        their own text position by position (teacher forcing), and not returned.

        kv_cache: keep each layer's keys and values, so that a step runs only the new token.
        Exact for every causal FFN, MoT included: MoT mixes only tokens at the same position,
        and a step feeds the whole batch's tokens of one position, the groups of a full forward.
        The cache speeds up generation within block_size only: beyond it the learned positions
        shift with the cropped window, so each step recomputes the window (as kv_cache=False).
        A step reads nothing back to the host: the ids are checked once, here."""
        B, T = idx.shape
        if temperature < 0:
            raise ValueError(f"temperature={temperature}: use 0 for greedy decoding or > 0")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k={top_k}: keep at least 1 token, or None for all")
        if kv_cache and not all(b.ffn.causal for b in self.transformer.h):
            raise ValueError("this model's MoE layers let tokens of other positions compete "
                             "(expert choice or a capacity factor): use kv_cache=False")
        self.check_ids(idx)
        if companions is not None:
            if companions.dim() != 2 or companions.size(1) < T + max_new_tokens:
                raise ValueError(f"companions must be (K, L) with L >= {T + max_new_tokens} "
                                 f"(prompt + new tokens); got {tuple(companions.shape)}")
            companions = companions.to(idx.device)  # once, not at every step
            self.check_ids(companions)  # whole: the steps feed its later tokens unchecked
            idx = torch.cat([idx, companions[:, :T]])  # (B + K, T)
        cache = [{} for _ in self.transformer.h] if kv_cache else None
        new = idx  # the tokens the next forward must feed
        for _ in range(max_new_tokens):
            if cache is not None and idx.size(1) <= self.config.block_size:
                logits, _ = self(new, kv_cache=cache, ids_checked=True)
            else:
                logits, _ = self(idx[:, -self.config.block_size:], ids_checked=True)
            logits = logits[:, -1, :]
            if temperature == 0:
                idx_next = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits.masked_fill_(logits < v[:, [-1]], -float("inf"))
                idx_next = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
            if companions is not None:  # teacher forcing: a companion's next token is its own
                idx_next[B:, 0] = companions[:, idx.size(1)]
            idx, new = torch.cat((idx, idx_next), dim=1), idx_next
        return idx[:B]
