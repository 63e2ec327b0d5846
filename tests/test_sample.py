"""Tests of what sample.py and every reader of a checkpoint load (the model's weights alone, from a
memory-mapped file), of checkpoints that hold less than train.py writes, and of the device the
scripts choose on a machine whose NVIDIA GPU this torch cannot use (faked: no test needs a GPU)."""

import os
import string
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch

import convert
import devices
import evaluate
import gpu_check
import sample
from conftest import ROOT
from mot import GPT, GPTConfig

CHARS = list(string.ascii_letters + string.digits + " \n.")  # 65: shakespeare_char's count
META = dict(tokenizer="char", vocab_size=len(CHARS), chars=CHARS)


def save_run(out_dir, config: GPTConfig, optimizer: bool = True, **entries) -> GPT:
    """out_dir/ckpt.pt holding a new GPT of `config` under train.py's four entries that
    convert.from_checkpoint requires, an AdamW state after one step (unless optimizer=False) and
    `entries`; the GPT."""
    torch.manual_seed(0)
    model = GPT(config)
    state = dict(model=model.state_dict(), model_args=asdict(config), iter_num=1, meta=META)
    if optimizer:  # exp_avg and exp_avg_sq: twice the weights, as in train.py's checkpoints
        adamw = torch.optim.AdamW(model.parameters())
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        adamw.step()
        state["optimizer"] = adamw.state_dict()
    os.makedirs(out_dir, exist_ok=True)
    torch.save({**state, **entries}, os.path.join(out_dir, "ckpt.pt"))
    return model


def weight_bytes(model: GPT) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())  # tied: counted once


# ----------------------------------------------------------------------------- memory

# The process's peak resident memory: its address space's high-water mark (VmHWM), which starts
# afresh with the new program. Not getrusage's ru_maxrss: that keeps the peak of the process
# before its exec, the forked copy of pytest's memory, larger than what is measured here.
PEAK_RSS = """
import re, sys
sys.path.insert(0, {root!r})
import sample

def peak():
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\\s+(\\d+) kB", f.read()).group(1)) * 1024

def sample_from(out_dir):
    sample.main([f"--out_dir={{out_dir}}", "--device=cpu", "--start=To be", "--num_samples=2",
                 "--max_new_tokens=4"])

sample_from({warm!r})  # torch's code paged in, its allocator warm: not the loader's memory
before = peak()
sample_from({big!r})
print("peak", before, peak())
"""


def test_sampling_brings_in_the_weights_and_no_more(tmp_path):
    """python sample.py from a checkpoint of a 25M-parameter GPT and its AdamW moments (300 MB):
    the process's peak memory grows by the model's weights, plus less than 10% of the file. (It
    grew by the whole file and the weights again when the file was read whole into memory and
    the GPT built with weights of its own.)"""
    config = GPTConfig(n_layer=8, n_head=8, n_embd=512, block_size=64, vocab_size=len(CHARS))
    weights = weight_bytes(save_run(tmp_path / "big", config))
    save_run(tmp_path / "warm", GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=64,
                                          vocab_size=len(CHARS)))
    size = os.path.getsize(tmp_path / "big" / "ckpt.pt")
    assert size > 2.9 * weights  # the moments are in the file
    script = PEAK_RSS.format(root=ROOT, warm=str(tmp_path / "warm"), big=str(tmp_path / "big"))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr
    before, after = map(int, result.stdout.split("peak")[1].split())
    grown = after - before
    print(f"checkpoint {size / 2**20:.1f} MiB, weights {weights / 2**20:.1f} MiB, peak grew by "
          f"{grown / 2**20:.1f} MiB: {(grown - weights) / 2**20:.1f} MiB above the weights")
    assert grown > 0.9 * weights  # the measure sees the weights come in
    assert grown - weights < 0.1 * size


def test_the_loaded_model_is_the_saved_one_bit_for_bit(tmp_path):
    """from_checkpoint's GPT holds the saved weights exactly, its embedding and lm_head one tied
    Parameter as in a new GPT; the checkpoint comes back without its weights (the model's now),
    with the optimizer's state for a resume."""
    config = GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=16, vocab_size=len(CHARS),
                       ffn="mot", n_experts=4, group_size=2)
    saved = save_run(tmp_path, config)
    model, checkpoint = convert.from_checkpoint(str(tmp_path / "ckpt.pt"))
    assert model.state_dict().keys() == saved.state_dict().keys() and not model.training
    assert all(torch.equal(model.state_dict()[name], tensor)
               for name, tensor in saved.state_dict().items())
    assert model.lm_head.weight is model.transformer.wte.weight
    assert len(list(model.parameters())) == len(list(saved.parameters()))
    assert "model" not in checkpoint and checkpoint["optimizer"]["state"]


# ----------------------------------------------------------------------------- four entries


def test_a_checkpoint_of_the_model_alone_samples_or_says_what_it_lacks(tmp_path, capsys):
    """A checkpoint of only model, model_args, iter_num and meta: a dense model samples from it;
    a MoT whose partial group needs the run's training text, and evaluate.py, which repeats the
    run's evaluation, stop with one line naming the file and its missing config."""
    tiny = dict(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=len(CHARS))
    save_run(tmp_path / "dense", GPTConfig(**tiny), optimizer=False)
    save_run(tmp_path / "mot", GPTConfig(**tiny, ffn="mot", n_experts=4, group_size=2),
             optimizer=False)
    args = ["--device=cpu", "--start=To", "--num_samples=1", "--max_new_tokens=3"]
    sample.main([f"--out_dir={tmp_path / 'dense'}"] + args)
    assert capsys.readouterr().out.startswith("To")
    path = tmp_path / "mot" / "ckpt.pt"
    with pytest.raises(SystemExit, match=f"^error: {path} lacks config .* --no-companions$"):
        sample.main([f"--out_dir={tmp_path / 'mot'}"] + args)
    sample.main([f"--out_dir={tmp_path / 'mot'}", "--no-companions"] + args)
    assert capsys.readouterr().out.startswith("To")
    with pytest.raises(SystemExit, match=f"^error: {tmp_path / 'dense' / 'ckpt.pt'} lacks "
                                         f"config: [^\n]*$"):
        evaluate.main([str(tmp_path / "dense")])


# ----------------------------------------------------------------------------- the device

NVRM = ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  {}  Sat Aug 19 01:15:15 UTC 2023\n"
        "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """machine(cuda, driver, device_file): this torch a CUDA build of version `cuda` (None: a
    CPU build) that sees no GPU, on a machine with an NVIDIA driver of version `driver` (None:
    no /proc/driver/nvidia/version) and, if device_file, a /dev/nvidia0."""
    def fake(cuda, driver=None, device_file=False):
        monkeypatch.setattr(torch.version, "cuda", cuda)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        version, device = tmp_path / "version", tmp_path / "nvidia0"
        for path, there, text in ((version, driver is not None, NVRM.format(driver)),
                                  (device, device_file, "")):
            if there:
                path.write_text(text)
            elif path.exists():
                path.unlink()
        monkeypatch.setattr(devices, "NVIDIA_DRIVER", str(version))
        monkeypatch.setattr(devices, "NVIDIA_DEVICE", str(device))
    return fake


@pytest.mark.parametrize("cuda, driver, device_file, expected", [
    ("13.0", "535.104.05", False, ["535.104.05", "CUDA 12 at most", "whl/cu126", "--device=cpu"]),
    ("12.8", "470.82.01", True, ["470.82.01", "update it to 525.60.13", "--device=cpu"]),
    ("13.0", "580.95.05", False, ["580.95.05", "runs CUDA 13", "nvidia-smi", "--device=cpu"]),
    ("12.6", None, True, ["/version does not tell", "nvidia-smi", "--device=cpu"]),
])
def test_a_gpu_this_torch_cannot_use_is_one_line_naming_driver_and_fix(machine, cuda, driver,
                                                                        device_file, expected):
    """A CUDA build of torch that sees no GPU on a machine with an NVIDIA driver or device: why,
    in one line, with the driver's version and the wheel to install (or the driver to update)."""
    machine(cuda, driver, device_file)
    problem = devices.unusable_gpu()
    assert problem is not None and "\n" not in problem
    assert all(part in problem for part in expected), problem
    assert devices.device_problem("cuda") == problem  # --device=cuda says the same


@pytest.mark.parametrize("cuda, driver", [("12.6", None), (None, "535.104.05")])
def test_no_nvidia_gpu_or_a_cpu_build_runs_on_the_cpu_quietly(machine, cuda, driver):
    """A CUDA build on a machine without an NVIDIA GPU, or a CPU build of torch: no problem, and
    the CPU is the device."""
    machine(cuda, driver)
    assert devices.unusable_gpu() is None and devices.default_device() == "cpu"


def test_the_scripts_stop_at_a_gpu_they_cannot_use_unless_given_the_cpu(machine, tmp_path,
                                                                         capsys):
    """sample.py and the GPU check, without --device, stop with unusable_gpu's line rather than
    run on the CPU; sample.py --device=cpu runs there."""
    machine("13.0", "535.104.05")
    problem = devices.unusable_gpu()
    save_run(tmp_path / "run", GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16,
                                         vocab_size=len(CHARS)), optimizer=False)
    args = [f"--out_dir={tmp_path / 'run'}", "--start=To", "--num_samples=1",
            "--max_new_tokens=2"]
    for main in (sample.main, gpu_check.parse):
        with pytest.raises(SystemExit) as stopped:
            main(args[:1])
        assert str(stopped.value) == f"error: {problem}"
    sample.main(args + ["--device=cpu"])
    assert capsys.readouterr().out.startswith("To")
