"""
Speed and memory of the dense, MoT and MoE feed-forward layers at matched FLOPs, of the whole
training step of a model with each, and of sampling.

    python bench.py             # CPU, float32, the layer grid (~2 minutes on 2 cores)
    python bench.py --device=cuda --dtype=bfloat16 --compile
    python bench.py --step      # the training step at the CPU and GPU recipes' shapes, per FFN
    python bench.py --sampling  # generate() with and without the KV cache (~10 minutes on 2 cores)

Each variant: warm-up, then the median of --reps timed forward+backward passes. FLOPs count the
active experts only (E/G expert FFNs per token for MoT, k for MoE) plus MoT's mixing (controller,
merge, emit). Memory: peak CUDA memory on a GPU; on a CPU the bytes of the activations autograd
saves for the backward pass (counted exactly with saved-tensor hooks).
"""

import argparse
import statistics
import time
from contextlib import nullcontext

import torch

from mot import GPT, MLP, GPTConfig, MixtureOfExperts, MixtureOfTokens, experts


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(step, device: str, warmup: int, reps: int):
    """Median seconds of step(), and the peak memory (bytes) of one step."""
    for _ in range(warmup):
        step()
    saved = {}  # storage address -> bytes: views of one tensor count once

    def pack(t: torch.Tensor):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        step()
        memory = torch.cuda.max_memory_allocated()
    else:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            step()
        memory = sum(saved.values())
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
    """The FLOP-matched (name, layer) variants of one grid point: MoT, and MoE top-1 with the
    same E (once per E: MoE does not depend on G)."""
    yield f"mot E={E} G={G}", MixtureOfTokens(C, n_experts=E, group_size=G)
    if G == min(args.G):
        yield f"moe top-1 E={E}", MixtureOfExperts(C, n_experts=E, top_k=1)


def layer_row(args, name: str, layer: torch.nn.Module, x: torch.Tensor, autocast):
    def step():
        layer.zero_grad(set_to_none=True)  # as in training: gradients are new tensors every step
        with autocast:
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


def main(args) -> None:
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    autocast = (nullcontext() if dtype == torch.float32
                else torch.autocast(args.device.split(":")[0], dtype=dtype))
    B, T = args.batch_size, args.seq_len
    print(f"device {args.device}, dtype {args.dtype}, compile {args.compile}, "
          f"{torch.get_num_threads()} threads, B={B} T={T}, median of {args.reps}")
    for C in args.C:
        x = torch.randn(B, T, C, device=args.device, requires_grad=True)
        dense = layer_row(args, "dense", MLP(C).to(args.device), x, autocast)
        rows = [dense]
        for E in args.E:
            for G in args.G:
                for name, layer in ffn_layers(args, C, E, G):
                    rows.append(layer_row(args, name, layer.to(args.device), x, autocast))
                    if isinstance(layer, MixtureOfTokens) and E == 32:
                        rows.append(layer_row(args, "  its experts only", ExpertsOnly(layer, B * T),
                                              x, autocast))
        print_table(args, f"FFN layer forward+backward, C={C} (FLOP-matched to dense 4C)",
                    rows, dense)



def training_step(model: GPT, optimizer, idx: torch.Tensor, autocast, device: str):
    """One step as train.py takes it (forward, backward, clipping, AdamW, zero_grad), timed:
    (forward+backward seconds, optimizer seconds)."""
    synchronize(device)
    t0 = time.perf_counter()
    with autocast:
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
    dtype = getattr(torch, args.dtype)
    autocast = (nullcontext() if dtype == torch.float32
                else torch.autocast(args.device.split(":")[0], dtype=dtype))
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
                training_step(runs, optimizer, idx, autocast, args.device)
            models[name] = (model, runs, optimizer, idx, [])
        for _ in range(args.rounds):
            for model, runs, optimizer, idx, times in models.values():
                times += [training_step(runs, optimizer, idx, autocast, args.device)
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


parser = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--device", default="cpu")
parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
parser.add_argument("--compile", action="store_true", help="torch.compile each timed step")
parser.add_argument("--batch_size", type=int, default=64)
parser.add_argument("--seq_len", type=int, default=128)
parser.add_argument("--C", type=int, nargs="+", default=[128, 256, 512])
parser.add_argument("--E", type=int, nargs="+", default=[8, 32, 128])
parser.add_argument("--G", type=int, nargs="+", default=[8, 32])
parser.add_argument("--warmup", type=int, default=2)
parser.add_argument("--reps", type=int, default=5)
parser.add_argument("--sampling", action="store_true",
                    help="time GPT.generate with and without the KV cache instead")
parser.add_argument("--step", action="store_true",
                    help="time the whole training step of each FFN kind instead")
parser.add_argument("--rounds", type=int, default=7, help="--step: interleaved rounds")
parser.add_argument("--shape", choices=["cpu", "gpu", "both"], default="both",
                    help="--step: the CPU recipe's model shape, the GPU recipe's, or both")
parser.add_argument("--tiny", action="store_true", help="tiny sizes, to check that the script runs")

if __name__ == "__main__":
    args = parser.parse_args()
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
        args.C, args.E, args.G = [16], [4], [2]
        args.batch_size, args.seq_len, args.warmup, args.reps, args.rounds = 4, 8, 1, 1, 2
        args.sampling_model = dict(n_layer=1, n_head=2, n_embd=16, block_size=8)
        args.sampling_ffns = dict(dense={}, mot=dict(n_experts=4, group_size=2),
                                  moe=dict(n_experts=4, moe_top_k=1))
        args.step_shapes = [("tiny", args.sampling_model, 4)]
        args.step_ffns = {"dense": {}, "mot E=4 G=2": dict(ffn="mot", n_experts=4, group_size=2),
                          "moe top-1 E=4": dict(ffn="moe", n_experts=4, moe_top_k=1)}
    sampling(args) if args.sampling else step(args) if args.step else main(args)
