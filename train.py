"""
Train a GPT whose FFN is dense, Mixture of Tokens or MoE. nanoGPT's conventions:

    python train.py                                              # defaults below
    python train.py config/train_shakespeare_char_cpu.py config/train_shakespeare_char_cpu_mot.py
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py config/train_gpt2_mot.py

Settings: the defaults in DEFAULTS, then each config/*.py file given (plain assignments), then
--key=value overrides, in order. Every setting is checked before anything is written. Every eval
appends a JSON line to out_dir/log.jsonl and saves out_dir/ckpt.pt; --init_from=resume continues
that run exactly (same batches, same dropout). A new run into a directory that holds ckpt.pt is
refused, unless --overwrite=True. Ctrl-C (SIGINT) or SIGTERM saves ckpt.pt after the step under
way and exits with 130 or 143; a run whose loss turns NaN or infinite stops, and its last finite
checkpoint stays.
"""

import ast
import functools
import gc
import io
import importlib.util
import json
import math
import os
import shutil
import signal
import sys
import time
import traceback
from contextlib import nullcontext
from dataclasses import asdict, fields

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from devices import bf16_is_native, device_here, device_problem, native_dtype, peak_flops
import convert
from convert import TRUNK_FIELDS, nonfinite
from mot import FFNS, GPT, GPTConfig, MixtureOfTokens

CUDA = torch.cuda.is_available()
MODEL_FIELDS = tuple(f.name for f in fields(GPTConfig) if f.name != "vocab_size")
# what GPT.upcycle keeps from its source; the new layers take this run's other MODEL_FIELDS
KEPT_BY_UPCYCLE = tuple(f for f in MODEL_FIELDS if f in TRUNK_FIELDS)
NEW_LAYER_FIELDS = tuple(f for f in MODEL_FIELDS
                         if f not in KEPT_BY_UPCYCLE + ("ffn", "expert_bias"))
DEFAULTS = dict(
    # I/O
    out_dir="out", eval_interval=250, log_interval=10, eval_iters=200, eval_only=False,
    always_save_checkpoint=True,
    # "scratch" | "resume" | the out_dir of a run: its weights and data with a new optimizer and
    # schedule, converted by --transition or --upcycle, or as they are (finetuning) |
    # "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl" or a directory saved by transformers: GPT-2's
    # weights (pip install transformers), finetuned as they are or upcycled
    init_from="scratch",
    # with init_from=<dir>: "discrete" | "token_choice" (GPT.to_sparse), with a fresh optimizer
    transition=None,
    # with init_from=<dir of a dense run> or GPT-2: "mot" | "moe" | "mot_emit_softmax": its FFNs
    # grown into this run's MoT or MoE layers (GPT.upcycle), with a fresh optimizer
    upcycle=None,
    # a new run into an out_dir that holds ckpt.pt deletes that run (without it: an error)
    overwrite=False,
    # data: data_root/dataset/{train,val}.bin and meta.json
    data_root=os.path.join(os.path.dirname(os.path.abspath(__file__)), "data"),
    dataset="shakespeare_char", gradient_accumulation_steps=1, batch_size=64,
    # model: every GPTConfig field (block_size, n_layer, ..., ffn, n_experts, group_size, ...) but
    # vocab_size, which comes from the dataset's meta.json
    **{f.name: f.default for f in fields(GPTConfig) if f.name != "vocab_size"},
    # AdamW and the learning-rate schedule (cosine with linear warmup)
    learning_rate=6e-4, max_iters=5000, weight_decay=1e-1, beta1=0.9, beta2=0.95, grad_clip=1.0,
    decay_lr=True, warmup_iters=100, lr_decay_iters=5000, min_lr=6e-5,
    # MoT temperature annealing: τ goes geometrically from `temperature` at iter 0 to
    # `temperature_final` at lr_decay_iters (None: no annealing)
    temperature_final=None,
    # system
    device="cuda" if CUDA else "cpu",
    # "auto": the device's native dtype (devices.native_dtype): bfloat16 on GPUs that compute in
    # it, float16 with a GradScaler on older ones (T4, V100), float32 on a CPU
    dtype="auto",
    compile=False, seed=1337,
    # Weights & Biases (pip install wandb): each log.jsonl line is also logged there
    wandb_log=False, wandb_project="mot", wandb_run_name="mot",
)
# What a resumed run may change: where things are, how long it trains, how often it evaluates and
# logs, the learning-rate and temperature schedules. Every other setting comes from the checkpoint
# (model, data, batches, optimizer, seed, dtype), and a value given that differs is an error.
MAY_CHANGE_ON_RESUME = ("out_dir", "init_from", "overwrite", "data_root", "device", "dtype",
                        "compile", "eval_only", "max_iters", "eval_interval", "log_interval",
                        "always_save_checkpoint", "learning_rate", "decay_lr", "warmup_iters",
                        "lr_decay_iters", "min_lr", "grad_clip", "temperature_final",
                        "wandb_log", "wandb_project", "wandb_run_name")
UPCYCLABLE = [key for key, ffn in FFNS.items() if ffn.upcyclable]  # --upcycle's choices
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ------------------------------------------------------------------- run bookkeeping
# Settings, their checks, resume, checkpoints, the log, signals: main's helpers. The data, the
# model and the training loop come after this section.


def fail(message: str):
    raise SystemExit(f"error: {message}")


def parse_value(key: str, text: str, default):
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text  # a bare string such as --device=cpu
    return check_type(key, value, default)


def check_type(key: str, value, default):
    if default is None:  # None or a value: the checks below and GPTConfig's see to it
        return value
    if value is None:
        fail(f"--{key}=None: expected {type(default).__name__}, such as the default {default!r}")
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not type(default):
        fail(f"--{key}={value!r} has type {type(value).__name__}, "
             f"expected {type(default).__name__}")
    return value


def read_config_file(path: str) -> dict:
    """The assignments of a config file; whatever is wrong with it, one line naming it."""
    if not os.path.isfile(path):
        fail(f"config file {path} " + ("is a directory: give a .py file of assignments"
                                       if os.path.isdir(path) else "not found"))
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
    except UnicodeDecodeError:
        fail(f"config file {path} is not UTF-8 text: save it as UTF-8")
    settings = {}
    try:
        exec(compile(source, path, "exec"), {}, settings)
    except SyntaxError as e:
        fail(f"config file {path}, line {e.lineno}: {e.msg}")
    except Exception as e:  # the line of the file that raised, not of something it called
        line = [frame.lineno for frame in traceback.extract_tb(e.__traceback__)
                if frame.filename == path][-1]
        fail(f"config file {path}, line {line}: {type(e).__name__}: {e}")
    return {k: v for k, v in settings.items() if not k.startswith("_")}


def configure(argv: list):
    """DEFAULTS, updated by config files and --key=value arguments, in the order given; and the
    set of keys that the files and arguments set."""
    config, given = dict(DEFAULTS), set()
    for arg in argv:
        if not arg.startswith("--"):
            updates = read_config_file(arg)
        else:
            key, sep, text = arg[2:].partition("=")
            if not sep:
                fail(f"{arg}: write --{key}=VALUE")
            updates = {key: text}
        for key, value in updates.items():
            if key not in config:
                fail(f"unknown setting {key!r} (from {arg}); see DEFAULTS in train.py for the "
                     f"valid keys")
            default = DEFAULTS[key]
            config[key] = (parse_value(key, value, default) if arg.startswith("--")
                           else check_type(key, value, default))
            given.add(key)
    return config, given


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
                kept = ("a resumed run keeps all other settings (the README lists those that may "
                        "change)" if may_change else "a converted run keeps its model and data")
                fail(f"{key}={c[key]!r} contradicts {path}, trained with {key}={saved[key]!r}: "
                     f"{kept}; drop the setting, or train a new run in another out_dir")
            changes[key] = [saved[key], c[key]]
    return changes


def validate(c: dict, world_size: int, ckpt_path: str) -> None:
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
        ("temperature_final", c["temperature_final"] is None
         or isinstance(c["temperature_final"], (int, float)) and c["temperature_final"] > 0,
         "must be > 0 (τ is annealed geometrically), or None for no annealing"),
        ("lr_decay_iters", c["temperature_final"] is None or c["lr_decay_iters"] >= 1,
         "must be >= 1: temperature_final is reached at lr_decay_iters"),
        ("weight_decay", c["weight_decay"] >= 0, "must be >= 0"),
        ("beta1", 0 <= c["beta1"] < 1, "must be in [0, 1)"),
        ("beta2", 0 <= c["beta2"] < 1, "must be in [0, 1)"),
        ("grad_clip", c["grad_clip"] >= 0, "must be >= 0 (0: no clipping)"),
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
    if os.path.exists(c["out_dir"]) and not os.path.isdir(c["out_dir"]):
        fail(f"out_dir={c['out_dir']!r} is a file: give a directory")
    if c["init_from"] != "resume" and os.path.exists(ckpt_path) and not c["overwrite"]:
        fail(f"{ckpt_path} holds a run: continue it with --init_from=resume, or delete it and "
             f"start over with --overwrite=True")


def resolve_dtype(settings: dict) -> None:
    """dtype "auto" becomes the native dtype of the device, when the device is here (otherwise
    the device check fails later)."""
    if settings["dtype"] == "auto" and device_here(settings["device"]):
        settings["dtype"] = native_dtype(settings["device"])


def load_checkpoint(path: str, device: str):
    """convert.from_checkpoint, with its error as one line."""
    try:
        return convert.from_checkpoint(path, device)
    except ValueError as e:
        fail(str(e))


class ByteCount(io.RawIOBase):
    """A file that keeps only the number of bytes written to it."""
    size = 0

    def write(self, data) -> int:
        self.size += len(data)
        return len(data)


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


def start_wandb(c: dict):
    """A Weights & Biases run of the settings c; log_record sends it each log.jsonl line."""
    import wandb
    return wandb.init(project=c["wandb_project"], name=c["wandb_run_name"], config=c)


def log_record(wandb_run, record: dict) -> None:
    """The numbers of a log.jsonl line, a list per layer as name/0, name/1, ..."""
    numbers = {}
    for key, value in record.items():
        for name, v in ([(f"{key}/{i}", v) for i, v in enumerate(value)]
                        if isinstance(value, list) else [(key, value)]):
            if isinstance(v, (int, float)):
                numbers[name] = v
    wandb_run.log(numbers, step=record["iter"])


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


def rng_state(batches: "TrainBatches") -> dict:
    """The random streams training draws from: dropout (torch, and cuda: the GPU this process
    trains on, None on a CPU) and the batches (data)."""
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


def gather_rng_states(batches: "TrainBatches", world_size: int):
    """Every process's random streams, in rank order, on rank 0 (elsewhere None): each draws its
    own batches and dropout masks, and a resumed run gives each its own back."""
    if world_size == 1:
        return [rng_state(batches)]
    states = [None] * world_size if dist.get_rank() == 0 else None
    dist.gather_object(rng_state(batches), states, dst=0)
    return states


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


def prepare_out_dir(c: dict, ckpt_path: str, log_path: str, resumed_iter) -> None:
    """The first write of a run, after every check. A new run starts an empty log, after deleting
    the checkpoint of the run it overwrites. A resumed run keeps the log lines up to
    resumed_iter, the last evaluation its checkpoint holds; those after it (evaluations that a
    crash cut off before their checkpoint, or that saved none) are evaluated and written again."""
    try:
        os.makedirs(c["out_dir"], exist_ok=True)
        kept = []
        if resumed_iter is None and os.path.exists(ckpt_path):  # --overwrite=True
            os.remove(ckpt_path)
        if resumed_iter is not None and os.path.exists(log_path):
            with open(log_path) as f:  # a line without its newline was cut off: it is dropped
                kept = [line for line in f
                        if line.endswith("\n") and json.loads(line)["iter"] <= resumed_iter]
        with open(log_path + ".tmp", "w") as f:
            f.writelines(kept)
        os.replace(log_path + ".tmp", log_path)
    except OSError as e:
        fail(f"cannot write to out_dir={c['out_dir']!r} ({e.strerror}): choose another --out_dir")


def load_start(settings: dict, given: set, ckpt_path: str, world_size: int):
    """The model a run starts from (None from scratch), its checkpoint, and the settings a resume
    changes. A resumed run is the run in its checkpoint; a run from another's out_dir or GPT-2
    keeps its model and data settings: both are set in `settings` here, before the checks and the
    seed (the seed's draws come later)."""
    if settings["init_from"] == "scratch":
        return None, None, {}
    if settings["init_from"] == "resume":
        model, checkpoint = load_checkpoint(ckpt_path, "cpu")
        saved = [k for k in settings if k not in ("out_dir", "init_from")]
        changes = settings_from_checkpoint(settings, given, checkpoint, ckpt_path, saved,
                                           MAY_CHANGE_ON_RESUME)
        if "device" not in given and not device_here(settings["device"]):  # another machine
            print(f"note: {ckpt_path} trained on {settings['device']}, which is not here: "
                  f"resuming on {DEFAULTS['device']}", file=sys.stderr)
            changes["device"] = [settings["device"], DEFAULTS["device"]]
            settings["device"] = DEFAULTS["device"]
        if len(checkpoint["rng"]) != world_size:
            fail(f"{ckpt_path} was written by {len(checkpoint['rng'])} processes, this run has "
                 f"{world_size}: resume with as many (torchrun --nproc_per_node="
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


def setup_device(settings: dict, ddp: bool):
    """This process's device, its type and the autocast context of the run's dtype; under DDP,
    the process group joined."""
    device_type = torch.device(settings["device"]).type
    device = (f"cuda:{os.environ['LOCAL_RANK']}" if ddp and device_type == "cuda"
              else settings["device"])
    if ddp:  # gradients are averaged across processes: NCCL between GPUs, gloo between CPUs
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    if device_type == "cuda":
        torch.cuda.set_device(torch.device(device).index or 0)  # "cuda" below means this one
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    ptdtype = DTYPES[settings["dtype"]]
    autocast = (nullcontext() if ptdtype == torch.float32
                else torch.amp.autocast(device_type, dtype=ptdtype))
    return device, device_type, autocast


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


def restores_signal_handlers(function):
    """function, then the handlers of SIGINT and SIGTERM as they were (main replaces them with
    its save-and-stop), for a caller in the same process."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            return function(*args, **kwargs)
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
    return wrapper


def start_writing(settings: dict, master: bool, ckpt_path: str, log_path: str, resumed_at,
                  changes: dict, model: GPT, accumulation_steps: int, device: str):
    """The run's first write, after every check (none with eval_only): out_dir prepared (rank 0),
    the RunLog (with wandb, if wanted), and the list of stop signals caught from now on."""
    run_log = functools.partial(RunLog, log_path, changes=changes, model=model,
                                sequences_per_iter=settings["batch_size"] * accumulation_steps,
                                tokens_per_iter=settings["gradient_accumulation_steps"]
                                * settings["batch_size"] * settings["block_size"],
                                peak_flops=peak_flops(device, settings["dtype"]))
    if settings["eval_only"]:
        return run_log(wandb_run=None), []
    if master:
        prepare_out_dir(settings, ckpt_path, log_path, resumed_at)
    wandb_run = start_wandb(settings) if settings["wandb_log"] and master else None
    return run_log(wandb_run=wandb_run), catch_stop_signals()


def catch_stop_signals() -> list:
    """A list that Ctrl-C (SIGINT) and SIGTERM append to from now on: the loop reads it after each
    step, then saves and stops."""
    received = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda signum, frame: received.append(signum))
    return received


def compile_and_wrap(model: GPT, compile: bool, ddp: bool, device: str):
    """The model to train (compiled if asked, in DDP under torchrun) and the one to evaluate:
    rank 0 evaluates alone, so never through DDP, whose forward waits for the other processes."""
    if compile:
        model = torch.compile(model)
    eval_model = model
    if ddp:
        model = DDP(model, device_ids=[torch.device(device).index]
                    if torch.device(device).type == "cuda" else None)
    return model, eval_model


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
        bad = nonfinite(weights)  # even with finite losses: an expert no eval token reached
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


# ------------------------------------------------------------------- data and schedules


CHECKED_TOKENS = 1 << 20  # load_data reads this many tokens of a split, not all of a large one


def load_data(data_root: str, dataset: str, block_size: int):
    """The train and val token arrays (memory-mapped) and meta.json written by
    data/<dataset>/prepare.py, checked: whole uint16 tokens, more than block_size of them, and
    the ids of the first CHECKED_TOKENS below meta.json's vocab_size (files of other data show it
    there; reading all of OpenWebText's would take minutes before the first step)."""
    data_dir = os.path.join(data_root, dataset)
    prepare = f"python data/{dataset}/prepare.py"
    meta_path = os.path.join(data_dir, "meta.json")
    paths = [os.path.join(data_dir, f"{split}.bin") for split in ("train", "val")]
    for path in paths + [meta_path]:
        if not os.path.exists(path):
            fail(f"{path} not found: run `{prepare}` first")
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except ValueError as e:  # not UTF-8, or not JSON
        fail(f"{meta_path} is not valid JSON ({e}): run `{prepare}` again")
    if not (isinstance(meta, dict) and type(meta.get("vocab_size")) is int
            and meta["vocab_size"] > 0 and meta.get("tokenizer") in ("char", "gpt2")):
        fail(f"{meta_path} needs a positive integer vocab_size and a tokenizer ('char' or "
             f"'gpt2'): run `{prepare}` again")
    splits = {}
    for split, path in zip(("train", "val"), paths):
        size = os.path.getsize(path)
        if size % 2:
            fail(f"{path} has {size} bytes, not whole uint16 tokens (an interrupted write?): "
                 f"run `{prepare}` again")
        if size // 2 <= block_size:
            fail(f"{path} holds {size // 2} tokens, fewer than block_size+1={block_size + 1}: "
                 f"use a smaller block_size or more text")
        splits[split] = np.memmap(path, dtype=np.uint16, mode="r")
        largest = int(splits[split][:CHECKED_TOKENS].max())
        if largest >= meta["vocab_size"]:
            fail(f"{path} holds token id {largest}, but {meta_path} has vocab_size="
                 f"{meta['vocab_size']}: they come from different data; run `{prepare}` again")
    return splits, meta


def batch(data: np.ndarray, batch_size: int, block_size: int, generator: torch.Generator,
          device: str):
    """batch_size random windows of data: inputs x and next-token targets y, each
    (batch_size, block_size)."""
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator).tolist()
    x = torch.stack([torch.from_numpy(data[i:i + block_size].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block_size].astype(np.int64)) for i in ix])
    if "cuda" in device:
        return (x.pin_memory().to(device, non_blocking=True),
                y.pin_memory().to(device, non_blocking=True))
    return x.to(device), y.to(device)


class TrainBatches:
    """A process's training batches, each drawn a step ahead of its use, so that on a GPU its copy
    overlaps the compute. `state` is the data stream as it was before the batch drawn ahead: a
    run resumed from it draws that batch again, as an uninterrupted run uses it."""

    def __init__(self, data: np.ndarray, c: dict, generator: torch.Generator, device: str):
        self.data, self.c, self.generator, self.device = data, c, generator, device
        self.state = generator.get_state()

    def next(self):
        self.state = self.generator.get_state()
        return batch(self.data, self.c["batch_size"], self.c["block_size"], self.generator,
                     self.device)


def eval_batches(data: np.ndarray, c: dict):
    """The eval_iters batches of every evaluation: the same windows each time, apart from
    training's."""
    generator = torch.Generator().manual_seed(c["seed"] + 1)
    for _ in range(c["eval_iters"]):
        yield batch(data, c["batch_size"], c["block_size"], generator, c["device"])


def get_lr(it: int, c: dict) -> float:
    if not c["decay_lr"]:
        return c["learning_rate"]
    if it < c["warmup_iters"]:
        return c["learning_rate"] * (it + 1) / (c["warmup_iters"] + 1)
    if it > c["lr_decay_iters"]:
        return c["min_lr"]
    ratio = (it - c["warmup_iters"]) / (c["lr_decay_iters"] - c["warmup_iters"])
    coefficient = 0.5 * (1.0 + math.cos(math.pi * ratio))  # from 1 down to 0
    return c["min_lr"] + coefficient * (c["learning_rate"] - c["min_lr"])


def set_lr(optimizer, it: int, settings: dict) -> float:
    """The learning rate of step `it`, set in every parameter group."""
    lr = get_lr(it, settings)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def get_temperature(it: int, c: dict) -> float:
    progress = min(it, c["lr_decay_iters"]) / c["lr_decay_iters"]
    return c["temperature"] * (c["temperature_final"] / c["temperature"]) ** progress


def optimizer_step(model, optimizer, scaler, grad_clip: float) -> None:
    """The update of the accumulated gradients, clipped to norm grad_clip (0: not clipped)."""
    if grad_clip != 0.0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    # set_to_none frees the gradients between steps; reusing them was no faster on a MoT step
    # (RESULTS.md, the training step)
    optimizer.zero_grad(set_to_none=True)


def anneal_temperature(mot_layers: list, it: int, settings: dict) -> None:
    """Set MoT's τ to get_temperature(it) when temperature_final anneals it."""
    if settings["temperature_final"] is not None:
        for layer in mot_layers:
            layer.log_temperature.fill_(math.log(get_temperature(it, settings)))


# ------------------------------------------------------------------- the model and the loop


def build_model(settings: dict, source, meta: dict) -> GPT:
    """The model the run trains, from scratch or from `source` (load_start's): resumed or
    finetuned as it is, converted (transition) or grown (upcycle). The settings then hold the
    model's config, which the checkpoints save, and are checked against it."""
    if settings["init_from"] == "scratch":
        try:
            model = GPT(GPTConfig(**{k: settings[k] for k in MODEL_FIELDS},
                                  vocab_size=meta["vocab_size"]))
        except ValueError as e:
            fail(str(e))
    elif settings["init_from"] != "resume" and (settings["transition"] or settings["upcycle"]):
        try:  # transition tuning: the MoT converted to run unmixed; or the dense FFNs grown
            model = (convert.to_sparse(source, settings["transition"]) if settings["transition"]
                     else convert.upcycle(source, settings["upcycle"],
                                          **{k: settings[k] for k in NEW_LAYER_FIELDS}))
        except ValueError as e:
            fail(f"{settings['init_from']}: {e}")
    else:
        model = source
    settings.update({k: v for k, v in asdict(model.config).items() if k in settings})
    check_model(settings, model)
    return model


@torch.no_grad()
def evaluate(model, splits: dict, settings: dict, autocast, mot_layers: list,
             iter_num: int) -> dict:
    """Mean LM loss (aux losses excluded) over eval_iters batches, the same batches every time;
    the layers' aux loss (MoE's load balancing) measured as the train loss is, on the train
    batches (None for a model without one); MoT's merge-weight entropy (normalised to [0, 1]) per
    layer on the val batches. Prints the losses; draws no random numbers."""
    model.eval()
    result, aux_losses = {}, torch.zeros(settings["eval_iters"])
    for split in ("train", "val"):
        losses = torch.zeros(settings["eval_iters"])
        entropies = torch.zeros(settings["eval_iters"], len(mot_layers))
        for k, (X, Y) in enumerate(eval_batches(splits[split], settings)):
            with autocast:
                _, loss = model(X, Y)
            losses[k] = loss.item()
            if split == "train":
                aux_losses[k] = model.aux_loss.item()
            entropies[k] = torch.tensor([m.merge_entropy() for m in mot_layers])
        result[f"{split}_loss"] = losses.mean().item()
    has_aux_loss = any(block.ffn.aux_loss is not None for block in model.transformer.h)
    result["aux_loss"] = aux_losses.mean().item() if has_aux_loss else None
    if mot_layers:
        result["merge_entropy"] = entropies.mean(0).tolist()
    model.train()
    print(f"step {iter_num}: train loss {result['train_loss']:.4f}, "
          f"val loss {result['val_loss']:.4f}")
    return result


@restores_signal_handlers
def main(argv: list) -> None:
    settings, given = configure(argv)  # the run's settings (the GPT's are model.config)
    resolve_dtype(settings)
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    ddp, master = world_size > 1, rank == 0
    ckpt_path, log_path = (os.path.join(settings["out_dir"], f) for f in ("ckpt.pt", "log.jsonl"))
    source, checkpoint, changes = load_start(settings, given, ckpt_path, world_size)
    validate(settings, world_size, ckpt_path)
    device, device_type, autocast = setup_device(settings, ddp)
    torch.manual_seed(settings["seed"] + rank)
    data_rng = torch.Generator().manual_seed(settings["seed"] + rank)  # training batches only

    # data, model, optimizer: the last checks, then the first write
    splits, meta = load_data(settings["data_root"], settings["dataset"], settings["block_size"])
    check_data(settings, checkpoint, meta)
    raw_model = build_model(settings, source, meta)  # model: its compiled or DDP wrapper
    mot_layers = raw_model.ffns(MixtureOfTokens)
    raw_model.train().to(device)
    scaler = torch.amp.GradScaler(device_type, enabled=(DTYPES[settings["dtype"]] == torch.float16))
    optimizer = raw_model.configure_optimizers(settings["weight_decay"],
                                               settings["learning_rate"],
                                               (settings["beta1"], settings["beta2"]), device_type)
    iter_num, best_val_loss, elapsed_s, resumed_at = (
        resume(checkpoint, rank, optimizer, scaler, data_rng, device)
        if settings["init_from"] == "resume"
        else (0, float("inf"), 0.0, None))
    checkpoints = Checkpoints(ckpt_path, raw_model, optimizer, scaler, settings, meta,
                              iter_num if resumed_at is not None else None)
    source = checkpoint = None  # free memory
    accumulation_steps = settings["gradient_accumulation_steps"] // world_size  # per process
    log, received = start_writing(settings, master, ckpt_path, log_path, resumed_at, changes,
                                  raw_model, accumulation_steps, device)
    if master:
        print_summary(raw_model, changes, iter_num)
    model, eval_model = compile_and_wrap(raw_model, settings["compile"], ddp, device)
    if settings["eval_only"] and master:  # evaluate the model as it is and write nothing
        evaluate(eval_model, splits, settings, autocast, mot_layers, iter_num)

    # the loop: evaluate, log and save every eval_interval and at the end (not again what the
    # resumed checkpoint holds), then one optimizer step; after it, a stop signal saves and stops.
    # elapsed_s counts the steps' seconds, without evaluations and this process's first step.
    stop, first_iter = 0, iter_num
    batches = TrainBatches(splits["train"], settings, data_rng, device)
    X, Y = batches.next()
    clock = Clock(device_type)
    while not settings["eval_only"]:
        lr = set_lr(optimizer, iter_num, settings)
        anneal_temperature(mot_layers, iter_num, settings)
        evaluate_now = ((iter_num % settings["eval_interval"] == 0
                         or iter_num == settings["max_iters"]) and iter_num != resumed_at)
        if evaluate_now:  # every process takes part (evaluation draws no random numbers)
            elapsed_s += log.count(*clock.read())
            rng_states = gather_rng_states(batches, world_size)
        if evaluate_now and master:
            losses = evaluate(eval_model, splits, settings, autocast, mot_layers, iter_num)
            log.write(iter_num, losses, lr, elapsed_s)
            checkpoints.check_losses(losses, iter_num)
            improved = losses["val_loss"] < best_val_loss
            best_val_loss = min(best_val_loss, losses["val_loss"])
            if (improved or settings["always_save_checkpoint"]) and iter_num > 0:
                checkpoints.save(iter_num, best_val_loss, elapsed_s, rng_states)
        if iter_num >= settings["max_iters"]:
            break
        if evaluate_now:
            clock.read()  # the evaluation's seconds are not training's

        for micro_step in range(accumulation_steps):
            if ddp:  # synchronise gradients only on the last micro-step
                model.require_backward_grad_sync = micro_step == accumulation_steps - 1
            with autocast:
                _, lm_loss = model(X, Y)
                loss = (lm_loss + raw_model.aux_loss) / accumulation_steps
            X, Y = batches.next()  # drawn and copied while the GPU runs the forward
            scaler.scale(loss).backward()
        optimizer_step(model, optimizer, scaler, settings["grad_clip"])
        clock.tick()
        log_now = iter_num % settings["log_interval"] == 0
        if iter_num == first_iter:  # compilation, first allocations: timed apart
            log.warm_up(*clock.read())
        elif log_now:  # on a GPU the clock waits for the steps, as the loss read below would
            elapsed_s += log.count(*clock.read())
        if log_now and master:  # the last micro-step's loss
            if not math.isfinite(log.print_step(iter_num, lm_loss)):
                checkpoints.diverged("the train loss", iter_num)
        iter_num += 1
        stop = stop_signal(received, ddp, device, iter_num % settings["log_interval"] == 0)
        if stop:  # every process takes part; the checkpoint resumes exactly
            elapsed_s += log.count(*clock.read())
            rng_states = gather_rng_states(batches, world_size)
            if master:
                checkpoints.save(iter_num, best_val_loss, elapsed_s, rng_states, evaluated=False)
            break
    del model, eval_model  # under DDP the wrapper holds the process group, which finish frees
    finish(log, ddp, stop, master, ckpt_path, iter_num)


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


if __name__ == "__main__":
    main(sys.argv[1:])
