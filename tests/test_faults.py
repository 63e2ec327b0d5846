"""Faults that must not lose work: a run that diverges keeps its last finite checkpoint, an
interrupted run saves where it stopped, a killed one loses nothing saved, a full disk is one
line. The interrupt and kill tests stop the run at pauses of their own (conftest.PausedRun), not
at instants that a loaded machine may never give."""

import errno
import io
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
from conftest import ROOT, TINY, error_line, read_log
from convert import from_checkpoint, nonfinite
from mot import GPT
from test_runs import losses


def is_file(f) -> bool:
    """Whether torch.save writes f to the disk (a checkpoint's file), not to memory."""
    return isinstance(f, io.BufferedWriter)


@pytest.fixture
def recorded_saves(monkeypatch):
    """The bytes of every checkpoint train.py saves, in order (as torch.save writes them)."""
    saves, save = [], torch.save

    def recorded_save(obj, f):
        buffer = io.BytesIO()
        save(obj, buffer)
        if is_file(f):
            saves.append(buffer.getvalue())
        f.write(buffer.getvalue())
    monkeypatch.setattr(torch, "save", recorded_save)
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
    message = error_line(e)
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
    assert error_line(e).startswith("error: weight lm_head.weight is not finite at iter 4: ")
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
    one line naming the path and the space free there, ckpt.pt as it was, no ckpt.pt.tmp left."""
    out = tmp_path / "out"
    run_train(out, "--max_iters=2")
    before = (out / "ckpt.pt").read_bytes()
    save = torch.save

    def full_disk(obj, f):
        if not is_file(f):  # counting the bytes it needs
            return save(obj, f)
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(SystemExit) as e:
        run_train(out, "--init_from=resume", "--max_iters=4")
    assert error_line(e).startswith(f"error: cannot save {out / 'ckpt.pt'} (No space left on "
                                    f"device): ")
    assert "the previous checkpoint is intact" in str(e.value)
    assert (out / "ckpt.pt").read_bytes() == before
    assert sorted(os.listdir(out)) == ["ckpt.pt", "log.jsonl"]


class FullFile:
    """log.jsonl opened for a line on a disk that fills up: half the line lands, then ENOSPC."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data: bytes):
        self.f.write(data[:len(data) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_at_a_log_line_is_one_line_naming_the_way_on(tmp_path, run_train,
                                                                 monkeypatch):
    """The disk fills up as a log line is appended, half of it written: one line naming
    log.jsonl and the way on. At the run's first line (no checkpoint
    yet) that is to start again with --overwrite=True; done, the disk fills at its 3rd line
    (iter 4; iter 2 saved): now it is to resume, and ckpt.pt keeps iter 2. Resumed, the run ends
    as an uninterrupted one, every evaluation once."""
    reference = run_train(tmp_path / "reference", "--max_iters=6")
    out = tmp_path / "out"
    for n, given, way_on in [(1, [], "--overwrite=True"),
                             (3, ["--overwrite=True"], "--init_from=resume")]:
        opened, open_log = [], bookkeeping.OutDir.open

        def full_at_line_n(self, name, flags):
            f = open_log(self, name, flags)
            opened.append(name)
            return FullFile(f) if opened.count("log.jsonl") == n else f
        with monkeypatch.context() as patch:
            patch.setattr(bookkeeping.OutDir, "open", full_at_line_n)
            with pytest.raises(SystemExit) as e:
                run_train(out, "--max_iters=6", *given)
        line = error_line(e)
        assert line.startswith(f"error: cannot write {out / 'log.jsonl'} (No space left on "
                               f"device): "), line
        assert way_on in line, line
    assert torch.load(out / "ckpt.pt", weights_only=True)["iter_num"] == 2
    run_train(out, "--init_from=resume")
    assert losses(read_log(out)) == losses(reference)


def test_interrupted_at_random_moments_the_run_saves_there_and_resumes_exactly(
        data_root, tmp_path, paused_train):
    """SIGINT and SIGTERM, 10 of each in turn, resumed each time, each sent at a random one of
    the run's first pauses (before a training step, or halfway through a checkpoint's save), or
    at a random instant after it: each time the run finishes its step, saves, prints one line
    naming that iteration and exits with 128 + the signal (130, 143), no ckpt.pt.tmp is left and
    ckpt.pt loads, at that iteration. Every other run gets a second Ctrl-C while its stop's save
    waits halfway: it changes nothing. The final log and weights equal an uninterrupted run's:
    every evaluation once, same losses."""
    args = TINY + [f"--data_root={data_root}", "--ffn=mot", "--max_iters=80"]
    env = dict(os.environ, OMP_NUM_THREADS="1")  # a tiny model: one thread is faster
    subprocess.run([sys.executable, "train.py", *args, f"--out_dir={tmp_path / 'reference'}"],
                   cwd=ROOT, check=True, capture_output=True, env=env)
    out = tmp_path / "interrupted"
    ckpt = out / "ckpt.pt"
    instants = random.Random(0)
    stopped_at = []
    for run_number, signum in enumerate([signal.SIGINT, signal.SIGTERM] * 10):
        resume = ["--init_from=resume"] if ckpt.exists() else []
        run = paused_train(args + [f"--out_dir={out}", *resume])
        run.until(n=instants.randint(1, 4))  # the 1st pause is before the 1st step
        if instants.random() < 0.5:  # an instant up to the next pause
            run.go_on()
            time.sleep(instants.uniform(0, 0.005))
        run.process.send_signal(signum)
        # the stop's save: the one right after a step's line (another follows an evaluation)
        while True:
            where = run.pause()
            assert where is not None, "the run ended without saving where it stopped"
            if where == "in save" and run.output[-1].startswith("iter"):
                break
        if run_number % 2:  # Ctrl-C again, inside that save
            run.process.send_signal(signal.SIGINT)
        returncode, stderr = run.finish()
        assert returncode == 128 + signum, stderr
        stopped_at.append(int(re.match(r"interrupted at iter (\d+):", stderr)[1]))
        assert stderr == (f"interrupted at iter {stopped_at[-1]}: saved {ckpt}; continue with "
                          f"--init_from=resume\n")
        assert not os.path.exists(f"{ckpt}.tmp")
        assert from_checkpoint(str(ckpt))[1]["iter_num"] == stopped_at[-1]
    assert stopped_at == sorted(set(stopped_at)) and stopped_at[-1] < 80
    subprocess.run([sys.executable, "train.py", *args, f"--out_dir={out}", "--init_from=resume"],
                   cwd=ROOT, check=True, capture_output=True, env=env)
    assert losses(read_log(out)) == losses(read_log(tmp_path / "reference"))
    final = torch.load(ckpt, weights_only=True)["model"]
    expected = torch.load(tmp_path / "reference" / "ckpt.pt", weights_only=True)["model"]
    assert all(torch.equal(final[k], expected[k]) for k in expected)


def test_killed_at_random_moments_the_run_ends_as_if_never_killed(data_root, tmp_path,
                                                                  paused_train):
    """SIGKILL 10 times, resumed each time: 4 times halfway through a checkpoint's save (the
    run's 1st or 2nd), 3 times before a training step (its 1st to 4th), 3 times at a random
    instant after a random pause (up to the next one). A kill inside a save leaves ckpt.pt as it
    was before the save; ckpt.pt always loads, and the final log and checkpoint equal an
    uninterrupted run's. The checkpoint is saved only when val loss improves, and at this
    learning rate it rises once: an evaluation without a checkpoint of its own."""
    args = TINY + [f"--data_root={data_root}", "--ffn=mot", "--max_iters=20",
                   "--learning_rate=0.03", "--always_save_checkpoint=False",
                   "--controller_init_std=0.02"]  # a run whose val loss rises once
    env = dict(os.environ, OMP_NUM_THREADS="1")  # a tiny model: one thread is faster
    subprocess.run([sys.executable, "train.py", *args, f"--out_dir={tmp_path / 'reference'}"],
                   cwd=ROOT, check=True, capture_output=True, env=env)
    reference = read_log(tmp_path / "reference")
    improved = [r["val_loss"] < min(q["val_loss"] for q in reference[:i])
                for i, r in enumerate(reference) if i > 0]
    assert not all(improved) and any(improved)  # evaluations with and without a checkpoint

    out = tmp_path / "killed"
    ckpt = out / "ckpt.pt"
    instants = random.Random(0)
    killed_at = []  # ckpt.pt's iteration after each kill
    for kill in range(10):
        resume = ["--init_from=resume"] if ckpt.exists() else []
        run = paused_train(args + [f"--out_dir={out}", *resume])
        where = ("in save", "before step", None)[kill % 3]
        n = instants.randint(1, 2 if where == "in save" else 4)  # its n-th pause `where`
        before = ckpt.read_bytes() if ckpt.exists() else None
        while n:
            paused = run.pause()
            assert paused is not None, "the run ended before its kill"
            if paused == "before step":  # no save under way
                before = ckpt.read_bytes() if ckpt.exists() else None
            n -= where in (None, paused)
        if where is None:  # an instant up to the next pause
            run.go_on()
            time.sleep(instants.uniform(0, 0.005))
        assert run.kill() == -signal.SIGKILL
        if where == "in save":  # killed halfway through a save: ckpt.pt as it was before it
            assert (ckpt.read_bytes() if ckpt.exists() else None) == before
        if ckpt.exists():
            killed_at.append(torch.load(ckpt, weights_only=True)["iter_num"])
    assert killed_at == sorted(killed_at) and len(set(killed_at)) >= 3, killed_at
    subprocess.run([sys.executable, "train.py", *args, f"--out_dir={out}", "--init_from=resume"],
                   cwd=ROOT, check=True, capture_output=True, env=env)
    assert losses(read_log(out)) == losses(reference)  # every evaluation once, same losses
    final = torch.load(ckpt, weights_only=True)["model"]
    expected = torch.load(tmp_path / "reference" / "ckpt.pt", weights_only=True)["model"]
    assert all(torch.equal(final[k], expected[k]) for k in expected)
