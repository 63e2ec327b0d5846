"""Faults that must not lose work: a run that diverges keeps its last finite checkpoint, an
interrupted run saves where it stopped, a full disk is one line."""

import errno
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import bookkeeping
from conftest import ROOT, TINY, read_log
from convert import from_checkpoint, nonfinite
from mot import GPT
from test_errors import error
from test_runs import SLOW_SAVE, losses


@pytest.fixture
def recorded_saves(monkeypatch):
    """The bytes of every checkpoint train.py saves, in order."""
    saves, save_checkpoint = [], bookkeeping.save_checkpoint

    def recorded_save(checkpoint, path):
        save_checkpoint(checkpoint, path)
        with open(path, "rb") as f:
            saves.append(f.read())
    monkeypatch.setattr(bookkeeping, "save_checkpoint", recorded_save)
    return saves


@pytest.mark.parametrize("ffn, eval_interval, what", [
    ("dense", 2, "the eval loss"), ("mot", 2, "the eval loss"), ("moe", 2, "the eval loss"),
    ("dense", 3, "the train loss")])
def test_a_diverging_run_stops_and_keeps_its_last_finite_checkpoint(
        tmp_path, run_train, recorded_saves, ffn, eval_interval, what):
    """Resumed at iter 4 with learning_rate=1000 and no clipping, the losses grow and turn NaN
    at iter 8: the eval there (eval_interval=2) or the train loss printed at iter 8 (3) stops
    the run in one line, naming iter 8, the checkpoint's iteration and the fixes. ckpt.pt is the
    last checkpoint saved, bit for bit, with finite weights; the log is strict JSON (null for
    NaN); resumed from it with a sane learning rate, the run trains on."""
    out = tmp_path / "out"
    run_train(out, f"--ffn={ffn}", "--max_iters=4")
    with pytest.raises(SystemExit) as e:
        run_train(out, "--init_from=resume", "--max_iters=12", "--learning_rate=1000.0",
                  "--grad_clip=0.0", f"--eval_interval={eval_interval}")
    message = error(e)
    kept = torch.load(out / "ckpt.pt", weights_only=True)
    assert (out / "ckpt.pt").read_bytes() == recorded_saves[-1]  # the last of iters 2, 4, 6
    assert kept["iter_num"] == 6 and not nonfinite(kept["model"])
    assert message.startswith(f"error: {what} is not finite at iter 8: the run diverged; "
                              f"{out / 'ckpt.pt'} keeps iter 6, the last finite checkpoint")
    assert all(fix in message for fix in ["learning_rate", "grad_clip", "bfloat16"])
    log = read_log(out)  # strict JSON
    assert [r["val_loss"] for r in log if r["iter"] == 8] == ([None] if eval_interval == 2
                                                              else [])
    resumed = run_train(out, "--init_from=resume", "--max_iters=12", "--learning_rate=1e-3",
                        "--decay_lr=False", f"--eval_interval={eval_interval}")
    later = [r["val_loss"] for r in resumed if r["iter"] >= 6]
    assert len(later) >= 3 and all(b < a for a, b in zip(later, later[1:]))  # finite, falling


def test_weights_that_are_not_finite_are_never_saved(tmp_path, run_train, recorded_saves,
                                                     monkeypatch):
    """Finite losses but a weight that is not (as an expert that no eval token reached could
    be) at the 2nd save, iter 4: the run stops in one line naming that weight, ckpt.pt stays
    the checkpoint of iter 2."""
    state_dict, calls = GPT.state_dict, []

    def diverged_state_dict(self, *args, **kwargs):
        weights = state_dict(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:  # a copy: the model itself stays finite
            weights["lm_head.weight"] = torch.full_like(weights["lm_head.weight"], float("inf"))
        return weights
    monkeypatch.setattr(GPT, "state_dict", diverged_state_dict)
    with pytest.raises(SystemExit) as e:
        run_train(tmp_path, "--max_iters=6")
    assert error(e).startswith("error: weight lm_head.weight is not finite at iter 4: ")
    assert len(recorded_saves) == 1 and (tmp_path / "ckpt.pt").read_bytes() == recorded_saves[0]


def test_float16_steps_that_the_grad_scaler_skips_are_no_divergence(tmp_path, run_train,
                                                                    monkeypatch):
    """fp16 with a GradScaler whose first scale overflows the gradients: it skips those steps
    (inf gradients, finite loss) and halves its scale each time, by design; the run goes on and
    trains once the scale fits."""
    grad_scaler = torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler",
                        lambda *args, **kwargs: grad_scaler(*args, init_scale=2.0 ** 24, **kwargs))
    log = run_train(tmp_path, "--dtype=float16", "--max_iters=8")
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["scaler"]["scale"] < 2.0 ** 24
    assert log[1]["val_loss"] == log[0]["val_loss"]  # skipped: the weights did not move
    assert [r["iter"] for r in log] == [0, 2, 4, 6, 8] and log[-1]["val_loss"] < log[0]["val_loss"]


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, run_train,
                                                                   monkeypatch):
    """A save that runs out of space halfway through its file (as writing to a full tmpfs does):
    one line naming the path and the space the checkpoint needs (the size of the previous one,
    the same model), ckpt.pt as it was, no ckpt.pt.tmp left."""
    out = tmp_path / "out"
    run_train(out, "--max_iters=2")
    before = (out / "ckpt.pt").read_bytes()
    save = torch.save

    def full_disk(obj, f):
        if isinstance(f, bookkeeping.ByteCount):  # not a file on the disk
            return save(obj, f)
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(SystemExit) as e:
        run_train(out, "--init_from=resume", "--max_iters=4")
    assert error(e).startswith(f"error: cannot save {out / 'ckpt.pt'} (No space left on "
                               f"device): it needs {len(before):,} bytes, ")
    assert "the previous checkpoint is intact" in str(e.value)
    assert (out / "ckpt.pt").read_bytes() == before
    assert sorted(os.listdir(out)) == ["ckpt.pt", "log.jsonl"]


def test_interrupted_at_random_instants_the_run_saves_there_and_resumes_exactly(data_root,
                                                                                tmp_path):
    """SIGINT and SIGTERM, 10 of each in turn, at random instants (after a random number of
    the run's output lines, and a random pause), resumed each time: each time the run finishes
    its step, saves, prints one line naming that iteration and exits with 128 + the signal
    (130, 143), and ckpt.pt loads, at that iteration. Some get a second Ctrl-C inside that save
    (which pauses halfway): it changes nothing. The final log and weights equal an uninterrupted
    run's: every evaluation once, same losses."""
    args = TINY + [f"--data_root={data_root}", "--ffn=mot", "--max_iters=80"]
    env = dict(os.environ, OMP_NUM_THREADS="1")  # a tiny model: one thread is faster
    subprocess.run([sys.executable, "train.py", *args, f"--out_dir={tmp_path / 'reference'}"],
                   cwd=ROOT, check=True, capture_output=True, env=env)
    out = tmp_path / "interrupted"
    ckpt = out / "ckpt.pt"
    instants = random.Random(0)
    stopped_at, inside_save = [], 0
    for signum in [signal.SIGINT, signal.SIGTERM] * 10:
        resume = ["--init_from=resume"] if ckpt.exists() else []
        process = subprocess.Popen([sys.executable, "-u", "-c", SLOW_SAVE, *args,
                                    f"--out_dir={out}", *resume], cwd=ROOT, env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        lines = iter(process.stdout)
        seen = [next(line for line in lines if "GPT:" in line)]  # training starts after it
        seen += [next(lines, "") for _ in range(instants.randint(0, 3))]  # "step", "iter" lines
        time.sleep(instants.uniform(0, 0.005))
        process.send_signal(signum)
        if instants.random() < 0.5:  # Ctrl-C again inside the interrupt's save, after its step
            for line in lines:
                if line == "saving\n" and seen[-1].startswith("iter"):
                    process.send_signal(signal.SIGINT)
                    inside_save += 1
                    break
                seen.append(line)
        _, stderr = process.communicate()
        assert process.returncode == 128 + signum, stderr
        stopped_at.append(int(re.match(r"interrupted at iter (\d+):", stderr)[1]))
        assert stderr == (f"interrupted at iter {stopped_at[-1]}: saved {ckpt}; continue with "
                          f"--init_from=resume\n")
        assert not os.path.exists(f"{ckpt}.tmp")
        assert from_checkpoint(str(ckpt))[1]["iter_num"] == stopped_at[-1]
    assert stopped_at == sorted(set(stopped_at)) and stopped_at[-1] < 80 and inside_save >= 3
    subprocess.run([sys.executable, "train.py", *args, f"--out_dir={out}", "--init_from=resume"],
                   cwd=ROOT, check=True, capture_output=True, env=env)
    assert losses(read_log(out)) == losses(read_log(tmp_path / "reference"))
    final = torch.load(ckpt, weights_only=True)["model"]
    expected = torch.load(tmp_path / "reference" / "ckpt.pt", weights_only=True)["model"]
    assert all(torch.equal(final[k], expected[k]) for k in expected)
