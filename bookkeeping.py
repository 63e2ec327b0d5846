"""
train.py's run bookkeeping, which a reader of the training loop can skip: the model checked
against the settings (checkpoints.py checks the data against the run it starts from), first;
out_dir held by one run at a time (OutDir); the run (Run): its training seconds, log.jsonl and
W&B, checkpoints saved atomically and never with weights that diverged, every process's random
streams for an exact resume, Ctrl-C and SIGTERM.
"""

import errno
import fcntl
import functools
import gc
import json
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import asdict

import torch
import torch.distributed as dist

import convert
from configurator import fail, interrupts_in_one_line, make
from checkpoints import rng_state, set_rng_state
from devices import bf16_is_native, peak_flops
from mot import GPT, MixtureOfTokens

# ----------------------------------------------------------------------------- the start


def check_model(config, model: GPT):
    """The settings with the model's config, and their checks that need the model."""
    config = make(type(config), **{**asdict(config), **asdict(model.config)})
    for block in model.transformer.h:  # the FFNs that mix groups of examples need whole groups
        if config.batch_size % block.ffn.group_size:
            fail(f"batch_size={config.batch_size} (the micro-batch of one step) must be a "
                 f"multiple of group_size={block.ffn.group_size}: {config.ffn} mixes groups "
                 f"of group_size examples; change either")
    if config.temperature_final is not None and (
            not model.ffns(MixtureOfTokens) or model.config.learnable_temperature):
        fail("temperature_final anneals a fixed MoT temperature: use it with a MoT model and "
             "learnable_temperature=False")
    device = torch.device(config.device)
    if device.type == "cuda" and config.dtype == "bfloat16" and not bf16_is_native(device):
        print(f"warning: dtype=bfloat16 is emulated on this GPU (compute capability "
              f"{'.'.join(map(str, torch.cuda.get_device_capability(device)))}, before 8.0): "
              f"slow; --dtype=float16 is its native dtype", file=sys.stderr)
    return config


def print_summary(model: GPT, changes: dict, iter_num: int) -> None:
    """The model's size and cost, what a resume changed, and a warning for a non-causal FFN."""
    print(f"{model.config.ffn} GPT: {model.get_num_params() / 1e6:.2f}M parameters, "
          f"{model.get_num_active_params() / 1e6:.2f}M active per token, "
          f"{model.flops_per_token() / 1e6:.1f} MFLOPs per token (fwd+bwd)")
    if changes:
        print("resumed at iter {}, changed: {}".format(iter_num, ", ".join(
            f"{key} {old!r} -> {new!r}" for key, (old, new) in changes.items())))
    if not all(block.ffn.causal for block in model.transformer.h):
        what = (f"this MoE (moe_routing={model.config.moe_routing!r}, capacity_factor="
                f"{model.config.capacity_factor})" if model.config.ffn == "moe"
                else f"this {model.config.ffn} model")
        print(f"warning: {what} is not causal: tokens compete for the experts with later "
              f"positions, so its val loss is better than a language model's could be; a "
              f"training baseline only (log.jsonl: causal false)", file=sys.stderr)


# ----------------------------------------------------------------------------- out_dir


class OutDir:
    """A run's out_dir (ckpt.pt, log.jsonl), held by one run at a time: rank 0 locks the folder
    itself (flock) before anything is written: no lock file to delete by accident or to leave
    behind at a kill -9 (the kernel releases the lock however the process ends). Every file is
    written through the open folder, with O_NOFOLLOW: never through a symlink put there, never
    into another folder put at its path. eval_only writes nothing and takes no lock."""
    held = []  # the OutDirs this process holds, for guard to release

    def __init__(self, config, hold: bool):
        self.path, self.fd, self.made_root = config.out_dir, None, None
        self.ckpt_path, self.log_path = (os.path.join(config.out_dir, name)
                                         for name in ("ckpt.pt", "log.jsonl"))
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            fail(f"out_dir={self.path!r} is a file: give a directory")
        if hold:
            try:
                if not os.path.isdir(self.path):  # release removes what it makes, if unused
                    self.made_root = os.path.abspath(self.path)  # the topmost folder it makes
                    while not os.path.isdir(os.path.dirname(self.made_root)):
                        self.made_root = os.path.dirname(self.made_root)
                    os.makedirs(self.path)
                self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self.fd)
                fail(f"out_dir={self.path!r} is in use by another run: wait for it to end, or "
                     f"choose another --out_dir")
            except OSError as e:
                fail(f"cannot write to out_dir={self.path!r} ({e.strerror}): choose another "
                     f"--out_dir")
            OutDir.held.append(self)

    def holds(self) -> bool:
        """Whether the folder at out_dir is still the one held (not removed, or replaced)."""
        try:
            here, held = os.stat(self.path), os.fstat(self.fd)
        except OSError:
            return False
        return (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino)

    def release(self) -> None:
        """The lock released; the folders this run made removed if it wrote nothing there."""
        made_root = self.made_root if self.holds() else None
        os.close(self.fd)
        folder = os.path.abspath(self.path)
        while made_root and os.path.isdir(folder) and not os.listdir(folder):
            os.rmdir(folder)
            folder = os.path.dirname(folder) if folder != made_root else ""

    def open(self, name: str, flags: int):
        """A file object on out_dir/name, opened through the held folder, never through a
        symlink; one line if the folder at out_dir is no longer the one held."""
        if not self.holds():
            fail(f"out_dir={self.path!r} was removed or replaced while this run wrote to it: it "
                 f"stopped writing there (its last checkpoint is wherever that folder went)")
        try:
            fd = os.open(name, flags | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                         dir_fd=self.fd)
        except OSError as e:
            why = e.strerror if e.errno != errno.ELOOP else "a symlink: no write goes through one"
            fail(f"cannot write {os.path.join(self.path, name)} ({why}): remove it, or choose "
                 f"another --out_dir")
        return os.fdopen(fd, "ab" if flags & os.O_APPEND else "wb")

    def replace(self, name: str, write) -> None:
        """out_dir/name written whole by write(file) into a temporary file, then renamed over
        it: an interrupted write leaves the old file intact."""
        f = self.open(name + ".tmp", os.O_CREAT | os.O_TRUNC)
        try:
            with f:
                write(f)
            os.replace(name + ".tmp", name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            os.remove(name + ".tmp", dir_fd=self.fd)
            raise

    def prepare(self, resumed_iter) -> None:
        """The first write of a run, after every check. A new run starts an empty log, after
        deleting the checkpoint it overwrites. A resumed run keeps the log lines up to resumed_iter,
        the last evaluation its checkpoint holds: those after it (cut off before their checkpoint,
        or with none) are evaluated again. A line cut off before its newline is dropped."""
        kept = []
        if resumed_iter is not None and os.path.exists(self.log_path):
            try:
                with open(self.log_path, encoding="utf-8") as f:
                    lines = f.readlines()
            except (OSError, UnicodeDecodeError) as e:
                fail(f"cannot read {self.log_path} ({e}): move it away to resume without it")
            for number, line in enumerate(lines, 1):
                if not line.strip() or not line.endswith("\n"):
                    continue
                try:
                    iter_num = json.loads(line)["iter"]
                except (ValueError, TypeError, KeyError):
                    fail(f"{self.log_path}, line {number}, is not a line of this run's log: "
                         f"remove that line to resume")
                if type(iter_num) is not int:
                    fail(f"{self.log_path}, line {number}, has iter={iter_num!r}: remove that "
                         f"line to resume")
                if iter_num <= resumed_iter:
                    kept.append(line)
        try:
            for name in ("log.jsonl.tmp", "ckpt.pt.tmp"):  # refused now, not at the first save
                if os.path.islink(os.path.join(self.path, name)):
                    self.open(name, 0)  # open's one line
            if resumed_iter is None and os.path.lexists(self.ckpt_path):  # --overwrite=True
                os.remove("ckpt.pt", dir_fd=self.fd)
            self.replace("log.jsonl", lambda f: f.write("".join(kept).encode()))
        except OSError as e:
            fail(f"cannot write to out_dir={self.path!r} ({e.strerror}): free some space or "
                 f"choose another --out_dir")

    def append_line(self, line: str) -> None:
        """A line appended to log.jsonl; a full disk is one line (the checkpoint stays)."""
        try:
            with self.open("log.jsonl", os.O_APPEND) as f:
                f.write(line.encode())
        except OSError as e:
            self.full_disk(f"write {self.log_path}", e)

    def full_disk(self, what: str, e: OSError) -> None:
        """A write that failed (a full disk) as one line: the space free, and the way on."""
        free = shutil.disk_usage(os.path.abspath(self.path)).free
        way_on = ("the previous checkpoint is intact: free some space and continue with "
                  "--init_from=resume" if os.path.exists(self.ckpt_path)
                  else "free some space and start again with --overwrite=True")
        fail(f"cannot {what} ({e.strerror}): {free:,} bytes are free there; {way_on}")


def guard(function):
    """function (train.main), Ctrl-C and SIGTERM one line until Run takes them over; then,
    however it ends, its out_dir released and the handlers of SIGINT and SIGTERM as they were."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        handlers = interrupts_in_one_line()
        held = len(OutDir.held)
        try:
            return function(*args, **kwargs)
        finally:
            while len(OutDir.held) > held:
                OutDir.held.pop().release()
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
    return wrapper


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(checkpoint: dict, out: OutDir) -> None:
    """Written atomically (an interrupted save keeps the previous one); a full disk: one line."""
    try:  # into a Python file: a full disk is then an OSError (ENOSPC), not a C++ RuntimeError
        out.replace("ckpt.pt", lambda f: torch.save(checkpoint, f))
    except OSError as e:
        out.full_disk(f"save {out.ckpt_path}", e)


def strict_json(value):
    """value with None (null) for NaN and the infinities: log.jsonl is strict JSON (RFC 8259 has
    neither), which jq and pandas read."""
    if isinstance(value, (dict, list)):  # a list per layer
        return {key: strict_json(v) for key, v in value.items()} if isinstance(value, dict) else [
            strict_json(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


# ----------------------------------------------------------------------------- the run


class Run:
    """What the loop does to the run besides training. It restores a resumed run's optimizer,
    scaler and random streams, then makes the run's first write (W&B, out_dir). Then it times the
    steps: the clock is read at log steps, evaluations and stops only, because on a GPU a read
    waits for the steps launched (a sync); it writes log.jsonl, saves checkpoints (never weights
    that diverged), and turns Ctrl-C and SIGTERM into a checkpoint and a stop."""

    def __init__(self, config, out: OutDir, model: GPT, optimizer, scaler, meta: dict, batches,
                 changes: dict, checkpoint, device: str):
        self.config, self.out, self.model, self.optimizer = config, out, model, optimizer
        self.scaler, self.meta, self.batches, self.device = scaler, meta, batches, device
        self.rank, self.world_size = (int(os.environ.get(key, default))
                                      for key, default in (("RANK", 0), ("WORLD_SIZE", 1)))
        self.master, self.ddp, self.changes, self.stop, self.received = (
            self.rank == 0, self.world_size > 1, changes, 0, [])
        self.iter_num, self.best_val_loss, self.elapsed_s = 0, float("inf"), 0.0
        self.resumed_at = self.saved_iter = None  # the evaluation and checkpoint it resumes
        if config.init_from == "resume":
            try:
                optimizer.load_state_dict(checkpoint["optimizer"])
            except ValueError as e:  # parameter groups of another layout
                fail(f"the optimizer state in the checkpoint does not fit this model ({e}): it "
                     f"was written by another version of mot.py; resume it with that version")
            if scaler.is_enabled() and checkpoint["scaler"]:  # float16 then and now
                scaler.load_state_dict(checkpoint["scaler"])
            set_rng_state(checkpoint["rng"][self.rank], batches.generator, device)
            self.iter_num = self.saved_iter = checkpoint["iter_num"]
            # an interrupt saves before its iteration's evaluation: the resumed run evaluates it
            self.resumed_at = self.iter_num - (not checkpoint.get("evaluated", True))
            self.best_val_loss, self.elapsed_s = checkpoint["best_val_loss"], checkpoint[
                "elapsed_s"]
        self.first_iter, self.wandb_run = self.iter_num, None
        self.tokens_per_iter = config.gradient_accumulation_steps * config.batch_size * (
            config.block_size)
        self.peak_flops = peak_flops(device, config.native_dtype())  # None: no MFU printed
        # since the last log line: tokens, seconds, the warm-up's; the last steps' seconds each
        self.tokens, self.seconds, self.warmup_s, self.step_seconds = 0, 0.0, None, None
        if not config.eval_only and self.master and config.wandb_log:
            self.wandb_run = start_wandb(config)
        if not config.eval_only:  # from the first write on, signals are read after each step
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, lambda signum, frame: self.received.append(signum))
        if not config.eval_only and self.master:
            out.prepare(self.resumed_at)
        if self.master:
            print_summary(model, changes, self.iter_num)
        self.clock_start, self.clock_steps = time.perf_counter(), 0

    def read_clock(self, counted: bool) -> None:
        """The seconds since the last read, as training time if counted."""
        if torch.device(self.device).type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        steps, seconds = self.clock_steps, now - self.clock_start
        self.clock_start, self.clock_steps = now, 0
        if counted:
            self.tokens += steps * self.tokens_per_iter
            self.seconds, self.elapsed_s = self.seconds + seconds, self.elapsed_s + seconds
            self.step_seconds = seconds / steps if steps else self.step_seconds
        return seconds

    def rng_states(self):
        """Every process's random streams, in rank order, on rank 0 (elsewhere None): each draws
        its own batches and dropout masks, and a resumed run gives each its own back."""
        if not self.ddp:
            return [rng_state(self.batches)]
        states = [None] * self.world_size if self.master else None
        dist.gather_object(rng_state(self.batches), states, dst=0)
        return states

    def pause_clock(self) -> None:
        """Before an evaluation (every process): the steps' seconds counted, the streams kept."""
        self.read_clock(counted=True)
        self.states = self.rng_states()

    def restart_clock(self) -> None:  # after an evaluation: its seconds are not training's
        self.read_clock(counted=False)

    def record_evaluation(self, iter_num: int, losses: dict, lr: float) -> None:
        """The evaluation's log line (with the speed since the last one, MoT's τ and whether every
        layer is causal), then its checkpoint (always, or when val loss improved). The line
        first: a resumed run drops the lines past its checkpoint's iteration and writes them
        again, so no crash leaves a duplicate or gap. A loss that is not finite stops the run."""
        record = dict(iter=iter_num, **losses, lr=lr, elapsed_s=self.elapsed_s,
                      tokens_per_s=self.tokens / self.seconds if self.seconds else None,
                      warmup_s=self.warmup_s,
                      temperature=[m.temperature.item()
                                   for m in self.model.ffns(MixtureOfTokens)] or None,
                      causal=all(block.ffn.causal for block in self.model.transformer.h))
        if self.changes:
            record["changed_on_resume"], self.changes = self.changes, {}
        self.out.append_line(json.dumps(strict_json(record), allow_nan=False) + "\n")
        if self.wandb_run is not None:
            log_record(self.wandb_run, record)
        self.tokens, self.seconds, self.warmup_s = 0, 0.0, None
        if not (math.isfinite(losses["train_loss"]) and math.isfinite(losses["val_loss"])):
            self.diverged("the eval loss", iter_num)
        improved = losses["val_loss"] < self.best_val_loss
        self.best_val_loss = min(self.best_val_loss, losses["val_loss"])
        if (improved or self.config.always_save_checkpoint) and (
                iter_num > 0 or self.config.max_iters == 0):  # iter 0 saved only as the last
            self.save(iter_num, self.states)

    def step_done(self, iter_num: int, lm_loss: torch.Tensor) -> None:
        """One optimizer step launched. The first of this process (compilation, first
        allocations) is timed apart as warmup_s; at log steps rank 0 prints the loss (the last
        micro-step's: the only read of the step) and the speed, and stops a run that diverged."""
        self.clock_steps += 1
        log_now = iter_num % self.config.log_interval == 0
        if iter_num == self.first_iter:
            self.warmup_s = (self.warmup_s or 0.0) + self.read_clock(counted=False)
            self.step_seconds = None
        elif log_now:
            self.read_clock(counted=True)
        if not (log_now and self.master):
            return
        loss = lm_loss.item()
        if self.step_seconds is None:
            print(f"iter {iter_num}: loss {loss:.4f}, warm-up step {self.warmup_s * 1000:.1f}ms "
                  f"(compilation, first allocations: not timed)")
        else:
            speed = (f"time {self.step_seconds * 1000:.1f}ms, "
                     f"{self.tokens_per_iter / self.step_seconds:,.0f} tokens/s")
            if self.peak_flops is not None:  # a GPU whose peak is known
                sequences = self.config.gradient_accumulation_steps * self.config.batch_size
                mfu = self.model.estimate_mfu(sequences // self.world_size, self.step_seconds,
                                              self.peak_flops)
                speed += f", mfu {100 * mfu:.2f}%"
            print(f"iter {iter_num}: loss {loss:.4f}, {speed}")
        if not math.isfinite(loss):
            self.diverged("the train loss", iter_num)

    def stop_requested(self, iter_num: int) -> bool:
        """Whether a signal stops the run after this step. Under DDP the processes agree on it
        at every log_interval-th step (an all-reduce: a wait for the GPU), all after one step."""
        self.stop = self.received[0] if self.received and not self.ddp else 0
        if self.ddp and iter_num % self.config.log_interval == 0:
            flag = torch.tensor(self.received[0] if self.received else 0, device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            self.stop = int(flag.item())
        return bool(self.stop)

    def save_and_stop(self, iter_num: int) -> None:
        """A checkpoint at iter_num, before its evaluation: the resumed run evaluates it."""
        self.read_clock(counted=True)
        states = self.rng_states()
        if self.master:
            self.save(iter_num, states, evaluated=False)

    def save(self, iter_num: int, rng_states: list, evaluated: bool = True) -> None:
        weights = self.model.state_dict()
        bad = convert.nonfinite(weights)  # even with finite losses: an expert no eval token hit
        if bad:
            self.diverged(f"weight {bad[0]}", iter_num)
        save_checkpoint(dict(model=weights, optimizer=self.optimizer.state_dict(),
                             scaler=self.scaler.state_dict(), model_args=asdict(self.model.config),
                             iter_num=iter_num, best_val_loss=self.best_val_loss,
                             elapsed_s=self.elapsed_s, config=asdict(self.config), meta=self.meta,
                             rng=rng_states, evaluated=evaluated), self.out)
        self.saved_iter = iter_num

    def diverged(self, what: str, iter_num: int) -> None:
        kept = (f"{self.out.ckpt_path} keeps iter {self.saved_iter}, the last finite checkpoint: "
                f"resume it (--init_from=resume)" if self.saved_iter is not None
                else "no checkpoint was saved: start again")
        fail(f"{what} is not finite at iter {iter_num}: the run diverged; {kept} with a lower "
             f"learning_rate or with grad_clip set (e.g. 1.0), or train in bfloat16 instead of "
             f"float16")

    def finish(self, iter_num: int) -> None:
        """W&B closed, the processes leaving together, a stopped run's exit code."""
        if self.wandb_run is not None:
            self.wandb_run.finish()
        if self.ddp:  # leave together, once rank 0 has written its last evaluation and checkpoint
            dist.barrier()
            dist.destroy_process_group()
            # the DDP wrapper (a reference cycle) holds the process group: collected now, while
            # its gloo threads can end; at the interpreter's exit they abort the process
            gc.collect()
        if self.stop:
            if self.master:
                print(f"interrupted at iter {iter_num}: saved {self.out.ckpt_path}; continue with "
                      f"--init_from=resume", file=sys.stderr)
            raise SystemExit(128 + self.stop)  # the shell's code for "ended by signal `stop`"


def start_wandb(config):
    """A Weights & Biases run of the settings (record_evaluation sends it each log.jsonl line), or
    one line saying why it could not start."""
    import wandb
    try:
        return wandb.init(project=config.wandb_project, name=config.wandb_run_name,
                          config=asdict(config))
    except Exception as e:  # no login, no network, a bad project name: wandb's own errors
        fail(f"--wandb_log=True: W&B did not start ({str(e).strip().splitlines()[0]}): log in "
             f"with `wandb login`, set WANDB_MODE=offline, or use --wandb_log=False")


def log_record(wandb_run, record: dict) -> None:
    """The numbers of a log.jsonl line, a list per layer as name/0, name/1, ..."""
    numbers = {}
    for key, value in record.items():
        for name, v in ([(f"{key}/{i}", v) for i, v in enumerate(value)]
                        if isinstance(value, list) else [(key, value)]):
            if isinstance(v, (int, float)):
                numbers[name] = v
    wandb_run.log(numbers, step=record["iter"])
