"""What only a GPU shows, and the learner's path on the device: the GPU check runs this file
after test_mot.py with --device=cuda (`bash experiments/gpu_check.sh`, docs/gpus.md). Tests
marked gpu need CUDA and are skipped on a CPU; the learner's path runs on any device (a tiny model
on a CPU). Figures (memory, ms per step) go to the check's JSON lines through record_property;
no time is asserted."""

import os
import signal
import subprocess
import sys
import time
import traceback
from typing import Optional

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import bench
import devices
import moe_kernels
import train
from conftest import ROOT, read_log
from mot import GPT, GPTConfig, MixtureOfExperts

gpu = pytest.mark.gpu
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# max |error| / max |float64 reference| in each dtype (test_mot.py's TOLERANCE)
TOLERANCE = {"bfloat16": 2e-2, "float16": 3e-3, "float32": 1e-4}
KINDS = {"dense": {}, "mot": dict(n_experts=8, group_size=4), "moe": dict(n_experts=4, moe_top_k=2)}
RECIPE = {name: (argv, vocab_size) for name, argv, vocab_size in bench.RECIPES}
GiB = bench.GiB


def gib(n_bytes: float) -> float:
    return round(n_bytes / GiB, 3)


def relative_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    reference = reference.detach().double().cpu()
    return float((x.detach().double().cpu() - reference).abs().max() / reference.abs().max())


def small_gpt(kind: str, device: torch.device) -> GPT:
    """A 2-layer GPT of each FFN kind, the same weights on every device; MoE's widths 64 and 128
    are 16-byte multiples in every dtype, so its experts run torch's grouped_mm."""
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=32, vocab_size=64, n_layer=2, n_head=2, n_embd=64, ffn=kind,
                         **KINDS[kind])).to(device)


def sync_site(run) -> Optional[str]:
    """Runs run() in CUDA's sync debug mode "error": None if nothing in it waited for the GPU,
    else where the first wait was called from (the innermost frame in the repository's code, as
    "moe_kernels.py:75", or "torch" when none is)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        run()
    except RuntimeError as e:
        if "synchroniz" not in str(e):
            raise
        frames = [f for f in traceback.extract_tb(e.__traceback__)  # not a venv in the repo
                  if f.filename.startswith(ROOT) and "site-packages" not in f.filename
                  and not f.filename.startswith(os.path.join(ROOT, "tests"))]
        return f"{os.path.relpath(frames[-1].filename, ROOT)}:{frames[-1].lineno}" if frames \
            else "torch"
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return None


def predicts_sync(device: torch.device, dtype: torch.dtype, k: int, n: int) -> bool:
    """moe_kernels.grouped_mm_syncs for either product of an expert, (k -> n) or (n -> k)."""
    return any(moe_kernels.grouped_mm_syncs(device, dtype, a, b) for a, b in ((k, n), (n, k)))


def training_step(model: GPT, optimizer, scaler, idx: torch.Tensor, dtype: str) -> None:
    """train.py's step on one micro-batch: autocast forward, scaled backward, optimizer_step."""
    with devices.autocast(idx.device, dtype):
        loss = model(idx[:, :-1], idx[:, 1:])[1]  # the logits dropped at once, as train.py does
    scaler.scale(loss + model.aux_loss).backward()
    train.optimizer_step(model, optimizer, scaler, 1.0)


def estimated_peak(argv: list, vocab_size: int, dtype: str) -> tuple:
    """(GPTConfig, micro-batch, peak bytes) of a recipe, as `bench.py --memory` estimates it."""
    config, batch_size = bench.recipe_config(argv, vocab_size)
    with FakeTensorMode():
        peak = bench.training_memory(GPT(config), batch_size, DTYPES[dtype])["peak"]
    return config, batch_size, peak


def device_memory(device: torch.device) -> int:
    """Bytes of memory the device has: the GPU's, or on a CPU the machine's."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def skip_unless_it_fits(name: str, peak: float, device: torch.device) -> None:
    """docs/gpus.md's rule: a recipe fits when FRAGMENTATION x its peak + CONTEXT_GIB (on a GPU)
    is at most the device's memory. One that does not is skipped, never failed."""
    memory, context = device_memory(device), bench.CONTEXT_GIB * GiB * (device.type == "cuda")
    if bench.FRAGMENTATION * peak + context > memory:
        pytest.skip(f"{name}: its estimated peak of {peak / GiB:.1f} GiB (bench.py --memory) "
                    f"with docs/gpus.md's headroom is over this {device.type} device's "
                    f"{memory / GiB:.1f} GiB")


# ----------------------------------------------------------------------------- the GPU itself


@gpu
def test_the_native_dtype_is_one_the_gpu_computes_in(device, record_property):
    """devices.native_dtype trains in bfloat16 where the GPU computes it natively (as torch says,
    emulation left out), else float16, and a product under its autocast comes out in it within
    its rounding. The GPU and what the code makes of it are the figures."""
    native = devices.native_dtype(device)
    assert devices.bf16_is_native(device) == torch.cuda.is_bf16_supported(
        including_emulation=False)
    assert native == ("bfloat16" if devices.bf16_is_native(device) else "float16")
    a, b = (torch.randn(256, 256, generator=torch.Generator().manual_seed(s)) for s in (0, 1))
    with devices.autocast(device, native):
        out = a.to(device) @ b.to(device)
    assert out.dtype == DTYPES[native]
    assert relative_error(out, a.double() @ b.double()) <= TOLERANCE[native]
    C, H = 384, 1536  # the shakespeare MoE recipe's expert: its two products run grouped_mm
    for name, value in dict(
            torch=torch.__version__, cuda=torch.version.cuda, gpu=torch.cuda.get_device_name(device),
            capability=torch.cuda.get_device_capability(device), native_dtype=native,
            memory_gib=gib(torch.cuda.get_device_properties(device).total_memory),
            peak_tflops=(devices.peak_flops(device, native) or 0) / 1e12 or None,
            grouped_mm_syncs={dtype: predicts_sync(device, DTYPES[dtype], C, H)
                              for dtype in DTYPES}).items():
        record_property(name, value)


@gpu
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_grouped_mm_waits_for_the_gpu_exactly_where_moe_kernels_says(dtype, device,
                                                                     record_property):
    """MoE's grouped matmul at the recipe's widths, forward and backward: it waits for the GPU
    (reads the expert offsets on the host) where moe_kernels.grouped_mm_syncs predicts it, and
    nowhere else. (test_mot.py checks its values on the device.)"""
    K, N, sizes = 384, 1536, [512, 0, 256, 256, 512, 128, 128, 256]
    offsets = torch.tensor(sizes).cumsum(0).to(device, torch.int32)
    a = torch.randn(sum(sizes), K, device=device, dtype=DTYPES[dtype], requires_grad=True)
    b = torch.randn(len(sizes), K, N, device=device, dtype=DTYPES[dtype], requires_grad=True)
    grad = torch.randn(sum(sizes), N, device=device, dtype=DTYPES[dtype])
    moe_kernels.grouped_mm(a, b, offsets).backward(grad)  # torch's first call: its set-up

    def run():
        a.grad = b.grad = None
        moe_kernels.grouped_mm(a, b, offsets).backward(grad)

    site, predicted = sync_site(run), predicts_sync(device, DTYPES[dtype], K, N)
    record_property("sync_at", site)
    record_property("predicted_sync", predicted)
    assert (site is not None) == predicted, site


@gpu
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_torchs_grouped_mm_gives_empty_experts_the_right_gradients(dtype, device,
                                                                  record_property):
    """torch's grouped_mm itself (moe_kernels' custom op, called where moe_kernels would loop:
    on 10.x, its fast kernel), experts 1 and 7 empty: its output and both gradients within the
    dtype's tolerance of a float64 loop on the CPU, and an empty expert's gradient exactly 0. A
    pass on compute capability 10.x is what moe_kernels.SYNC_FREE waits for."""
    if not moe_kernels.runs_grouped_mm(torch.device("cpu"), DTYPES[dtype], 64, 128):
        pytest.skip("this torch has no grouped_mm")
    K, N, sizes = 64, 128, [96, 0, 32, 64, 16, 16, 32, 0]
    torch.manual_seed(0)
    offsets = torch.tensor(sizes).cumsum(0).to(device, torch.int32)
    a = torch.randn(sum(sizes), K, dtype=torch.float64, requires_grad=True)
    b = torch.randn(len(sizes), K, N, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(sum(sizes), N, dtype=torch.float64)
    moe_kernels.grouped_mm(a, b, offsets.cpu()).backward(grad)  # float64: the loop
    got = [t.detach().to(device, DTYPES[dtype]).requires_grad_() for t in (a, b)]
    out = moe_kernels._grouped_mm(*got, offsets)
    out.backward(grad.to(device, DTYPES[dtype]))
    record_property("capability", torch.cuda.get_device_capability(device))
    record_property("fast_kernel", moe_kernels.fast_kernel(device, DTYPES[dtype]))
    assert relative_error(out, moe_kernels.grouped_mm(a, b, offsets.cpu())) <= TOLERANCE[dtype]
    assert relative_error(got[0].grad, a.grad) <= TOLERANCE[dtype]
    assert relative_error(got[1].grad, b.grad) <= TOLERANCE[dtype]
    assert not got[1].grad[[1, 7]].any()


@gpu
@pytest.mark.parametrize("dtype", ["native", "float16"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_a_training_step_waits_for_the_gpu_only_where_moe_kernels_says(kind, dtype, device,
                                                                      record_property):
    """train.py's step (autocast, GradScaler in float16, clipping, fused AdamW) of each FFN kind
    never waits for the GPU, but in MoE's grouped matmul (moe_kernels.py) where grouped_mm_syncs
    predicts it: a wait anywhere else would stall every step."""
    dtype = devices.native_dtype(device) if dtype == "native" else dtype
    model = small_gpt(kind, device)
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), device.type)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == "float16")
    idx = torch.randint(64, (8, 33), device=device)
    training_step(model, optimizer, scaler, idx, dtype)  # allocates the optimizer's state
    site = sync_site(lambda: training_step(model, optimizer, scaler, idx, dtype))
    expected = kind == "moe" and predicts_sync(device, DTYPES[dtype], 64, 128)
    record_property("sync_at", site)
    record_property("expected_sync", expected)
    assert (site is not None) == expected, site  # a predicted wait that is not: a stale rule
    assert site is None or site.startswith("moe_kernels.py"), site


@gpu
@pytest.mark.parametrize("kind", list(KINDS))
def test_each_ffn_compiles_whole_in_the_native_dtype(kind, device, record_property):
    """torch.compile (inductor, fullgraph: a graph break raises) of a GPT of each FFN kind under
    the native dtype's autocast: its loss within TOLERANCE of eager mode's, its backward runs,
    and every gradient is finite."""
    import torch._dynamo
    torch._dynamo.reset()
    native = devices.native_dtype(device)
    model = small_gpt(kind, device)
    idx = torch.randint(64, (8, 33), device=device)
    with torch.no_grad(), devices.autocast(device, native):
        eager = model(idx[:, :-1], idx[:, 1:])[1].item()
    t0 = time.perf_counter()
    with devices.autocast(device, native):
        loss = torch.compile(model, fullgraph=True)(idx[:, :-1], idx[:, 1:])[1]
    (loss + model.aux_loss).backward()
    record_property("compile_s", round(time.perf_counter() - t0, 1))
    assert abs(loss.item() - eager) <= TOLERANCE[native] * abs(eager)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# ----------------------------------------------------------------------------- memory


@gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_moe_layer_at_the_recipes_tokens_holds_memory_linear_in_them(dtype, device,
                                                                       record_property):
    """The shakespeare MoE recipe's layer (C = 384, 8 experts of width H = 1536, top-1) on its
    64 x 256 tokens, forward and backward: at most 32 bytes per token and unit of width C + H
    beyond the weights and input (about 1 GiB), where a (C, H) matrix per token, the gather a
    grouped matmul avoids, would be 19 GiB."""
    config, batch_size = bench.recipe_config(*RECIPE["shakespeare_char moe"])
    torch.manual_seed(0)
    layer = MixtureOfExperts.from_config(config).to(device)
    C, H = layer.w1.shape[1:]
    x = torch.randn(batch_size, config.block_size, C, device=device, requires_grad=True)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    with devices.autocast(device, dtype):
        out = layer(x)
    out.float().square().mean().backward()
    torch.cuda.synchronize(device)
    extra = torch.cuda.max_memory_allocated(device) - before
    tokens = x.shape[0] * x.shape[1]
    record_property("tokens", tokens)
    record_property("peak_mib", round(extra / 2 ** 20, 1))
    assert extra <= 32 * tokens * (C + H) + 4 * sum(p.numel() * 4 for p in layer.parameters())


@gpu
@pytest.mark.parametrize("name", ["shakespeare_char dense", "shakespeare_char mot",
                                  "shakespeare_char moe", "gpt2 mot", "gpt2 moe"])
def test_a_recipes_training_step_holds_what_bench_estimates(name, device, record_property):
    """One training step of the recipe at its micro-batch (eager, the native dtype, train.py's
    step, the optimizer's state already there): the GPU's reserved memory is within docs/gpus.md's
    rule for it (FRAGMENTATION x bench.py --memory's estimate, plus CONTEXT_GIB less the CUDA
    context's half of it), and its allocated peak is not under half the estimate (an estimate
    that far over would hide GPUs a recipe fits). A recipe that does not fit is skipped. The
    step's ms, tokens/s and MFU are figures."""
    native = devices.native_dtype(device)
    config, batch_size, estimate = estimated_peak(*RECIPE[name], native)
    skip_unless_it_fits(name, estimate, device)
    torch.cuda.empty_cache()  # what earlier tests cached is not this step's
    tf32, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, True
    with device:  # drawn on the GPU: GPT-2 MoT's billion weights take a while on a CPU
        model = GPT(config)
    optimizer = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), device.type)
    scaler = torch.amp.GradScaler(device.type, enabled=native == "float16")
    idx = torch.randint(config.vocab_size, (batch_size, config.block_size + 1), device=device)
    try:
        training_step(model, optimizer, scaler, idx, native)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        training_step(model, optimizer, scaler, idx, native)
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    allocated = torch.cuda.max_memory_allocated(device)
    reserved = torch.cuda.max_memory_reserved(device)
    peak = devices.peak_flops(device, native)
    for key, value in dict(estimate_gib=gib(estimate), allocated_gib=gib(allocated),
                           reserved_gib=gib(reserved), ms=round(seconds * 1e3, 1),
                           tokens_per_s=round(batch_size * config.block_size / seconds),
                           mfu=peak and round(model.estimate_mfu(batch_size, seconds, peak), 4),
                           dtype=native).items():
        record_property(key, value)
    del model, optimizer
    torch.cuda.empty_cache()
    assert reserved <= bench.FRAGMENTATION * estimate + bench.CONTEXT_GIB / 2 * GiB
    assert allocated >= estimate / 2


# ----------------------------------------------------------------------------- the learner's path

# config/train_shakespeare_char.py and its MoT overlay, the GPU recipe of the README, cut short:
# 4 iterations, an evaluation and a checkpoint every 2; on a CPU a tiny model of it, not compiled
RECIPE_FILES = ["config/train_shakespeare_char.py", "config/train_shakespeare_char_mot.py"]
SHORT = ["--max_iters=4", "--eval_interval=2", "--eval_iters=2", "--log_interval=1"]
TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=8",
        "--n_experts=8", "--group_size=4", "--compile=False"]
COMPILE_MIN_CPUS = 4  # fewer, and inductor's compile of the recipe takes longer than RUN_LIMIT_S
RUN_LIMIT_S = 240  # one train.py or sample.py run, a compile included


def run_script(args: list, limit: float = RUN_LIMIT_S) -> str:
    """python <script> args in the repository as a learner runs it, in its own session (a
    compile's worker processes go with it at the time limit); its stdout. Exit status 0."""
    process = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"python {' '.join(args[:1])} ran over its {limit} s limit (a compile "
                    f"included): {' '.join(args[1:])}")
    assert process.returncode == 0, f"python {' '.join(args)}\n{err[-3000:]}"
    return out


def test_the_learners_path_trains_resumes_and_samples(device, data_root, tmp_path,
                                                      record_property):
    """As a learner runs the GPU recipe (config/train_shakespeare_char.py + _mot.py), cut short,
    on the device: train.py in the device's native dtype (dtype auto), compiled where the recipe
    compiles (on a GPU with COMPILE_MIN_CPUS CPUs), 4 iterations with an evaluation and a
    checkpoint every 2; --init_from=resume on to 6, the log's earlier lines kept; sample.py from
    the checkpoint. On a CPU the same path with a tiny model, not compiled."""
    cuda = device.type == "cuda"
    args = [*RECIPE_FILES, f"--device={device}", f"--data_root={data_root}",
            f"--out_dir={tmp_path / 'out'}", *SHORT]
    recipe = [os.path.basename(f) for f in RECIPE_FILES] + ([] if cuda else TINY)
    _, _, peak = estimated_peak(recipe, 65, devices.native_dtype(device))
    skip_unless_it_fits(f"the shakespeare MoT recipe{'' if cuda else ', tiny'}", peak, device)
    if cuda:
        if (os.cpu_count() or 1) < COMPILE_MIN_CPUS:
            note = (f"compile skipped: {os.cpu_count()} CPUs, under the {COMPILE_MIN_CPUS} that "
                    f"compile the recipe within {RUN_LIMIT_S} s")
            print(note)
            record_property("note", note)
            args.append("--compile=False")
    else:
        args += TINY
    record_property("compiled", cuda and "--compile=False" not in args)
    record_property("dtype", devices.native_dtype(device))
    t0 = time.perf_counter()
    run_script(["train.py", *args])
    first = read_log(tmp_path / "out")
    assert [r["iter"] for r in first] == [0, 2, 4]
    checkpoint = torch.load(tmp_path / "out" / "ckpt.pt", map_location="cpu", weights_only=True)
    assert checkpoint["iter_num"] == 4
    record_property("train_s", round(time.perf_counter() - t0, 1))

    run_script(["train.py", *args, "--init_from=resume", "--max_iters=6"])
    resumed = read_log(tmp_path / "out")
    assert [r["iter"] for r in resumed] == [0, 2, 4, 6] and resumed[:3] == first
    assert all(r["train_loss"] is not None and r["val_loss"] is not None for r in resumed)
    assert torch.load(tmp_path / "out" / "ckpt.pt", map_location="cpu",
                      weights_only=True)["iter_num"] == 6

    out = run_script(["sample.py", f"--out_dir={tmp_path / 'out'}", f"--device={device}",
                      "--start=All:", "--num_samples=2", "--max_new_tokens=20"])
    samples = [s[:-1] for s in out.split("---------------\n")[:-1]]  # less print's newline
    corpus = set((data_root / "shakespeare_char" / "input.txt").read_text())
    assert len(samples) == 2, out
    for sample in samples:  # the prompt and 20 characters of the corpus's alphabet
        assert sample.startswith("All:") and set(sample) <= corpus, sample
        assert len(sample) == len("All:") + 20, sample
    record_property("total_s", round(time.perf_counter() - t0, 1))
