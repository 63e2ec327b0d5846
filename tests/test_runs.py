"""Runs as systems: on two processes (DDP on CPU with gloo), in bfloat16, compiled (killed at
random instants: tests/test_faults.py). Tiny models; train.py in subprocesses where the process
itself is the point."""

import json
import os
import subprocess
import sys

import pytest
import torch

import train
from conftest import ROOT, TINY, read_log

def losses(log: list) -> list:
    return [(r["iter"], r["train_loss"], r["val_loss"], r["lr"]) for r in log]


# torchrun target for the DDP test: train.py's main, recording what this process did, for the
# test to compare across processes: its training inputs, its final parameters, its saves.
PROBE = """
import os, sys, torch
sys.path.insert(0, os.getcwd())  # the repository root
import bookkeeping, train
from mot import GPT
inputs, models, saves = [], [], []
forward = GPT.forward
def recorded_forward(self, idx, *args, **kwargs):
    if self.training:
        inputs.append(idx.clone())
        models[:] = [self]
    return forward(self, idx, *args, **kwargs)
GPT.forward = recorded_forward
save_checkpoint = bookkeeping.save_checkpoint
def recorded_save(checkpoint, path):
    saves.append(path)
    save_checkpoint(checkpoint, path)
bookkeeping.save_checkpoint = recorded_save
train.main(sys.argv[1:])
torch.save(dict(inputs=inputs, params=models[0].state_dict(), saves=len(saves)),
           os.path.join(os.environ["PROBE_DIR"], f"rank{os.environ['RANK']}.pt"))
"""


# torchrun target: train.py whose rank 1 alone sends itself SIGTERM in its SIGNAL_AT-th
# training forward, as a scheduler's signal reaches the processes each at its own moment
SIGNALLED = """
import os, signal, sys
sys.path.insert(0, os.getcwd())  # the repository root
import train
from mot import GPT
forward, steps = GPT.forward, []
def signalled_forward(self, idx, *args, **kwargs):
    if self.training and os.environ["RANK"] == "1":
        steps.append(idx)
        if len(steps) == int(os.environ["SIGNAL_AT"]):
            os.kill(os.getpid(), signal.SIGTERM)
    return forward(self, idx, *args, **kwargs)
GPT.forward = signalled_forward
train.main(sys.argv[1:])
"""


def torchrun(script, *args, returncode=0, **env):
    """torchrun --standalone --nproc_per_node=2 script args, on CPU; its stderr."""
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node=2", script, *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=300,  # a process waiting for the other fails
                            env=dict(os.environ, CUDA_VISIBLE_DEVICES="", **env))
    assert result.returncode == returncode, result.stderr[-3000:]
    return result.stderr


def test_ddp_on_cpu_with_two_processes(data_root, tmp_path):
    """torchrun with 2 CPU processes (gloo): the processes train on different batches and end
    with identical parameters; only rank 0 writes; a 2-process run resumed continues exactly as
    an uninterrupted one (each process gets its own random streams back). MoT with dropout: the
    final evaluation on rank 0 alone must not wait for the other process. SIGTERM to rank 1 alone
    during iter 3 stops both processes after it, with one line and a checkpoint at iter 4 (due
    for an evaluation, not yet made), which resumes exactly."""
    args = TINY + [f"--data_root={data_root}", "--ffn=mot", "--gradient_accumulation_steps=2"]
    full, split = tmp_path / "full", tmp_path / "split"
    (tmp_path / "probe.py").write_text(PROBE)
    torchrun(str(tmp_path / "probe.py"), *args, "--max_iters=8", f"--out_dir={full}",
             PROBE_DIR=str(tmp_path))
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert len(rank0["inputs"]) == len(rank1["inputs"]) == 8  # 2 micro-steps: 1 per process
    assert not any(torch.equal(a, b) for a, b in zip(rank0["inputs"], rank1["inputs"]))
    assert all(torch.equal(rank0["params"][k], rank1["params"][k]) for k in rank0["params"])
    assert rank0["saves"] == 4 and rank1["saves"] == 0
    assert sorted(os.listdir(full)) == ["ckpt.pt", "log.jsonl"]
    log = read_log(full)
    assert [r["iter"] for r in log] == [0, 2, 4, 6, 8]

    torchrun("train.py", *args, "--max_iters=4", f"--out_dir={split}")
    torchrun("train.py", *args, "--max_iters=8", f"--out_dir={split}", "--init_from=resume")
    assert losses(read_log(split)) == losses(log)
    expected = torch.load(full / "ckpt.pt", weights_only=True)
    resumed = torch.load(split / "ckpt.pt", weights_only=True)
    assert all(torch.equal(resumed["model"][k], v) for k, v in expected["model"].items())
    assert not torch.equal(expected["rng"][0]["data"], expected["rng"][1]["data"])

    stopped = tmp_path / "stopped"
    (tmp_path / "signalled.py").write_text(SIGNALLED)
    stderr = torchrun(str(tmp_path / "signalled.py"), *args, "--max_iters=8",
                      f"--out_dir={stopped}", returncode=1, SIGNAL_AT="4")  # in iter 3
    assert stderr.count(f"interrupted at iter 4: saved {stopped / 'ckpt.pt'}") == 1
    assert "exitcode  : 143" in stderr  # torchrun's report of its processes
    assert torch.load(stopped / "ckpt.pt", weights_only=True)["iter_num"] == 4
    torchrun("train.py", *args, "--max_iters=8", f"--out_dir={stopped}", "--init_from=resume")
    assert losses(read_log(stopped)) == losses(log)
    resumed = torch.load(stopped / "ckpt.pt", weights_only=True)
    assert all(torch.equal(resumed["model"][k], v) for k, v in expected["model"].items())
    with pytest.raises(SystemExit, match="nproc_per_node=2"):
        train.main(args + [f"--out_dir={full}", "--init_from=resume", "--max_iters=10"])


# torchrun target: train.py's main once per argument list of $RUNS (JSON), each run with a
# process group of its own (a FileStore per run: torchrun's store serves one group per process)
RUNS = """
import json, os, sys
sys.path.insert(0, os.getcwd())  # the repository root
import torch.distributed as dist
import train
init = dist.init_process_group
for k, args in enumerate(json.loads(os.environ["RUNS"])):
    store = dist.FileStore(os.path.join(os.environ["STORE_DIR"], f"store{k}"), 2)
    dist.init_process_group = lambda backend, _store=store: init(
        backend, store=_store, rank=int(os.environ["RANK"]), world_size=2)
    train.main(args)
"""
DDP_MODES = {"dense": ["--ffn=dense"], "mot": ["--ffn=mot"],
             "mot_discrete": ["--ffn=mot", "--mot_routing=discrete"],
             "moe_token_choice": ["--ffn=moe"],
             "moe_expert_choice": ["--ffn=moe", "--moe_routing=expert_choice"],
             "transition_discrete": ["--init_from={mot}", "--transition=discrete"],
             "transition_token_choice": ["--init_from={mot}", "--transition=token_choice"],
             "upcycled_mot": ["--init_from={dense}", "--upcycle=mot"],
             "upcycled_moe": ["--init_from={dense}", "--upcycle=moe"]}


def test_every_mode_trains_under_ddp_and_resumes_exactly(data_root, tmp_path, run_train):
    """Each kind of run, from scratch (dense, MoT continuous and discrete, MoE token and expert
    choice), converted from a MoT run (both transitions) or grown from a dense one (upcycled),
    trains under torchrun with 2 processes (gloo), and a 2-process run stopped at iter 4 and
    resumed ends as the uninterrupted one: the same losses at every evaluation, the same
    weights. (Discrete MoT's controller gets no gradient; DDP waited for it forever.)"""
    sources = {kind: str(tmp_path / f"source_{kind}") for kind in ("mot", "dense")}
    for kind, out_dir in sources.items():
        run_train(out_dir, f"--ffn={kind}", "--max_iters=2")
    args = TINY + [f"--data_root={data_root}", "--gradient_accumulation_steps=2",
                   "--eval_interval=4"]

    full, split = tmp_path / "full", tmp_path / "split"
    first = [args + [arg.format(**sources) for arg in flags] + extra
             for mode, flags in DDP_MODES.items()
             for extra in (["--max_iters=8", f"--out_dir={full / mode}"],
                           ["--max_iters=4", f"--out_dir={split / mode}"])]
    resumed = [args + ["--max_iters=8", f"--out_dir={split / mode}", "--init_from=resume"]
               for mode in DDP_MODES]
    (tmp_path / "runs.py").write_text(RUNS)
    for batch in (first, resumed):
        store = tmp_path / f"store{len(batch)}"
        store.mkdir()
        torchrun(str(tmp_path / "runs.py"), RUNS=json.dumps(batch), STORE_DIR=str(store))
    for mode in DDP_MODES:
        log = read_log(full / mode)
        assert [r["iter"] for r in log] == [0, 4, 8], mode
        assert losses(read_log(split / mode)) == losses(log), mode
        expected = torch.load(full / mode / "ckpt.pt", weights_only=True)["model"]
        got = torch.load(split / mode / "ckpt.pt", weights_only=True)["model"]
        assert all(torch.equal(got[k], v) for k, v in expected.items()), mode


@pytest.mark.parametrize("ffn", ["dense", "mot", "moe"])
def test_bfloat16_on_cpu_trains_close_to_float32(tmp_path, run_train, ffn):
    """--dtype=bfloat16 (autocast on CPU) trains each FFN: its losses differ from float32's, by
    less than bfloat16's precision allows for."""
    args = [f"--ffn={ffn}", "--max_iters=6", "--learning_rate=1e-2"]
    float32 = run_train(tmp_path / "float32", *args)
    bfloat16 = run_train(tmp_path / "bfloat16", *args, "--dtype=bfloat16")
    assert losses(bfloat16) != losses(float32)
    for a, b in zip(bfloat16, float32):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=0.05)
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=0.05)
    assert bfloat16[-1]["train_loss"] < bfloat16[0]["train_loss"]


def test_compiled_mot_trains_as_eager(tmp_path, run_train):
    """--compile=True (torch.compile, inductor on CPU) trains MoT to the losses of eager mode,
    up to float rounding. Without dropout: compiled code draws its masks from another
    generator."""
    args = ["--ffn=mot", "--max_iters=4", "--dropout=0.0"]
    eager = run_train(tmp_path / "eager", *args)
    compiled = run_train(tmp_path / "compiled", *args, "--compile=True")
    for a, b in zip(compiled, eager):
        assert a["iter"] == b["iter"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-4)
