"""
train.py's run bookkeeping, which a reader of the training loop can skip:

- settings: train.DEFAULTS, then config files and --key=value in order, each typed (as its
  default, or as GPTConfig annotates it) and ranged; --help lists them (configure, validate)
- the start: resume, another run's out_dir (transition, upcycle, finetune) or GPT-2 (load_start),
  the data files (dataset.load) and the model, all checked before anything is written
- out_dir: one run at a time, an OS lock held for the run's life (OutDir); its first write
  deletes an overwritten run, or cuts a resumed run's log back to its checkpoint (OutDir.prepare)
- checkpoints saved atomically, never with weights that diverged (Checkpoints), with every
  process's random streams for an exact resume (resume)
- log.jsonl and W&B (RunLog), the training seconds (Clock), Ctrl-C and SIGTERM (stop_signal)
Every mistake a user can make is one line, "error: ...", naming the fix (fail).
"""

import ast
import errno
import fcntl
import functools
import gc
import importlib.util
import io
import json
import math
import os
import shutil
import signal
import sys
import time
import traceback
import types
import typing
from dataclasses import asdict, fields

import numpy as np
import torch
import torch.distributed as dist

import convert
from configurator import fail
from devices import bf16_is_native, device_here, device_problem, native_dtype, peak_flops
from mot import FFNS, GPT, GPTConfig, MixtureOfTokens

MODEL_FIELDS = tuple(f.name for f in fields(GPTConfig) if f.name != "vocab_size")
# what convert.upcycle keeps from its source; the new layers take this run's other MODEL_FIELDS
KEPT_BY_UPCYCLE = tuple(f for f in MODEL_FIELDS if f in convert.TRUNK_FIELDS)
NEW_LAYER_FIELDS = tuple(f for f in MODEL_FIELDS
                         if f not in KEPT_BY_UPCYCLE + ("ffn", "expert_bias"))
# the types of the settings whose default is None, other than GPTConfig's (annotated there)
OPTIONAL_TYPES = dict(transition=str, upcycle=str, temperature_final=float)
# What a resumed run may change: where things are, how long it trains, how often it evaluates and
# logs, the learning-rate and temperature schedules. Every other setting comes from the checkpoint
# (model, data, batches, optimizer, seed), and a value given that differs is an error.
MAY_CHANGE_ON_RESUME = ("out_dir", "init_from", "overwrite", "data_root", "device", "dtype",
                        "compile", "eval_only", "max_iters", "eval_interval", "log_interval",
                        "always_save_checkpoint", "learning_rate", "decay_lr", "warmup_iters",
                        "lr_decay_iters", "min_lr", "grad_clip", "temperature_final",
                        "wandb_log", "wandb_project", "wandb_run_name")
UPCYCLABLE = [key for key, ffn in FFNS.items() if ffn.upcyclable]  # --upcycle's choices
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FLOAT_WORDS = ("inf", "+inf", "-inf", "infinity", "nan")  # what float() takes beyond literals
INT64 = 2 ** 63  # integer settings lie in [-INT64, INT64): what torch takes


# ----------------------------------------------------------------------------- settings


def setting_types(defaults: dict) -> dict:
    """(type, may be None) of every setting."""
    hints = typing.get_type_hints(GPTConfig)
    result = {}
    for key, default in defaults.items():
        if key in hints:
            args = typing.get_args(hints[key])  # Optional[X] is Union[X, None]
            result[key] = (args[0], True) if type(None) in args else (hints[key], False)
        else:
            result[key] = (OPTIONAL_TYPES[key], True) if default is None else (type(default),
                                                                                 False)
    return result


def check_type(key: str, value, kind: type, optional: bool):
    """value as the setting's type (an int where a float is expected becomes one), or one line:
    bool is never a number, a float is finite, an int fits in 64 bits."""
    if value is None:
        if optional:
            return None
        fail(f"--{key}=None: expected {kind.__name__}")
    if kind is float and type(value) is int:
        value = float(value)
    if kind is float and isinstance(value, str) and value.strip().lower() in FLOAT_WORDS:
        value = float(value)  # inf, nan: numbers, though not finite ones
    if type(value) is not kind:
        fail(f"--{key}={value!r} has type {type(value).__name__}, expected {kind.__name__}")
    if kind is float and not math.isfinite(value):
        fail(f"--{key}={value!r}: must be a finite number")
    if kind is int and not -INT64 <= value < INT64:
        fail(f"--{key}={value}: beyond a 64-bit integer, which torch takes")
    return value


def parse_value(text: str):
    """A --key=value's value: a Python literal, or else the text (--device=cpu)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def read_config_file(path: str) -> dict:
    """The assignments of a config file (Python; imports and _private names are its own), or one
    line naming what is wrong with it."""
    if not os.path.isfile(path):
        fail(f"config file {path} " + ("is a directory: give a .py file of assignments"
                                       if os.path.isdir(path) else "not found"))
    kind = {".json": "JSON", ".yaml": "YAML", ".yml": "YAML", ".toml": "TOML"}.get(
        os.path.splitext(path)[1].lower())
    if kind:
        fail(f"config file {path} is {kind}: train.py reads Python assignments such as "
             f"n_layer = 4, as the files in config/")
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
    except UnicodeDecodeError:
        fail(f"config file {path} is not UTF-8 text: save it as UTF-8")
    except OSError as e:
        fail(f"cannot read config file {path} ({e.strerror})")
    namespace = {}
    try:
        exec(compile(source, path, "exec"), {}, namespace)
    except SyntaxError as e:
        fail(f"config file {path}, line {e.lineno}: {e.msg}")
    except Exception as e:  # the line of the file that raised, not of something it called
        line = [frame.lineno for frame in traceback.extract_tb(e.__traceback__)
                if frame.filename == path][-1]
        fail(f"config file {path}, line {line}: {type(e).__name__}: {e}")
    settings = {key: value for key, value in namespace.items()
                if not key.startswith("_") and not isinstance(value, types.ModuleType)}
    if not settings:
        found = "JSON" if looks_like_json(source) else "no assignment"
        fail(f"config file {path} assigns no setting (found {found}): write Python assignments "
             f"such as n_layer = 4, as the files in config/")
    return settings


def looks_like_json(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


def print_help(defaults: dict, usage: str) -> None:
    print(usage.strip() + "\n\nsettings (--key=value) and their defaults:")
    for key, value in defaults.items():
        print(f"  --{key}={value!r}" if isinstance(value, str) else f"  --{key}={value}")


def configure(argv: list, defaults: dict, usage: str = ""):
    """defaults, updated by config files and --key=value arguments in the order given, each value
    typed; and the set of keys the files and arguments set. -h or --help: the settings listed."""
    if "-h" in argv or "--help" in argv:
        print_help(defaults, usage)
        raise SystemExit(0)
    kinds = setting_types(defaults)
    config, given = dict(defaults), set()
    for arg in argv:
        if not arg.startswith("--"):
            updates = read_config_file(arg)
        else:
            key, sep, text = arg[2:].partition("=")
            if not sep:
                fail(f"{arg}: write --{key}=VALUE")
            updates = {key: parse_value(text)}
        for key, value in updates.items():
            if key not in config:
                fail(f"unknown setting {key!r} (from {arg}); python train.py --help lists the "
                     f"settings")
            config[key] = check_type(key, value, *kinds[key])
            given.add(key)
    if config["dtype"] == "auto" and device_here(config["device"]):  # else validate fails
        config["dtype"] = native_dtype(config["device"])
    return config, given


def validate(c: dict, world_size: int, out: "OutDir") -> None:
    """Every check of the settings that needs neither data nor model (nothing is written yet)."""
    problem = device_problem(c["device"])
    if problem:
        fail(f"device={c['device']!r}: {problem}")
    rules = [  # (setting, holds, what it must be)
        ("batch_size", c["batch_size"] >= 1, "must be >= 1"),
        ("gradient_accumulation_steps", c["gradient_accumulation_steps"] >= 1
         and c["gradient_accumulation_steps"] % world_size == 0,
         f"must be a positive multiple of the number of processes ({world_size}): each process "
         f"runs gradient_accumulation_steps/{world_size} micro-steps"),
        ("eval_interval", c["eval_interval"] >= 1, "must be >= 1"),
        ("eval_iters", c["eval_iters"] >= 1, "must be >= 1: an evaluation averages that many "
                                             "batches"),
        ("log_interval", c["log_interval"] >= 1, "must be >= 1"),
        ("max_iters", c["max_iters"] >= 0, "must be >= 0"),
        ("learning_rate", c["learning_rate"] >= 0, "must be >= 0"),
        ("min_lr", c["min_lr"] >= 0, "must be >= 0"),
        ("warmup_iters", c["warmup_iters"] >= 0, "must be >= 0"),
        ("lr_decay_iters", not c["decay_lr"] or c["lr_decay_iters"] > c["warmup_iters"],
         f"must be > warmup_iters={c['warmup_iters']} (the cosine decay runs from warmup_iters "
         f"to lr_decay_iters), or set decay_lr=False"),
        ("temperature_final", c["temperature_final"] is None or c["temperature_final"] > 0,
         "must be > 0 (τ is annealed geometrically), or None for no annealing"),
        ("lr_decay_iters", c["temperature_final"] is None or c["lr_decay_iters"] >= 1,
         "must be >= 1: temperature_final is reached at lr_decay_iters"),
        ("weight_decay", c["weight_decay"] >= 0, "must be >= 0"),
        ("beta1", 0 <= c["beta1"] < 1, "must be in [0, 1)"),
        ("beta2", 0 <= c["beta2"] < 1, "must be in [0, 1)"),
        ("grad_clip", c["grad_clip"] >= 0, "must be >= 0 (0: no clipping)"),
        ("seed", 0 <= c["seed"] < INT64 - world_size, "must be in [0, 2**63 - processes): "
                                                     "each process seeds with seed + rank"),
        ("dtype", c["dtype"] in DTYPES, f"must be one of auto, {', '.join(DTYPES)}"),
        ("transition", c["transition"] in (None, "discrete", "token_choice"),
         "must be 'discrete' or 'token_choice'"),
        ("transition", c["transition"] is None or c["init_from"] != "scratch",
         "converts a MoT run: give that run's out_dir as --init_from=DIR"),
        ("upcycle", c["upcycle"] is None or c["upcycle"] in UPCYCLABLE,
         f"must be one of {', '.join(map(repr, UPCYCLABLE))}"),
        ("upcycle", c["upcycle"] is None or c["init_from"] != "scratch",
         "grows a dense model: give its out_dir, or gpt2, as --init_from"),
        ("upcycle", c["upcycle"] is None or c["transition"] is None,
         "and transition both convert the source: give one"),
        ("wandb_log", not c["wandb_log"] or importlib.util.find_spec("wandb") is not None,
         "needs the wandb package: pip install wandb"),
    ]
    for key, holds, rule in rules:
        if not holds:
            fail(f"{key}={c[key]!r}: {rule}")
    device = torch.device(c["device"])
    if device.type == "cuda" and c["dtype"] == "bfloat16" and not bf16_is_native(device):
        warning = (f"dtype=bfloat16 is emulated on this GPU (compute capability "
                   f"{'.'.join(map(str, torch.cuda.get_device_capability(device)))}, before 8.0)")
        if c["compile"]:
            fail(f"{warning}, and torch.compile fails on it: use --dtype=float16 (its native "
                 f"dtype, with a GradScaler) or --compile=False")
        print(f"warning: {warning}: slow; --dtype=float16 is its native dtype", file=sys.stderr)
    if c["init_from"] != "resume" and not c["overwrite"] and not c["eval_only"]:
        if os.path.exists(out.ckpt_path):
            fail(f"{out.ckpt_path} holds a run: continue it with --init_from=resume, or delete "
                 f"it and start over with --overwrite=True")
        if os.path.exists(out.log_path):
            fail(f"{out.log_path} holds a run's log (its ckpt.pt is not there): start over with "
                 f"--overwrite=True, or choose another --out_dir")


def check_model(settings: dict, model: GPT) -> None:
    """The checks of the settings that need the model."""
    for block in model.transformer.h:  # the FFNs that mix groups of examples need whole groups
        if settings["batch_size"] % block.ffn.group_size:
            fail(f"batch_size={settings['batch_size']} (the micro-batch of one step) must be a "
                 f"multiple of group_size={block.ffn.group_size}: {settings['ffn']} mixes groups "
                 f"of group_size examples; change either")
    if settings["temperature_final"] is not None and (
            not model.ffns(MixtureOfTokens) or model.config.learnable_temperature):
        fail("temperature_final anneals a fixed MoT temperature: use it with a MoT model and "
             "learnable_temperature=False")


# ----------------------------------------------------------------------------- the start


def settings_from_checkpoint(c: dict, given: set, checkpoint: dict, path: str, keys,
                             may_change=()) -> dict:
    """Set the settings `keys` of c to those the checkpoint at `path` was trained with. A value
    given that differs is an error, unless its key is in may_change. Returns the changes,
    {key: [checkpoint's value, new value]}."""
    saved = {**checkpoint["config"], **checkpoint["model_args"]}
    changes = {}
    for key in keys:
        if key not in given or key not in saved:
            c[key] = saved.get(key, c[key])
        elif c[key] != saved[key]:
            if key not in may_change:
                kept = ("a resumed run keeps all other settings (docs/runs.md lists those that "
                        "may change)" if may_change else "a converted run keeps its model and data")
                fail(f"{key}={c[key]!r} contradicts {path}, trained with {key}={saved[key]!r}: "
                     f"{kept}; drop the setting, or train a new run in another out_dir")
            changes[key] = [saved[key], c[key]]
    return changes


def load_checkpoint(path: str, device: str):
    """convert.from_checkpoint, with its error as one line."""
    try:
        return convert.from_checkpoint(path, device)
    except ValueError as e:
        fail(str(e))


def is_pretrained(init_from: str) -> bool:
    """Whether init_from names GPT-2's weights (a gpt2* name, or a directory of transformers')."""
    return (init_from.startswith("gpt2") and not os.path.isdir(init_from)
            or os.path.isfile(os.path.join(init_from, "config.json")))


def load_source(init_from: str):
    """The model a run starts from and its checkpoint: train.py's in out_dir init_from, or GPT-2
    with a checkpoint that holds only its model settings (meta None: any GPT-2 BPE data)."""
    if not is_pretrained(init_from):
        return load_checkpoint(os.path.join(init_from, "ckpt.pt"), "cpu")
    try:
        model = convert.from_pretrained(init_from)
    except (ImportError, OSError, ValueError) as e:
        fail(f"--init_from={init_from}: {str(e).strip().splitlines()[0]}")
    return model.train(), dict(config={}, model_args=asdict(model.config), meta=None)


def load_start(settings: dict, given: set, out: "OutDir", world_size: int, default_device: str):
    """The model a run starts from (None from scratch), its checkpoint, and the settings a resume
    changes. A resumed run is the run in its checkpoint (on this machine's device if its own is
    not here); a run from another's out_dir or GPT-2 keeps its model and data settings: both are
    set in `settings` here, before the checks and the seed (the seed's draws come later)."""
    if settings["init_from"] == "scratch":
        return None, None, {}
    if settings["init_from"] == "resume":
        if not os.path.exists(out.ckpt_path) and os.path.exists(out.log_path):
            fail(f"{out.log_path} is there but not {out.ckpt_path}: put the checkpoint back to "
                 f"resume, or start over with --overwrite=True")
        model, checkpoint = load_checkpoint(out.ckpt_path, "cpu")
        saved = [k for k in settings if k not in ("out_dir", "init_from")]
        changes = settings_from_checkpoint(settings, given, checkpoint, out.ckpt_path, saved,
                                           MAY_CHANGE_ON_RESUME)
        if "device" not in given and not device_here(settings["device"]):  # another machine
            print(f"note: {out.ckpt_path} trained on {settings['device']}, which is not here: "
                  f"resuming on {default_device}", file=sys.stderr)
            changes["device"] = [settings["device"], default_device]
            settings["device"] = default_device
        if len(checkpoint["rng"]) != world_size:
            fail(f"{out.ckpt_path} was written by {len(checkpoint['rng'])} processes, this run "
                 f"has {world_size}: resume with as many (torchrun --nproc_per_node="
                 f"{len(checkpoint['rng'])}), each continues its own batches")
        return model, checkpoint, changes
    model, checkpoint = load_source(settings["init_from"])  # converted, grown, or as it is
    # upcycled: the new layers take this run's settings; GPT-2 as it is: a dense FFN
    kept = (KEPT_BY_UPCYCLE if settings["upcycle"] else KEPT_BY_UPCYCLE + ("ffn", "dropout")
            if is_pretrained(settings["init_from"]) else MODEL_FIELDS)
    settings_from_checkpoint(settings, given, checkpoint, settings["init_from"],
                             kept + ("dataset",))
    return model, checkpoint, {}


def check_data(settings: dict, checkpoint, meta: dict) -> None:
    """That the dataset's meta.json fits the checkpoint the run starts from, if any."""
    if checkpoint is not None and checkpoint["meta"] is None and meta["tokenizer"] != "gpt2":
        fail(f"--init_from={settings['init_from']} is GPT-2, which reads the GPT-2 BPE, but "
             f"dataset {settings['dataset']!r} has tokenizer {meta['tokenizer']!r}: use a GPT-2 "
             f"BPE dataset such as shakespeare (python data/shakespeare/prepare.py)")
    if checkpoint is not None and checkpoint["meta"] is not None and meta != checkpoint["meta"]:
        fail(f"{os.path.join(settings['data_root'], settings['dataset'], 'meta.json')} is not "
             f"the meta.json the checkpoint was trained with (another tokenizer or vocabulary): "
             f"give the data_root that holds its dataset {settings['dataset']!r}")


def print_summary(model: GPT, changes: dict, iter_num: int) -> None:
    """The model's size and cost, what a resume changed, and a warning for a non-causal FFN."""
    model_config = model.config
    print(f"{model_config.ffn} GPT: {model.get_num_params() / 1e6:.2f}M parameters, "
          f"{model.get_num_active_params() / 1e6:.2f}M active per token, "
          f"{model.flops_per_token() / 1e6:.1f} MFLOPs per token (fwd+bwd)")
    if changes:
        print("resumed at iter {}, changed: {}".format(iter_num, ", ".join(
            f"{key} {old!r} -> {new!r}" for key, (old, new) in changes.items())))
    if not all(block.ffn.causal for block in model.transformer.h):
        what = (f"this MoE (moe_routing={model_config.moe_routing!r}, capacity_factor="
                f"{model_config.capacity_factor})" if model_config.ffn == "moe"
                else f"this {model_config.ffn} model")
        print(f"warning: {what} is not causal: tokens compete for the experts with later "
              f"positions, so its val loss is better than a language model's could be; a "
              f"training baseline only (log.jsonl: causal false)", file=sys.stderr)


# ----------------------------------------------------------------------------- out_dir


class OutDir:
    """A run's out_dir (ckpt.pt, log.jsonl), held by one run at a time: rank 0 takes an OS lock
    (flock) on out_dir/run.lock before anything is written and keeps it for the run's life; the
    kernel releases it when the process ends, however it ends (kill -9 leaves no stale lock). The
    file names the holder's process, for the error of a second run. A run that only evaluates
    (eval_only) writes nothing and takes no lock."""
    held = []  # the OutDirs this process holds, for guard to release

    def __init__(self, path: str, hold: bool):
        self.path, self.fd, self.created = path, None, False
        self.ckpt_path, self.log_path = (os.path.join(path, f) for f in ("ckpt.pt", "log.jsonl"))
        self.lock_path = os.path.join(path, "run.lock")
        if os.path.exists(path) and not os.path.isdir(path):
            fail(f"out_dir={path!r} is a file: give a directory")
        if hold:
            self.lock()

    def lock(self) -> None:
        try:
            if not os.path.isdir(self.path):
                os.makedirs(self.path)
                self.created = True
            while True:  # until the file locked is the one at lock_path
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as e:
                    holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                    os.close(fd)
                    if e.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    fail(f"out_dir={self.path!r} is in use by another run (process {holder}): "
                         f"wait for it to end, or choose another --out_dir")
                if os.path.exists(self.lock_path) and (
                        os.stat(self.lock_path).st_ino == os.fstat(fd).st_ino):
                    break
                os.close(fd)  # the run that held it ended and removed it: lock the new file
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self.fd = fd
            OutDir.held.append(self)
        except OSError as e:
            fail(f"cannot write to out_dir={self.path!r} ({e.strerror}): choose another "
                 f"--out_dir")

    def release(self) -> None:
        """The lock file removed and the lock released (out_dir too, if this run made it and
        wrote nothing)."""
        if self.fd is None:
            return
        os.remove(self.lock_path)  # before the unlock: a run waiting on it then makes a new one
        os.close(self.fd)
        self.fd = None
        if self.created and not os.listdir(self.path):
            os.rmdir(self.path)

    def read_log(self, resumed_iter: int) -> list:
        """log.jsonl's lines up to resumed_iter (a line cut off before its newline is dropped,
        blank lines are skipped), or one line naming a line that is not the run's."""
        if not os.path.exists(self.log_path):
            return []
        kept = []
        try:
            with open(self.log_path, encoding="utf-8") as f:
                lines = f.readlines()
        except (OSError, UnicodeDecodeError) as e:
            fail(f"cannot read {self.log_path} ({e}): move it away to resume without it")
        for number, line in enumerate(lines, 1):
            if not line.strip() or not line.endswith("\n"):
                continue
            try:
                record = json.loads(line)
                iter_num = record["iter"]
            except (ValueError, TypeError, KeyError):
                fail(f"{self.log_path}, line {number}, is not a line of this run's log: remove "
                     f"that line to resume")
            if type(iter_num) is not int:
                fail(f"{self.log_path}, line {number}, has iter={iter_num!r}: remove that line "
                     f"to resume")
            if iter_num <= resumed_iter:
                kept.append(line)
        return kept

    def prepare(self, resumed_iter) -> None:
        """The first write of a run, after every check. A new run starts an empty log, after
        deleting the checkpoint of the run it overwrites. A resumed run keeps the log lines up to
        resumed_iter, the last evaluation its checkpoint holds; those after it (evaluations that
        a crash cut off before their checkpoint, or that saved none) are evaluated and written
        again."""
        kept = [] if resumed_iter is None else self.read_log(resumed_iter)
        try:
            if resumed_iter is None and os.path.exists(self.ckpt_path):  # --overwrite=True
                os.remove(self.ckpt_path)
            with open(self.log_path + ".tmp", "w") as f:
                f.writelines(kept)
            os.replace(self.log_path + ".tmp", self.log_path)
        except OSError as e:
            fail(f"cannot write to out_dir={self.path!r} ({e.strerror}): choose another "
                 f"--out_dir")


def guard(function):
    """function (train.main), then the handlers of SIGINT and SIGTERM as they were (main replaces
    them with its save-and-stop) and the out_dir locks it took released, whether it returns or
    fails: for a caller in the same process (the tests, the study)."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
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


class ByteCount(io.RawIOBase):
    """A file that keeps only the number of bytes written to it."""
    size = 0

    def write(self, data) -> int:
        self.size += len(data)
        return len(data)


def save_checkpoint(checkpoint: dict, path: str) -> None:
    """Write atomically: an interrupted save leaves the previous checkpoint intact. A failed one
    (a full disk) removes its temporary file and is one line, with the space it needs."""
    try:  # into a Python file: a full disk is then an OSError (ENOSPC), not a C++ RuntimeError
        with open(path + ".tmp", "wb") as f:
            torch.save(checkpoint, f)
        os.replace(path + ".tmp", path)
    except OSError as e:
        if os.path.exists(path + ".tmp"):
            os.remove(path + ".tmp")
        needed = ByteCount()
        torch.save(checkpoint, needed)
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
        kept = ("the previous checkpoint is intact: free some space and continue with "
                "--init_from=resume" if os.path.exists(path) else "free some space and start again")
        fail(f"cannot save {path} ({e.strerror}): it needs {needed.size:,} bytes, {free:,} "
             f"are free there; {kept}")


class Checkpoints:
    """Saves a run's checkpoints to ckpt_path, and stops a run whose loss or weights are no longer
    finite before they are saved over the last finite checkpoint. (fp16's GradScaler skips a step
    whose gradients overflow: its loss is finite, and that run goes on.)"""

    def __init__(self, path: str, model: GPT, optimizer, scaler, settings: dict, meta: dict,
                 saved_iter=None):
        self.path, self.model, self.optimizer, self.scaler = path, model, optimizer, scaler
        self.settings, self.meta, self.saved_iter = settings, meta, saved_iter

    def save(self, iter_num: int, best_val_loss: float, elapsed_s: float, rng_states: list,
             evaluated: bool = True) -> None:
        """Checkpoint the run at iter_num; `evaluated`: after iter_num's evaluation (if due)."""
        weights = self.model.state_dict()
        bad = convert.nonfinite(weights)  # even with finite losses: an expert no eval token hit
        if bad:
            self.diverged(f"weight {bad[0]}", iter_num)
        save_checkpoint(dict(model=weights, optimizer=self.optimizer.state_dict(),
                             scaler=self.scaler.state_dict(), model_args=asdict(self.model.config),
                             iter_num=iter_num, best_val_loss=best_val_loss, elapsed_s=elapsed_s,
                             config=self.settings, meta=self.meta, rng=rng_states,
                             evaluated=evaluated), self.path)
        self.saved_iter = iter_num

    def check_losses(self, losses: dict, iter_num: int) -> None:
        """Stop the run if an evaluation's loss is not finite, before anything is saved."""
        if not (math.isfinite(losses["train_loss"]) and math.isfinite(losses["val_loss"])):
            self.diverged("the eval loss", iter_num)

    def diverged(self, what: str, iter_num: int) -> None:
        kept = (f"{self.path} keeps iter {self.saved_iter}, the last finite checkpoint: resume it "
                f"(--init_from=resume)" if self.saved_iter is not None
                else "no checkpoint was saved: start again")
        fail(f"{what} is not finite at iter {iter_num}: the run diverged; {kept} with a lower "
             f"learning_rate or with grad_clip set (e.g. 1.0), or train in bfloat16 instead of "
             f"float16")


def rng_state(batches) -> dict:
    """The random streams training draws from: dropout (torch, and cuda: the GPU this process
    trains on, None on a CPU) and the batches (data) of train.TrainBatches."""
    device = torch.device(batches.device)
    return dict(torch=torch.get_rng_state(), data=batches.state,
                cuda=torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def set_rng_state(state: dict, data_rng: torch.Generator, device: str) -> None:
    """The streams of rng_state back, on this machine: the GPU's stream where it trains on one
    and the checkpoint has one; else dropout on the GPU starts from the seed (a note says so)."""
    torch.set_rng_state(state["torch"].cpu())
    data_rng.set_state(state["data"].cpu())
    device = torch.device(device)
    if device.type != "cuda":
        return  # a GPU's stream, if saved, has nothing to draw for here
    saved = state.get("cuda")
    if isinstance(saved, list):  # written by an earlier train.py: the stream of every visible GPU
        saved = saved[device.index or 0] if (device.index or 0) < len(saved) else None
    if saved is None:
        print(f"note: the checkpoint has no random stream for {device} (it trained elsewhere): "
              f"dropout continues from the seed's stream, not from where it stopped",
              file=sys.stderr)
    else:
        torch.cuda.set_rng_state(saved.cpu(), device)


def gather_rng_states(batches, world_size: int):
    """Every process's random streams, in rank order, on rank 0 (elsewhere None): each draws its
    own batches and dropout masks, and a resumed run gives each its own back."""
    if world_size == 1:
        return [rng_state(batches)]
    states = [None] * world_size if dist.get_rank() == 0 else None
    dist.gather_object(rng_state(batches), states, dst=0)
    return states


def resume(checkpoint: dict, rank: int, optimizer, scaler, data_rng: torch.Generator,
           device: str):
    """Optimizer, scaler and random streams restored from a checkpoint; its iter_num,
    best_val_loss and elapsed_s, and the last iteration whose evaluation it holds."""
    try:
        optimizer.load_state_dict(checkpoint["optimizer"])
    except ValueError as e:  # parameter groups of another layout
        fail(f"the optimizer state in the checkpoint does not fit this model ({e}): it was "
             f"written by another version of mot.py; resume it with that version")
    if scaler.is_enabled() and checkpoint["scaler"]:  # float16 then and now
        scaler.load_state_dict(checkpoint["scaler"])
    set_rng_state(checkpoint["rng"][rank], data_rng, device)
    iter_num = checkpoint["iter_num"]
    # an interrupt saves before its iteration's evaluation: the resumed run evaluates it
    resumed_at = iter_num if checkpoint.get("evaluated", True) else iter_num - 1
    return iter_num, checkpoint["best_val_loss"], checkpoint["elapsed_s"], resumed_at


# ----------------------------------------------------------------------------- log and signals


def strict_json(value):
    """value with None (null) for NaN and the infinities: log.jsonl is strict JSON (RFC 8259 has
    neither), which jq and pandas read."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: strict_json(v) for key, v in value.items()}
    if isinstance(value, list):
        return [strict_json(v) for v in value]
    return value


def start_wandb(c: dict):
    """A Weights & Biases run of the settings c (log_record sends it each log.jsonl line), or one
    line saying why it could not start."""
    import wandb
    try:
        return wandb.init(project=c["wandb_project"], name=c["wandb_run_name"], config=c)
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


class Clock:
    """The seconds that training steps take, read at log steps, evaluations and stops only: on a
    GPU each read first waits for the steps launched (a sync), so the steps in between run
    without one and the time read is the GPU's, not the launches'."""

    def __init__(self, device_type: str):
        self.cuda = device_type == "cuda"
        self.start, self.steps = time.perf_counter(), 0

    def tick(self) -> None:
        """One optimizer step launched."""
        self.steps += 1

    def read(self):
        """(steps, seconds) since the last read, which restarts the clock."""
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        steps, seconds = self.steps, now - self.start
        self.start, self.steps = now, 0
        return steps, seconds


class RunLog:
    """log.jsonl, and wandb if wandb_run: a line per evaluation, with the tokens per second since
    the last one (warm-up left out: logged apart as warmup_s); the first line after a resume that
    changed settings says so. model: the GPT trained (not its compiled or DDP wrapper);
    sequences_per_iter: one process's forward-backward passes per step, for the MFU;
    tokens_per_iter: all processes' tokens per step; peak_flops: the GPU's (None: no MFU)."""

    def __init__(self, path: str, wandb_run, changes: dict, model: GPT, sequences_per_iter: int,
                 tokens_per_iter: int, peak_flops=None):
        self.path, self.wandb_run, self.changes, self.model = path, wandb_run, changes, model
        self.sequences_per_iter, self.tokens_per_iter = sequences_per_iter, tokens_per_iter
        self.peak_flops = peak_flops
        self.tokens, self.seconds, self.warmup_s = 0, 0.0, None  # since the last evaluation
        self.step_seconds = None  # of the steps of the last count, each; None: the warm-up's

    def count(self, steps: int, seconds: float) -> float:
        """`steps` optimizer steps that took `seconds`; returns the seconds."""
        self.tokens += steps * self.tokens_per_iter
        self.seconds += seconds
        self.step_seconds = seconds / steps if steps else self.step_seconds
        return seconds

    def warm_up(self, steps: int, seconds: float) -> None:
        """The first step of a process (compilation, first allocations): not counted."""
        self.warmup_s = (self.warmup_s or 0.0) + seconds
        self.step_seconds = None

    def print_step(self, iter_num: int, lm_loss: torch.Tensor) -> float:
        """Print the step's loss and speed; returns the loss, the only read of the step."""
        lm_loss_value = lm_loss.item()
        if self.step_seconds is None:
            print(f"iter {iter_num}: loss {lm_loss_value:.4f}, warm-up step "
                  f"{self.warmup_s * 1000:.1f}ms (compilation, first allocations: not timed)")
            return lm_loss_value
        speed = (f"time {self.step_seconds * 1000:.1f}ms, "
                 f"{self.tokens_per_iter / self.step_seconds:,.0f} tokens/s")
        if self.peak_flops is not None:  # a GPU whose peak is known: no MFU beats a wrong one
            mfu = self.model.estimate_mfu(self.sequences_per_iter, self.step_seconds,
                                          self.peak_flops)
            speed += f", mfu {100 * mfu:.2f}%"
        print(f"iter {iter_num}: loss {lm_loss_value:.4f}, {speed}")
        return lm_loss_value

    def write(self, iter_num: int, losses: dict, lr: float, elapsed_s: float) -> None:
        """The evaluation's line (with MoT's τ, and whether every layer is causal). The line
        first, then the checkpoint: a resumed run drops the lines past its checkpoint's iteration
        and writes them again, so no crash leaves a duplicate or gap."""
        record = dict(iter=iter_num, **losses, lr=lr, elapsed_s=elapsed_s,
                      tokens_per_s=self.tokens / self.seconds if self.seconds else None,
                      warmup_s=self.warmup_s,
                      temperature=[m.temperature.item()
                                   for m in self.model.ffns(MixtureOfTokens)] or None,
                      causal=all(block.ffn.causal for block in self.model.transformer.h))
        if self.changes:
            record["changed_on_resume"], self.changes = self.changes, {}
        with open(self.path, "a") as f:
            f.write(json.dumps(strict_json(record), allow_nan=False) + "\n")
        if self.wandb_run is not None:
            log_record(self.wandb_run, record)
        self.tokens, self.seconds, self.warmup_s = 0, 0.0, None

    def finish(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()


def start_writing(settings: dict, master: bool, out: OutDir, resumed_at, changes: dict,
                  model: GPT, accumulation_steps: int, device: str):
    """The run's first write, after every check (none with eval_only): W&B started (it can still
    fail), out_dir prepared (rank 0), the RunLog, and the list of stop signals caught from now
    on."""
    run_log = functools.partial(RunLog, out.log_path, changes=changes, model=model,
                                sequences_per_iter=settings["batch_size"] * accumulation_steps,
                                tokens_per_iter=settings["gradient_accumulation_steps"]
                                * settings["batch_size"] * settings["block_size"],
                                peak_flops=peak_flops(device, settings["dtype"]))
    if settings["eval_only"]:
        return run_log(wandb_run=None), []
    wandb_run = start_wandb(settings) if settings["wandb_log"] and master else None
    if master:
        out.prepare(resumed_at)
    return run_log(wandb_run=wandb_run), catch_stop_signals()


def catch_stop_signals() -> list:
    """A list that Ctrl-C (SIGINT) and SIGTERM append to from now on: the loop reads it after each
    step, then saves and stops."""
    received = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda signum, frame: received.append(signum))
    return received


def stop_signal(received: list, ddp: bool, device: str, agree_now: bool) -> int:
    """The signal that stops the run after this step, 0 for none: the first one received. A single
    process reads its list after every step. Under DDP a signal reaches each process at its own
    moment, so at the steps where agree_now (every log_interval-th: the all-reduce waits for the
    GPU) they agree on the largest and all stop after the same step."""
    signum = received[0] if received else 0
    if ddp:
        if not agree_now:
            return 0
        flag = torch.tensor(signum, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        signum = int(flag.item())
    return signum


def finish(log: RunLog, ddp: bool, stop: int, master: bool, ckpt_path: str, iter_num: int):
    """The end of a run: wandb closed, the processes leaving together, a stopped run's exit code."""
    log.finish()
    if ddp:  # leave together, once rank 0 has written its last evaluation and checkpoint
        dist.barrier()
        dist.destroy_process_group()
        # Collect the DDP wrapper (a reference cycle) now: it holds the process group, whose gloo
        # threads release their last work with the interpreter's help; left to the interpreter's
        # exit, they abort the process ("terminate called without an active exception").
        gc.collect()
    if stop:
        if master:
            print(f"interrupted at iter {iter_num}: saved {ckpt_path}; continue with "
                  f"--init_from=resume", file=sys.stderr)
        raise SystemExit(128 + stop)  # the shell's code for "ended by signal `stop`"
