"""
Speed and memory of the dense, MoT and MoE feed-forward layers at matched expert FLOPs, of the whole
training step of a model with each, and of sampling.

    python bench.py             # CPU, float32, the layer grid (~2 minutes on 2 cores)
    python bench.py --device=cuda --compile  # in the GPU's native dtype (devices.native_dtype)
    python bench.py --step      # the training step at the CPU and GPU recipes' shapes, per FFN
    python bench.py --sampling  # generate() with and without the KV cache (~10 minutes on 2 cores)
    python bench.py --memory    # each recipe's peak GPU memory, estimated on a CPU (~30 s)

Each variant: warm-up, then the median of --reps timed forward+backward passes. FLOPs count the
active experts only (E/G expert FFNs per token for MoT, k for MoE) plus MoT's mixing (controller,
merge, emit). Memory: peak CUDA memory on a GPU; on a CPU the bytes of the activations autograd
saves for the backward pass (counted exactly with saved-tensor hooks). --memory: see memory().
"""

import argparse
import os
import statistics
import time
import weakref
from dataclasses import replace
from typing import Tuple

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import checkpoints
import configurator
import train
from configurator import fail
from convert import GPT2_NAMES
from devices import autocast, device_problem, native_dtype
from mot import GPT, MLP, GPTConfig, MixtureOfExperts, MixtureOfTokens, experts


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def storage_key(t: torch.Tensor) -> int:
    """The identity of t's storage, shared by its views (data_ptr is 0 for every fake tensor)."""
    return t.untyped_storage()._cdata


def saved_bytes(step, exclude: frozenset = frozenset()) -> int:
    """The bytes of the tensors autograd saves for the backward pass while step() runs, each
    storage once (views of one storage count once), but for the storages of `exclude` (their
    storage_keys: the parameters): the activation memory of a forward."""
    saved = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if storage_key(t) not in exclude:
            saved[storage_key(t)] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(saved.values())


def measure(step, device: str, warmup: int, reps: int):
    """Median seconds of step(), and the peak memory (bytes) of one step."""
    for _ in range(warmup):
        step()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        step()
        memory = torch.cuda.max_memory_allocated()
    else:
        memory = saved_bytes(step)
    times = []
    for _ in range(reps):
        synchronize(device)
        t0 = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), memory


class ExpertsOnly(torch.nn.Module):
    """A MoT layer's experts alone, on already-mixed tokens (E, B·T/G, C): the part of MoT's time
    that better mixing cannot remove. Its input x only sets the token count."""

    def __init__(self, mot: MixtureOfTokens, tokens: int):
        super().__init__()
        self.mot = mot
        E, C, _ = mot.w1.shape
        self.merged = torch.nn.Parameter(torch.randn(E, tokens // mot.group_size, C,
                                                     device=mot.w1.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return experts(self.merged, self.mot.w1, self.mot.w2)

    def num_active_params(self) -> int:
        return (self.mot.w1.numel() + self.mot.w2.numel()) // self.mot.group_size

    def mixing_macs_per_token(self) -> int:
        return 0


def ffn_layers(args, C: int, E: int, G: int):
    """The expert-FLOP-matched (name, layer) variants of one grid point: MoT, and MoE top-1 with the
    same E (once per E: MoE does not depend on G)."""
    yield f"mot E={E} G={G}", MixtureOfTokens(C, n_experts=E, group_size=G)
    if G == min(args.G):
        yield f"moe top-1 E={E}", MixtureOfExperts(C, n_experts=E, top_k=1)


def layer_row(args, name: str, layer: torch.nn.Module, x: torch.Tensor, context):
    def step():
        layer.zero_grad(set_to_none=True)  # as in training: gradients are new tensors every step
        with context:
            out = layer(x)
        out.float().square().mean().backward()

    seconds, memory = measure(torch.compile(step) if args.compile else step, args.device,
                              args.warmup, args.reps)
    tokens = x.shape[0] * x.shape[1]
    flops = 6 * (layer.num_active_params() + layer.mixing_macs_per_token()) * tokens
    return dict(name=name, ms=seconds * 1e3, tokens_per_s=tokens / seconds,
                gflops=flops / seconds / 1e9, memory_mb=memory / 2**20)


def print_table(args, title: str, rows: list, baseline: dict) -> None:
    memory = "peak MB" if args.device.startswith("cuda") else "saved MB"
    print(f"\n{title}")
    print(f"{'variant':<22} {'ms':>9} {'tokens/s':>12} {'GFLOP/s':>9} {memory:>9} {'x dense':>8}")
    for r in rows:
        print(f"{r['name']:<22} {r['ms']:9.2f} {r['tokens_per_s']:12,.0f} {r['gflops']:9.1f} "
              f"{r['memory_mb']:9.1f} {r['ms'] / baseline['ms']:8.2f}")


def sampling(args) -> None:
    """Tokens/s of GPT.generate (greedy) for args.sampling_model's shape with random weights:
    block_size tokens from a 1-token prompt, batch 1 and batch group_size, KV cache on and off."""
    print(f"device {args.device}, {torch.get_num_threads()} threads, {args.sampling_model}, "
          f"{args.sampling_model['block_size'] - 1} new tokens after a 1-token prompt, greedy")
    print(f"\n{'variant':<28} {'seconds':>9} {'tokens/s':>10} {'cache speed-up':>15}")
    G = args.sampling_ffns["mot"]["group_size"]
    for ffn, overrides in args.sampling_ffns.items():
        torch.manual_seed(0)
        config = GPTConfig(ffn=ffn, vocab_size=65, **args.sampling_model, **overrides)
        model = GPT(config).to(args.device).eval()
        model.generate(torch.zeros(1, 1, dtype=torch.long, device=args.device), 2)  # warm-up
        for B in (1, G):
            prompt = torch.zeros(B, 1, dtype=torch.long, device=args.device)
            seconds = {}
            for kv_cache in (False, True):
                synchronize(args.device)
                t0 = time.perf_counter()
                model.generate(prompt, config.block_size - 1, temperature=0, kv_cache=kv_cache)
                synchronize(args.device)
                seconds[kv_cache] = time.perf_counter() - t0
            for kv_cache in (False, True):
                name = f"{ffn} B={B} cache {'on' if kv_cache else 'off'}"
                speedup = f"{seconds[False] / seconds[True]:14.1f}x" if kv_cache else ""
                tokens_per_s = B * config.block_size / seconds[kv_cache]
                print(f"{name:<28} {seconds[kv_cache]:9.2f} {tokens_per_s:10,.0f} {speedup:>15}")


def layers(args) -> None:
    torch.manual_seed(0)
    context = autocast(args.device, args.dtype)
    B, T = args.batch_size, args.seq_len
    print(f"device {args.device}, dtype {args.dtype}, compile {args.compile}, "
          f"{torch.get_num_threads()} threads, B={B} T={T}, median of {args.reps}")
    for C in args.C:
        x = torch.randn(B, T, C, device=args.device, requires_grad=True)
        dense = layer_row(args, "dense", MLP(C).to(args.device), x, context)
        rows = [dense]
        for E in args.E:
            for G in args.G:
                for name, layer in ffn_layers(args, C, E, G):
                    rows.append(layer_row(args, name, layer.to(args.device), x, context))
                    if isinstance(layer, MixtureOfTokens) and E == 32:
                        rows.append(layer_row(args, "  its experts only", ExpertsOnly(layer, B * T),
                                              x, context))
        print_table(args, f"FFN layer forward+backward, C={C} (expert FLOPs matched to dense 4C)",
                    rows, dense)



def training_step(model: GPT, optimizer, idx: torch.Tensor, context, device: str):
    """One step as train.py takes it (forward, backward, clipping, AdamW, zero_grad), timed:
    (forward+backward seconds, optimizer seconds)."""
    synchronize(device)
    t0 = time.perf_counter()
    with context:
        _, loss = model(idx, idx)
    (loss + model.aux_loss).backward()
    synchronize(device)
    t1 = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    return t1 - t0, time.perf_counter() - t1


def step(args) -> None:
    """The whole training step of each FFN kind at the CPU recipe's and the GPU recipe's shape:
    interleaved rounds (every model a few steps, then the next), the median step of all rounds."""
    context = autocast(args.device, args.dtype)
    print(f"device {args.device}, dtype {args.dtype}, compile {args.compile}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; median step of "
          f"{args.rounds} interleaved rounds of {args.reps} steps")
    for shape_name, shape, batch_size in args.step_shapes:
        models = {}
        for name, overrides in args.step_ffns.items():
            torch.manual_seed(0)
            model = GPT(GPTConfig(vocab_size=65, **shape, **overrides)).to(args.device)
            optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99),
                                                   args.device.split(":")[0])
            idx = torch.randint(0, 65, (batch_size, shape["block_size"]), device=args.device)
            runs = torch.compile(model) if args.compile else model  # reads model's attributes
            for _ in range(args.warmup):
                training_step(runs, optimizer, idx, context, args.device)
            models[name] = (model, runs, optimizer, idx, [])
        for _ in range(args.rounds):
            for model, runs, optimizer, idx, times in models.values():
                times += [training_step(runs, optimizer, idx, context, args.device)
                          for _ in range(args.reps)]
        tokens = batch_size * shape["block_size"]
        print(f"\n{shape_name}: {shape}, batch {batch_size}")
        print(f"{'model':<16} {'ms/step':>9} {'x dense':>8} {'FLOPs x':>8} {'optimizer':>10} "
              f"{'tokens/s':>10} {'params':>9}")
        dense_ms = dense_flops = None
        for name, (model, _, _, _, times) in models.items():
            ms = statistics.median(sum(t) for t in times) * 1e3
            optimizer_ms = statistics.median(t[1] for t in times) * 1e3
            flops = model.flops_per_token()
            dense_ms, dense_flops = dense_ms or ms, dense_flops or flops
            print(f"{name:<16} {ms:9.1f} {ms / dense_ms:8.2f} {flops / dense_flops:8.2f} "
                  f"{optimizer_ms / ms:9.0%} {tokens / ms * 1e3:10,.0f} "
                  f"{model.get_num_params() / 1e6:8.2f}M")


# ----------------------------------------------------------------------------- GPU memory
# --memory: the peak memory of one GPU training each recipe, estimated on a CPU with fake tensors
# (FakeTensorMode: shapes, dtypes and storages, no data, no compute: the 1B parameters of the GPT-2
# MoT recipe take a second). A recipe: its name, train.py's arguments (config files and --key=value)
# and its dataset's vocab_size.
ROOT = os.path.dirname(os.path.abspath(__file__))
RECIPES = [
    ("shakespeare_char dense", ["train_shakespeare_char.py"], 65),
    ("shakespeare_char mot", ["train_shakespeare_char.py", "train_shakespeare_char_mot.py"], 65),
    ("shakespeare_char moe", ["train_shakespeare_char.py", "train_shakespeare_char_moe.py"], 65),
    ("gpt2 dense", ["train_gpt2.py"], 50304),
    ("gpt2 mot", ["train_gpt2.py", "train_gpt2_mot.py"], 50304),
    ("gpt2 mot G=16 (40 GB)", ["train_gpt2.py", "train_gpt2_mot.py", "--batch_size=16",
                               "--group_size=16", "--gradient_accumulation_steps=32"], 50304),
    ("gpt2 moe", ["train_gpt2.py", "train_gpt2_moe.py"], 50304),
    ("finetune gpt2-xl dense", ["finetune_shakespeare.py"], 50257),
    ("finetune gpt2 -> mot", ["finetune_shakespeare.py", "finetune_shakespeare_mot.py"], 50257),
]
# GPT-2's sizes, in the order of GPT2_NAMES (from_pretrained reads them from transformers' config)
GPT2_SIZES = dict(zip(GPT2_NAMES, [dict(n_layer=12, n_head=12, n_embd=768),
                                   dict(n_layer=24, n_head=16, n_embd=1024),
                                   dict(n_layer=36, n_head=20, n_embd=1280),
                                   dict(n_layer=48, n_head=25, n_embd=1600)], strict=True))
# The GPU classes: short name, name, GiB as nvidia-smi reports them, the dtype train.py trains in
# and MoE's grouped matmul, as devices.native_dtype and grouped_mm_syncs decide them at the GPU's
# compute capability (T4 7.5, RTX 4090 8.9, A100 8.0, H100 9.0)
SYNCS = "6 host syncs per MoE layer per micro-step"
GPUS = [("T4", "16 GB T4", 15.0, "float16", SYNCS),
        ("4090", "24 GB RTX 4090", 24.0, "bfloat16", SYNCS),
        ("A100-40", "40 GB A100", 40.0, "bfloat16", SYNCS),
        ("A100-80", "80 GB A100", 80.0, "bfloat16", SYNCS),
        ("H100", "80 GB H100", 79.6, "bfloat16", "sync-free")]
# A recipe fits a GPU when FRAGMENTATION x its estimated peak + CONTEXT_GIB <= the GPU's memory:
# the CUDA context and cuBLAS's workspaces, and the caching allocator's fragmentation
CONTEXT_GIB, FRAGMENTATION = 1.0, 1.1
GiB = 2 ** 30


def gpu_dropout(input: torch.Tensor, p: float = 0.5, training: bool = True,
                inplace: bool = False) -> torch.Tensor:
    """F.dropout as on a GPU: one fused kernel (native_dropout), which saves a bool mask; in place
    or not, the same memory (this GPT's dropouts are not in place)."""
    return torch.native_dropout(input, p, training)[0] if training and p > 0 else input


class AsOnGPU(TorchFunctionMode):
    """This GPT under CPU autocast, saving for the backward pass what it saves on a GPU where the
    two differ: CUDA's autocast computes softmax in float32 (PyTorch's autocast op reference), a
    CPU's in the 16-bit dtype (MoT's merge weights, MoE's router probabilities); a GPU's dropout
    is a fused kernel that saves a bool mask, a CPU's saves its float noise; a GPU's attention
    kernels (flash, memory-efficient) drop inside the kernel and keep only its random state, while
    a CPU's attention with dropout takes the math path, which saves (B, nh, T, T) weights."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.dropout:
            return gpu_dropout(*args, **kwargs)
        if func is F.scaled_dot_product_attention:
            kwargs = {**kwargs, "dropout_p": 0.0}
        elif (func in (torch.softmax, torch.Tensor.softmax, F.softmax)
              and torch.is_autocast_enabled("cpu")):
            kwargs = {"dtype": torch.float32, **kwargs}
        return func(*args, **kwargs)


class LiveBytes(TorchDispatchMode):
    """The bytes of the storages that ops make while it is on and that are alive at once: now, and
    the peak. A storage is new when no input of the op that returns it holds it (not a view, not
    in place); a storage's Python object lives as long as the storage, so a weakref.finalize on
    it sees it freed."""

    def __init__(self):
        super().__init__()
        self.sizes, self.now, self.peak = {}, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {storage_key(t) for t in tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and storage_key(t) not in inputs | self.sizes.keys():
                storage = t.untyped_storage()
                self.sizes[storage._cdata] = storage.nbytes()
                self.now += storage.nbytes()
                self.peak = max(self.peak, self.now)
                weakref.finalize(storage, self.free, storage._cdata)
        return out

    def free(self, key: int) -> None:
        self.now -= self.sizes.pop(key)


def recipe_config(argv: list, vocab_size: int) -> Tuple[GPTConfig, int]:
    """The config of the GPT that `python train.py config/<file> ... --key=value ...` trains
    (train.build_model's) and its micro-batch size."""
    argv = [a if a.startswith("--") else os.path.join(ROOT, "config", a) for a in argv]
    settings, _ = configurator.configure(train.TrainConfig, argv + ["--device=cpu"])
    size = GPT2_SIZES.get(settings.init_from)
    if size is None:
        config = GPTConfig(**{k: getattr(settings, k) for k in checkpoints.MODEL_FIELDS},
                           vocab_size=vocab_size)
        return config, settings.batch_size
    # GPT-2 as train.py loads it (block 1024, biases, GELU, no dropout), finetuned as it is, or
    # upcycled: this run's settings for the new layers, experts with GPT-2's biases
    config = GPTConfig(block_size=1024, vocab_size=vocab_size, dropout=0.0, bias=True,
                       activation="gelu", **size)
    if settings.upcycle:
        config = replace(config, ffn=settings.upcycle, expert_bias=True,
                         **{k: getattr(settings, k) for k in checkpoints.NEW_LAYER_FIELDS})
    return config, settings.batch_size


def training_memory(model: GPT, batch_size: int, dtype: torch.dtype) -> dict:
    """Bytes of one micro-step of train.py on a GPU, run on model's tensors (real ones, or fake
    ones under FakeTensorMode) under CPU autocast in `dtype` as AsOnGPU adjusts it, eager:
    params; states: the weights, their gradients and AdamW's two moments, all float32; saved: the
    tensors autograd saves for the backward pass (parameters excluded, views of one storage
    once); peak: states plus the most bytes the micro-step holds at once, saved tensors and
    transients together (the cross entropy's float32 gradients are the largest)."""
    T, V = model.config.block_size, model.config.vocab_size
    idx = torch.randint(V, (batch_size, T))
    params = frozenset(storage_key(p) for p in model.parameters())
    name = str(dtype).removeprefix("torch.")  # devices.autocast takes the name, as settings do

    def micro_step():
        with autocast("cpu", name), AsOnGPU():
            loss = model(idx, idx)[1]  # the logits dropped at once, as train.py drops them
        (loss + model.aux_loss).backward()

    micro_step()  # the gradients exist from here on, as in an accumulation's later micro-steps
    with LiveBytes() as live:
        saved = saved_bytes(micro_step, exclude=params)
    n = sum(p.numel() for p in model.parameters())
    return dict(params=n, states=16 * n, saved=saved, peak=16 * n + live.peak)


def memory() -> None:
    """Each recipe's estimated peak memory on one GPU at its micro-batch, in both 16-bit dtypes,
    and the GPU classes it fits (in the GPU's dtype, with the headroom of CONTEXT_GIB and
    FRAGMENTATION)."""
    print("Peak memory of one GPU training each recipe at its micro-batch, estimated on a CPU "
          "(fake tensors, eager autograd), GiB")
    print(f"{'recipe':<23} {'micro-batch':>11} {'params':>7} {'w+g+AdamW':>9} "
          f"{'act bf16':>8} {'act fp16':>8} {'peak bf16':>9} {'peak fp16':>9}  fits")
    for name, argv, vocab_size in RECIPES:
        config, batch_size = recipe_config(argv, vocab_size)
        with FakeTensorMode():
            model = GPT(config)
            est = {dtype: training_memory(model, batch_size, getattr(torch, dtype))
                   for dtype in ("bfloat16", "float16")}
        fits = [short for short, _, gib, dtype, _ in GPUS
                if FRAGMENTATION * est[dtype]["peak"] / GiB + CONTEXT_GIB <= gib]
        bf16, fp16 = est["bfloat16"], est["float16"]
        print(f"{name:<23} {batch_size:>5}x{config.block_size:<5} "
              f"{bf16['params'] / 1e9:6.3f}B {bf16['states'] / GiB:9.2f} "
              f"{bf16['saved'] / GiB:8.2f} {fp16['saved'] / GiB:8.2f} "
              f"{bf16['peak'] / GiB:9.2f} {fp16['peak'] / GiB:9.2f}  {' '.join(fits) or '-'}")
    print(f"\nA recipe fits when {FRAGMENTATION} x its peak + {CONTEXT_GIB} GiB (CUDA context, "
          f"workspaces) <= the GPU's memory:")
    for short, gpu, gib, dtype, grouped_mm in GPUS:
        limit = (gib - CONTEXT_GIB) / FRAGMENTATION
        print(f"{short:<8} {gpu:<15} {gib:5.1f} GiB  {dtype:<9} peak <= {limit:5.1f} GiB  "
              f"MoE: {grouped_mm}")


# --tiny: the flags it sets when they are not given, and tiny models for --step and --sampling
TINY = dict(C=[16], E=[4], G=[2], batch_size=4, seq_len=8, warmup=1, reps=1, rounds=2)


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                        help="default: the device's native dtype (devices.native_dtype)")
    parser.add_argument("--compile", action="store_true", help="torch.compile each timed step")
    parser.add_argument("--batch_size", type=int, default=64,
                        help="the layer grid's; a multiple of every --G")
    parser.add_argument("--seq_len", type=int, default=128, help="the layer grid's")
    parser.add_argument("--C", type=int, nargs="+", default=[128, 256, 512],
                        help="the layer grid's widths")
    parser.add_argument("--E", type=int, nargs="+", default=[8, 32, 128],
                        help="the layer grid's expert counts")
    parser.add_argument("--G", type=int, nargs="+", default=[8, 32],
                        help="the layer grid's MoT group sizes")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--sampling", action="store_true",
                      help="time GPT.generate with and without the KV cache instead")
    mode.add_argument("--step", action="store_true",
                      help="time the whole training step of each FFN kind instead")
    mode.add_argument("--memory", action="store_true",
                      help="estimate each recipe's peak GPU memory (both 16-bit dtypes) instead")
    parser.add_argument("--rounds", type=int, default=7, help="--step: interleaved rounds")
    parser.add_argument("--shape", choices=["cpu", "gpu", "both"], default="both",
                        help="--step: the CPU recipe's model shape, the GPU recipe's, or both")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny sizes, to check that the script runs: tiny models for --step "
                             "and --sampling, and those of TINY for the flags not given (--C 16 "
                             "--E 4 --G 2 --batch_size=4 --seq_len=8 --warmup=1 --reps=1 "
                             "--rounds=2)")
    parser.error = lambda message: fail(f"{message} (see --help)")
    args = parser.parse_args(argv)
    if args.tiny:  # the flags given win over TINY
        parser.set_defaults(**TINY)
        args = parser.parse_args(argv)
    for name in ("batch_size", "seq_len", "reps", "rounds", "C", "E", "G"):
        values = getattr(args, name)
        bad = [v for v in (values if isinstance(values, list) else [values]) if v < 1]
        if bad:
            fail(f"--{name}={bad[0]}: must be >= 1")
    if args.warmup < 0:
        fail(f"--warmup={args.warmup}: must be >= 0")
    for G in args.G:
        if args.batch_size % G:
            fail(f"--batch_size={args.batch_size} is not a multiple of --G {G}: MoT mixes the "
                 f"batch in groups of G; give a batch_size that every --G divides")
        for C in args.C:
            for E in args.E:
                if 4 * C * G % E:
                    fail(f"--C {C} --E {E} --G {G}: MoT's expert-FLOP-matched width 4·C·G/E = "
                         f"{4 * C * G}/{E} is not an integer; give an E that divides it")
    problem = device_problem(args.device)
    if problem:
        fail(f"--device={args.device}: {problem}")
    args.dtype = args.dtype or native_dtype(args.device)
    # sampling and --step: the GPU recipe's shape (config/train_shakespeare_char*.py); --step also
    # the CPU recipe's (config/train_shakespeare_char_cpu*.py), with a batch a CPU can time
    args.sampling_model = dict(n_layer=6, n_head=6, n_embd=384, block_size=256)
    args.sampling_ffns = dict(dense={}, mot=dict(n_experts=128, group_size=32),
                              moe=dict(n_experts=8, moe_top_k=1))
    args.step_shapes = [("CPU recipe", dict(n_layer=4, n_head=4, n_embd=128, block_size=64), 32),
                        ("GPU recipe", args.sampling_model, 64 if "cuda" in args.device else 32)]
    args.step_shapes = {"cpu": args.step_shapes[:1], "gpu": args.step_shapes[1:],
                        "both": args.step_shapes}[args.shape]
    args.step_ffns = {"dense": {}, "mot E=128 G=32": dict(ffn="mot", n_experts=128, group_size=32),
                      "mot E=32 G=8": dict(ffn="mot", n_experts=32, group_size=8),
                      "moe top-1 E=8": dict(ffn="moe", n_experts=8, moe_top_k=1)}
    if args.tiny:
        args.sampling_model = dict(n_layer=1, n_head=2, n_embd=16, block_size=8)
        args.sampling_ffns = dict(dense={}, mot=dict(n_experts=4, group_size=2),
                                  moe=dict(n_experts=4, moe_top_k=1))
        args.step_shapes = [("tiny", args.sampling_model, 4)]
        args.step_ffns = {"dense": {}, "mot E=4 G=2": dict(ffn="mot", n_experts=4, group_size=2),
                          "moe top-1 E=4": dict(ffn="moe", n_experts=4, moe_top_k=1)}
    return args


def main(argv=None) -> None:
    args = parse(argv)
    if args.memory:
        memory()
    else:
        sampling(args) if args.sampling else step(args) if args.step else layers(args)


if __name__ == "__main__":
    main()
