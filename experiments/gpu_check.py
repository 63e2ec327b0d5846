"""
Everything a borrowed GPU can tell us, in one command of at most 8 minutes that never stops
halfway: each section runs in its own process under its own time limit, and a section that
fails, crashes or runs out of time is recorded and the next one runs.

    python experiments/gpu_check.py                          # on the GPU
    python experiments/gpu_check.py --device=cpu --tiny      # the same sections, tiny, on a CPU
    bash experiments/gpu_check.sh [options]                  # the same; PYTHON=... picks python

options: --device=cpu|cuda[:N] (default: cuda; without a GPU, cpu and --tiny), --tiny (tiny
models, few steps, half the time limits), --out=FILE (default gpu_check.jsonl),
--sections=NAME,NAME (only those).
Each section writes one JSON line to --out: {"section", "status": "ok" | "failed" | "timeout",
"seconds", "limit_s", "figures", and for the others "error" (the error's last line) and
"stderr_tail"}; a markdown summary follows on stdout. Exit code 0 when every section is ok.
Needs torch and numpy only: no data, no network, no pytest. MOT_GPU_CHECK_FAIL=<section> makes
that section raise (the test of this script).

The sections, cheapest and most telling first (SECTIONS below):
  environment  torch, the GPU, what devices.py and moe_kernels.py make of it (native dtype, peak,
               grouped_mm's paths)
  grouped_mm   MoE's grouped matmul in bf16/fp16/fp32 against float64, outputs and gradients;
               whether it waits for the GPU, against moe_kernels.grouped_mm_syncs's prediction
  layers       MoT and MoE layers on the device against reference.py's loops
  moe_memory   one MoE layer of the GPU recipe (64x256 tokens), forward+backward, fp16 and bf16
  train_step   a training step per FFN kind, native dtype and fp16 + GradScaler, in sync debug
               mode "error": a wait for the GPU that moe_kernels.py does not predict fails
  kv_cache     greedy decoding with the KV cache equals recomputation, native dtype
  compile      torch.compile: graph breaks, unique graphs, the loss against eager
  recipe       ms/step and peak memory of the GPU shakespeare recipe, dense, MoT, MoE (eager)
  gpt2         one micro-batch step of config/train_gpt2.py's MoT and MoE: peak memory and ms
"""

import copy
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager, nullcontext
from types import SimpleNamespace
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402

import bookkeeping  # noqa: E402
import devices  # noqa: E402
import moe_kernels  # noqa: E402
import reference  # noqa: E402
import train  # noqa: E402
from mot import GPT, GPTConfig, MixtureOfExperts, MixtureOfTokens  # noqa: E402

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# max |error| / max |float64 reference| allowed in each dtype (16-bit: a few roundings)
TOLERANCE = {"bfloat16": 2e-2, "float16": 3e-3, "float32": 1e-4}
KINDS = {"dense": {}, "mot": dict(n_experts=8, group_size=4), "moe": dict(n_experts=4, moe_top_k=2)}
# the recipes' config files (train.py reads them), and the tiny stand-in --tiny puts on top
SHAKESPEARE = {"dense": ["train_shakespeare_char.py"],
               "mot": ["train_shakespeare_char.py", "train_shakespeare_char_mot.py"],
               "moe": ["train_shakespeare_char.py", "train_shakespeare_char_moe.py"]}
GPT2 = {"mot": ["train_gpt2.py", "train_gpt2_mot.py"],
        "moe": ["train_gpt2.py", "train_gpt2_moe.py"]}
TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=8, n_experts=8,
            group_size=4)


# ----------------------------------------------------------------------------- helpers


class Report:
    """What a section's process hands back: its figures, written to the result file at every
    change (a section that dies or runs out of time still reports what it measured), and the
    problems of its cases, which fail the section together at the end."""

    def __init__(self, path: str):
        self.path, self.figures, self.problems = path, {}, []

    def __setitem__(self, key: str, value) -> None:
        self.figures[key] = value
        self.write()

    def write(self, error: Optional[str] = None) -> None:
        with open(self.path + ".tmp", "w") as f:
            json.dump(dict(figures=jsonable(self.figures), error=error), f)
        os.replace(self.path + ".tmp", self.path)  # never half a file

    def check(self, ok: bool, problem: str) -> None:
        if not ok:
            self.problems.append(problem)

    @contextmanager
    def case(self, name: str):
        """One case of a section: an exception (an out-of-memory, say) becomes a problem, and
        the next case runs."""
        try:
            yield
        except Exception as e:
            traceback.print_exc()
            self.problems.append(f"{name}: {last_line(e)}")


def jsonable(value):
    """value with floats to 5 significant digits, non-finite ones as strings (strict JSON)."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float):
        return float(f"{value:.5g}") if math.isfinite(value) else str(value)
    return value


def last_line(e: BaseException) -> str:
    return "".join(traceback.format_exception_only(e)).strip().splitlines()[-1]


def autocast(device: torch.device, dtype: str):
    return (nullcontext() if dtype == "float32"
            else torch.autocast(device.type, dtype=DTYPES[dtype]))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rel_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    """max |x - ref| / max |ref|, ref a float64 tensor on the CPU."""
    return ((x.detach().cpu().double() - ref).abs().max() / ref.abs().max()).item()


def sync_site(run, device: torch.device) -> Optional[str]:
    """Runs run() with torch's sync debug mode "error" (on CUDA): None if nothing waited for the
    GPU, else where the first wait was called (the innermost frame in this repository's files,
    e.g. "moe_kernels.py:75"). A copy to the GPU waits too: run() must make none."""
    if device.type != "cuda":  # a CPU has no GPU to wait for
        run()
        return None
    synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        run()
    except RuntimeError as e:
        if "synchronizing CUDA operation" not in str(e):
            raise
        frame = [f for f in traceback.extract_tb(e.__traceback__)
                 if f.filename.startswith(ROOT)][-1]
        return f"{os.path.relpath(frame.filename, ROOT)}:{frame.lineno}"
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return None


def memory_key(device: torch.device) -> str:
    return "peak_mb" if device.type == "cuda" else "saved_mb"


def memory_mb(run, device: torch.device) -> float:
    """Runs run(); on CUDA its peak allocated MB (everything allocated, weights included), on a
    CPU the MB of the tensors autograd saves for the backward pass (each storage once): the
    figure memory_key names."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        run()
        return torch.cuda.max_memory_allocated(device) / 2**20
    saved = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(saved.values()) / 2**20


def small_gpt(kind: str, device: torch.device) -> GPT:
    """A 2-layer GPT of each FFN kind, the same on every device. MoE's widths 64 and 128 are
    16-byte multiples in every dtype: its experts run torch's grouped_mm."""
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=32, vocab_size=64, n_layer=2, n_head=2, n_embd=64, ffn=kind,
                         **KINDS[kind])).to(device)


def recipe(files: list, vocab_size: int, tiny: bool):
    """The GPTConfig and train.py settings of these config files; with tiny, the tiny stand-in
    (the dense first half of a GPT-2 recipe stays: one of two blocks)."""
    settings, _ = bookkeeping.configure([os.path.join(ROOT, "config", f) for f in files],
                                        train.DEFAULTS)
    if tiny:
        settings.update(TINY, n_dense_layers=min(settings["n_dense_layers"], 1))
    return GPTConfig(**{k: settings[k] for k in bookkeeping.MODEL_FIELDS},
                     vocab_size=vocab_size), settings


def moe_widths(config: GPTConfig) -> tuple:
    """(n_embd, expert width) of a MoE config: the k and n of its first grouped matmul."""
    return config.n_embd, config.expert_size or MixtureOfExperts.flop_matched_expert_size(
        config.n_embd, config.n_experts, config.moe_top_k)


def predicts_sync(device: torch.device, dtype: str, C: int, H: int) -> bool:
    """moe_kernels.grouped_mm_syncs for either of a MoE layer's products, (C -> H) or (H -> C)."""
    return any(moe_kernels.grouped_mm_syncs(device, DTYPES[dtype], k, n)
               for k, n in ((C, H), (H, C)))


def training_step(model: GPT, optimizer, scaler, idx: torch.Tensor, dtype: str, grad_clip: float):
    """train.py's step on one micro-batch: autocast forward, scaled backward, optimizer_step."""
    with autocast(idx.device, dtype):
        _, loss = model(idx[:, :-1], idx[:, 1:])
    scaler.scale(loss + model.aux_loss).backward()
    train.optimizer_step(model, optimizer, scaler, grad_clip)
    return loss


def timed_steps(config: GPTConfig, settings: dict, device: torch.device, warmup: int,
                steps: int) -> dict:
    """A model of this config trained on random ids as train.py does (native dtype, the
    optimizer of GPT.configure_optimizers, TF32): the peak memory of the warm-up steps (the
    first allocates the optimizer's state), then the ms of a step over `steps` (eager)."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    dtype = devices.native_dtype(device)
    with device:  # drawn on the device: GPT-2 MoT's billion weights take a while on a CPU
        model = GPT(config)
    optimizer = model.configure_optimizers(settings["weight_decay"], settings["learning_rate"],
                                           (settings["beta1"], settings["beta2"]), device.type)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == "float16")
    B, T = settings["batch_size"], config.block_size
    idx = torch.randint(config.vocab_size, (B, T + 1), device=device)

    def run(n: int):
        for _ in range(n):
            training_step(model, optimizer, scaler, idx, dtype, settings["grad_clip"])

    figures = {memory_key(device): memory_mb(lambda: run(warmup), device)}
    synchronize(device)
    t0 = time.perf_counter()
    run(steps)
    synchronize(device)
    dt = (time.perf_counter() - t0) / steps
    figures.update(ms=dt * 1e3, tokens_per_s=B * T / dt, batch=[B, T], dtype=dtype,
                   params_m=model.get_num_params() / 1e6)
    peak = devices.peak_flops(device, dtype)
    if peak:
        figures["mfu"] = model.estimate_mfu(B, dt, peak)
    return figures


# ----------------------------------------------------------------------------- the sections


def check_environment(args, report: Report) -> None:
    device = args.device
    cuda = device.type == "cuda"
    report["torch"] = torch.__version__
    report["cuda"] = torch.version.cuda
    report["gpu"] = torch.cuda.get_device_name(device) if cuda else None
    report["capability"] = list(torch.cuda.get_device_capability(device)) if cuda else None
    report["memory_gb"] = (torch.cuda.get_device_properties(device).total_memory / 2**30
                           if cuda else None)
    native = devices.native_dtype(device)
    report["native_dtype"], report["bf16_is_native"] = native, devices.bf16_is_native(device)
    peaks = {dtype: devices.peak_flops(device, dtype) for dtype in ("bfloat16", "float16")}
    report["peak_tflops"] = {dtype: peak and peak / 1e12 for dtype, peak in peaks.items()}
    C, H = moe_widths(recipe(SHAKESPEARE["moe"], 65, args.tiny)[0])
    report["grouped_mm"] = {  # at the GPU recipe's widths: the two products of a MoE layer
        f"{dtype} {k}x{n}": dict(runs=moe_kernels.runs_grouped_mm(device, DTYPES[dtype], k, n),
                                 syncs=moe_kernels.grouped_mm_syncs(device, DTYPES[dtype], k, n))
        for dtype in DTYPES for k, n in ((C, H), (H, C))}
    report["headline"] = (f"torch {torch.__version__}, {report.figures['gpu'] or 'cpu'}, "
                          f"native {native}")


def check_grouped_mm(args, report: Report) -> None:
    """Uneven groups (one empty) at the recipe's widths; inputs drawn in the dtype, so the
    float64 reference on the CPU sees the same numbers."""
    device = args.device
    K, N = moe_widths(recipe(SHAKESPEARE["moe"], 65, args.tiny)[0])
    M = 64 if args.tiny else 2048
    sizes = [M // 4, 0, M // 8, M // 8, M // 4, M // 16, M // 16, M // 8]
    offsets = torch.tensor(sizes).cumsum(0).to(torch.int32)
    headline = []
    for dtype in DTYPES:
        with report.case(dtype):
            torch.manual_seed(0)
            a = torch.randn(M, K).to(DTYPES[dtype])
            b = (torch.randn(len(sizes), K, N) / K ** 0.5).to(DTYPES[dtype])
            grad = torch.randn(M, N).to(DTYPES[dtype])
            a64, b64 = (t.double().requires_grad_() for t in (a, b))
            ends = offsets.tolist()
            ref = torch.cat([a64[start:end] @ b64[g]
                             for g, (start, end) in enumerate(zip([0] + ends[:-1], ends))])
            ref.backward(grad.double())
            a, b = (t.to(device).requires_grad_() for t in (a, b))
            offsets_on, grad_on = offsets.to(device), grad.to(device)

            def run():
                a.grad = b.grad = None
                moe_kernels.grouped_mm(a, b, offsets_on).backward(grad_on)

            out = moe_kernels.grouped_mm(a, b, offsets_on)
            out.backward(grad_on)
            errors = dict(out=rel_error(out, ref.detach()), grad_a=rel_error(a.grad, a64.grad),
                          grad_b=rel_error(b.grad, b64.grad))
            site = sync_site(run, device)
            predicted = predicts_sync(device, dtype, K, N)
            matches = (site is not None) == predicted
            report[dtype] = dict(errors=errors, tolerance=TOLERANCE[dtype], synced=site is not None,
                                 sync_at=site, predicted_sync=predicted, matches_prediction=matches)
            report.check(max(errors.values()) <= TOLERANCE[dtype],
                         f"{dtype}: errors {errors} over {TOLERANCE[dtype]}")
            report.check(matches,
                         f"{dtype}: synced at {site}" if site else
                         f"{dtype}: moe_kernels.grouped_mm_syncs predicts a sync, none happened")
            headline.append(f"{dtype} err {max(errors.values()):.1e}" + (" syncs" if site else ""))
    report["headline"] = ", ".join(headline)


def check_layers(args, report: Report) -> None:
    """The layers in float32 and the native dtype against the loops in float64 on the CPU, which
    run on the layer's weights and input rounded to that dtype."""
    device, native = args.device, devices.native_dtype(args.device)
    torch.manual_seed(0)
    x = torch.randn(8, 5, 64)
    # MoE's top-k is discontinuous: router logits that are a permutation of 0..E-1 per token
    # route alike in every dtype (a rounding tie would swap experts)
    x_moe = torch.randn(4, 8, 64)
    x_moe[..., :4] = torch.rand(4, 8, 4).argsort(-1).float()
    cases = {"mot": (MixtureOfTokens(64, n_experts=8, group_size=4).eval(), x, None)}
    for capacity_factor in (None, 1.0):  # 32 tokens, top-2 of 4 experts: capacity 16 or none
        layer = MixtureOfExperts(64, n_experts=4, top_k=2, capacity_factor=capacity_factor)
        with torch.no_grad():
            layer.router.zero_()[:4] = torch.eye(4)
        name = "moe" + (f" capacity {capacity_factor}" if capacity_factor else "")
        cases[name] = (layer, x_moe, capacity_factor and 16)
    headline = []
    for dtype in dict.fromkeys(["float32", native]):
        for name, (layer, inputs, capacity) in cases.items():
            with report.case(f"{name} {dtype}"), torch.no_grad():
                loop = copy.deepcopy(layer).to(DTYPES[dtype]).double()
                rounded = inputs.to(DTYPES[dtype])
                if name == "mot":
                    expected, _ = reference.loop_mot(loop, rounded.double(),
                                                     loop.temperature.item())
                else:
                    expected, _ = reference.loop_moe(loop, rounded.double(), capacity)
                out = copy.deepcopy(layer).to(device, DTYPES[dtype])(rounded.to(device))
                report[f"{name} {dtype}"] = error = rel_error(out, expected)
                report.check(error <= TOLERANCE[dtype], f"{name} {dtype}: error {error:.2e}")
                headline.append(f"{name} {dtype} {error:.1e}")
    report["headline"] = ", ".join(headline)


def check_moe_memory(args, report: Report) -> None:
    device = args.device
    config, settings = recipe(SHAKESPEARE["moe"], 65, args.tiny)
    torch.manual_seed(0)
    layer = MixtureOfExperts.from_config(config).to(device)
    x = torch.randn(settings["batch_size"], config.block_size, config.n_embd, device=device,
                    requires_grad=True)
    report["tokens"], report["widths"] = x.shape[0] * x.shape[1], list(moe_widths(config))
    headline = []
    for dtype in ("float16", "bfloat16"):
        with report.case(dtype):
            def run():
                layer.zero_grad(set_to_none=True)
                x.grad = None
                with autocast(device, dtype):
                    out = layer(x)
                out.float().square().mean().backward()
                synchronize(device)

            report[dtype] = {memory_key(device): memory_mb(run, device)}
            headline.append(f"{dtype} {report.figures[dtype][memory_key(device)]:,.1f} MB")
    report["headline"] = ", ".join(headline)


def check_train_step(args, report: Report) -> None:
    """Two steps per FFN kind and dtype; the second in sync debug mode "error". A sync is
    expected only where moe_kernels.grouped_mm_syncs predicts one for MoE, and only in
    moe_kernels.py."""
    device, native = args.device, devices.native_dtype(args.device)
    synced = []
    for kind in KINDS:
        for dtype in dict.fromkeys([native, "float16"]):
            with report.case(f"{kind} {dtype}"):
                model = small_gpt(kind, device)
                optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), device.type)
                scaler = torch.amp.GradScaler(device.type, enabled=dtype == "float16")
                idx = torch.randint(64, (8, 33), device=device)
                training_step(model, optimizer, scaler, idx, dtype, 1.0)  # allocates the state
                site = sync_site(lambda: training_step(model, optimizer, scaler, idx, dtype, 1.0),
                                 device)
                expected = kind == "moe" and predicts_sync(device, dtype, 64, 128)
                report[f"{kind} {dtype}"] = dict(synced=site is not None, sync_at=site,
                                                 expected_sync=expected)
                report.check(site is None or (expected and site.startswith("moe_kernels.py")),
                             f"{kind} {dtype}: waits for the GPU at {site}")
                if site:
                    synced.append(f"{kind} {dtype} at {site}" + (" (expected)" if expected else ""))
    report["headline"] = "synced: " + ", ".join(synced) if synced else "no step waits for the GPU"


def check_kv_cache(args, report: Report) -> None:
    """Greedy decoding, native dtype. Where the two differ, the recomputed logits of the two
    tokens at the first difference must be a rounding tie (16-bit: different kernels round
    differently)."""
    device, dtype = args.device, devices.native_dtype(args.device)
    headline = []
    for kind in KINDS:
        with report.case(kind), torch.no_grad():
            model = small_gpt(kind, device).to(DTYPES[dtype]).eval()
            prompt = torch.randint(64, (4, 3), device=device)
            cached = model.generate(prompt, 12, temperature=0, kv_cache=True)
            recomputed = model.generate(prompt, 12, temperature=0, kv_cache=False)
            differ = (cached != recomputed).any(0).nonzero().flatten().tolist()
            figures = dict(equal=not differ, dtype=dtype)
            if differ:
                t = differ[0]
                logits = model(cached[:, :t])[0][:, -1].float()
                rows = (cached[:, t] != recomputed[:, t]).nonzero().flatten()
                gap = (logits[rows, recomputed[rows, t]] - logits[rows, cached[rows, t]]).abs()
                gap = gap.max().item() / logits.abs().max().item()
                figures.update(first_difference=t, gap=gap, tie=gap <= TOLERANCE[dtype])
                report.check(figures["tie"], f"{kind}: decoding with the cache differs at token "
                                             f"{t} by a logit gap of {gap:.2e} (no rounding tie)")
            report[kind] = figures
            headline.append(f"{kind} " + ("equal" if not differ else
                                          f"{'tie' if figures['tie'] else 'differs'} at {t}"))
    report["headline"] = ", ".join(headline)


def check_compile(args, report: Report) -> None:
    """A forward+backward of each kind compiled, native dtype. --tiny compiles with aot_eager:
    the same graphs without inductor's code generation, minutes on a small CPU."""
    device, dtype = args.device, devices.native_dtype(args.device)
    backend = "aot_eager" if args.tiny else "inductor"
    report["backend"] = backend
    headline = []
    for kind in KINDS:
        with report.case(kind):
            torch._dynamo.reset()
            counters.clear()
            model = small_gpt(kind, device)
            idx = torch.randint(64, (8, 33), device=device)
            with torch.no_grad(), autocast(device, dtype):
                eager = model(idx[:, :-1], idx[:, 1:])[1].item()
            t0 = time.perf_counter()
            with autocast(device, dtype):
                loss = torch.compile(model, backend=backend)(idx[:, :-1], idx[:, 1:])[1]
            loss.backward()
            breaks = sum(counters["graph_break"].values())
            report[kind] = dict(graph_breaks=breaks, break_reasons=list(counters["graph_break"]),
                                unique_graphs=counters["stats"]["unique_graphs"], loss_eager=eager,
                                loss_compiled=loss.item(), seconds=time.perf_counter() - t0)
            report.check(breaks == 0, f"{kind}: {breaks} graph breaks")
            report.check(abs(loss.item() - eager) <= TOLERANCE[dtype] * abs(eager),
                         f"{kind}: compiled loss {loss.item():.5f}, eager {eager:.5f}")
            headline.append(f"{kind} {breaks} breaks")
    report["headline"] = ", ".join(headline)


def check_recipe(args, report: Report) -> None:
    headline = []
    for kind, files in SHAKESPEARE.items():
        with report.case(kind):
            config, settings = recipe(files, 65, args.tiny)
            report[kind] = timed_steps(config, settings, args.device, 2, 2 if args.tiny else 5)
            headline.append(f"{kind} {report.figures[kind]['ms']:.1f} ms")
    report["headline"] = ", ".join(headline)


def check_gpt2(args, report: Report) -> None:
    """One micro-batch of each recipe (MoT: 32 sequences of 1024): the peak memory of its first
    step (the optimizer's state allocated) and the ms of the second."""
    headline = []
    for kind, files in GPT2.items():
        with report.case(kind):
            config, settings = recipe(files, 50304, args.tiny)
            report[kind] = figures = timed_steps(config, settings, args.device, 1, 1)
            headline.append(f"{kind} {figures['ms']:.0f} ms "
                            f"{figures[memory_key(args.device)]:,.0f} MB")
    report["headline"] = ", ".join(headline)


# name: (function, time limit in seconds on one GPU, the process's start and CUDA's included).
# The limits sum to 455 s: the whole check stays under 8 minutes. --tiny halves them.
SECTIONS = {"environment": (check_environment, 30), "grouped_mm": (check_grouped_mm, 35),
            "layers": (check_layers, 30), "moe_memory": (check_moe_memory, 25),
            "train_step": (check_train_step, 45), "kv_cache": (check_kv_cache, 25),
            "compile": (check_compile, 130), "recipe": (check_recipe, 55),
            "gpt2": (check_gpt2, 80)}


# ----------------------------------------------------------------------------- the runner


def run_section(name: str, args, result: str) -> int:
    """In the section's own process: run it, write its figures and error to `result`."""
    report = Report(result)
    try:
        if os.environ.get("MOT_GPU_CHECK_FAIL") == name:
            raise RuntimeError(f"injected failure (MOT_GPU_CHECK_FAIL={name})")
        if args.device.type == "cuda":
            torch.cuda.set_device(args.device)
        elif args.tiny:  # tiny ops gain nothing from threads, and on a busy CPU the threads'
            torch.set_num_threads(1)  # waits for each other slow them a hundredfold
        SECTIONS[name][0](args, report)
        if report.problems:
            raise AssertionError("; ".join(report.problems))
    except Exception as e:
        traceback.print_exc()
        report.write(error=last_line(e))
        return 1
    report.write()
    return 0


def spawn(name: str, argv: list, limit: float, workdir: str) -> dict:
    """Runs one section in a new process (a session of its own, so that a timeout kills the
    compiler workers it started too); its JSON line."""
    result, log = (os.path.join(workdir, f"{name}.{ext}") for ext in ("json", "stderr"))
    t0 = time.perf_counter()
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), f"--section={name}",
                                 f"--result={result}", *argv], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=stderr, start_new_session=True)
        try:
            proc.wait(timeout=limit)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:  # a timeout, or Ctrl-C here: the section's processes go
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    try:
        with open(result) as f:
            reported = json.load(f)
    except (OSError, ValueError):
        reported = {}
    with open(log) as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    line = dict(section=name, status="ok", seconds=round(time.perf_counter() - t0, 1),
                limit_s=limit, figures=reported.get("figures", {}))
    if proc.returncode == 0:
        return line
    line["status"] = "timeout" if timed_out else "failed"
    line["error"] = (f"over its {limit:g} s limit" if timed_out else reported.get("error")
                     or (lines[-1] if lines else f"exit code {proc.returncode}"))
    line["stderr_tail"] = "\n".join(lines[-30:])
    return line


def summary(lines: list) -> str:
    rows = ["| section | status | seconds | result |", "|---|---|---:|---|"]
    for line in lines:
        result = line.get("error") or line["figures"].get("headline", "")
        rows.append(f"| {line['section']} | {line['status']} | {line['seconds']:.1f} | "
                    f"{result.replace('|', '/')} |")
    ok = sum(line["status"] == "ok" for line in lines)
    return "\n".join(rows) + f"\n\n{ok} of {len(lines)} sections ok"


def fail(message: str):
    raise SystemExit(f"error: {message}")


def parse(argv: list) -> SimpleNamespace:
    args = SimpleNamespace(device=None, tiny=False, out="gpu_check.jsonl", sections=None,
                           section=None, result=None)
    for arg in argv:
        key, sep, value = arg.partition("=")
        if arg == "--tiny":
            args.tiny = True
        elif sep and key[2:] in ("device", "out", "sections", "section", "result"):
            setattr(args, key[2:], value)
        else:
            fail(f"unknown option {arg}: see the top of experiments/gpu_check.py")
    if args.device is None:  # without a GPU, tiny: GPT-2's recipe would fill a CPU's memory
        args.device, args.tiny = ("cuda", args.tiny) if torch.cuda.is_available() else ("cpu", True)
    if not re.fullmatch(r"cpu|cuda(:\d+)?", args.device):
        fail(f"--device={args.device}: use cpu, cuda or cuda:N")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        fail(f"--device={args.device}, but torch sees no GPU: use --device=cpu --tiny")
    problem = devices.device_problem(args.device)  # cuda:N of a GPU this machine does not have
    if problem:
        fail(f"--device={args.device}: {problem}")
    args.device = torch.device(args.device)
    if bool(args.section) != bool(args.result):
        fail("--section and --result are the runner's, for a section's own process: run one "
             "section with --sections=NAME")
    args.sections = args.sections.split(",") if args.sections else list(SECTIONS)
    named = [(name, "--sections") for name in args.sections] + [
        (args.section, "--section"), (os.environ.get("MOT_GPU_CHECK_FAIL"), "MOT_GPU_CHECK_FAIL")]
    for name, source in named:
        if name and name not in SECTIONS:
            fail(f"{source}: no section {name!r}; the sections are {', '.join(SECTIONS)}")
    return args


def main(argv: list) -> int:
    args = parse(argv)
    if args.section:
        return run_section(args.section, args, args.result)
    passed = [f"--device={args.device}"] + (["--tiny"] if args.tiny else [])
    out = os.path.abspath(args.out)
    try:
        os.makedirs(os.path.dirname(out), exist_ok=True)
        open(out, "w").close()
    except OSError as e:
        fail(f"cannot write --out={args.out} ({e.strerror}): give a writable path")
    print(f"GPU check on {args.device}{' (tiny)' if args.tiny else ''}, writing {out}")
    lines = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.sections:
            limit = SECTIONS[name][1] / (2 if args.tiny else 1)
            lines.append(spawn(name, passed, limit, workdir))
            with open(out, "a") as f:  # line by line: an interrupted check keeps what it did
                f.write(json.dumps(lines[-1]) + "\n")
            print(f"{name}: {lines[-1]['status']} ({lines[-1]['seconds']:.1f} s)", flush=True)
    print("\n" + summary(lines))
    return 0 if all(line["status"] == "ok" for line in lines) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
