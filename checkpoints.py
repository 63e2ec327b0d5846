"""
How a run starts from a checkpoint, for train.py (load_start) and every reader of one
(load_checkpoint): resume, another run's out_dir (finetune, transition, upcycle) or GPT-2's
weights; the settings each keeps, the data checked against it (check_data), and the random
streams that make a resume exact.
"""

import os
import sys
from dataclasses import asdict, fields

import torch

import convert
from configurator import fail, make
from devices import bf16_is_native, device_here
from mot import GPTConfig

MODEL_FIELDS = tuple(f.name for f in fields(GPTConfig) if f.name != "vocab_size")
# what convert.upcycle keeps from its source; the new layers take this run's other MODEL_FIELDS
KEPT_BY_UPCYCLE = tuple(f for f in MODEL_FIELDS if f in convert.TRUNK_FIELDS)
NEW_LAYER_FIELDS = tuple(f for f in MODEL_FIELDS
                         if f not in KEPT_BY_UPCYCLE + ("ffn", "expert_bias"))
# What a resumed run may change: where things are, how long it trains, how often it evaluates and
# logs, the learning-rate and temperature schedules. Every other setting comes from the checkpoint
# (model, data, batches, optimizer, seed), and a value given that differs is an error.
MAY_CHANGE_ON_RESUME = ("out_dir", "init_from", "overwrite", "data_root", "device", "dtype",
                        "compile", "eval_only", "max_iters", "eval_interval", "log_interval",
                        "always_save_checkpoint", "learning_rate", "decay_lr", "warmup_iters",
                        "lr_decay_iters", "min_lr", "grad_clip", "temperature_final",
                        "wandb_log", "wandb_project", "wandb_run_name")


def from_checkpoint(config, given: set, checkpoint: dict, path: str, keys, may_change=()):
    """The settings `keys` of config that the checkpoint at `path` was trained with, as updates.
    A value given that differs is an error, unless its key is in may_change: then it is one of
    the changes, {key: [checkpoint's value, new value]}."""
    saved = {**checkpoint["config"], **checkpoint["model_args"]}
    updates, changes = {}, {}
    for key in keys:
        if key not in saved:
            continue
        if key not in given:
            updates[key] = saved[key]
        elif getattr(config, key) != saved[key]:
            if key not in may_change:
                kept = ("a resumed run keeps all other settings (docs/runs.md lists those that "
                        "may change)" if may_change else "a converted run keeps its model and data")
                fail(f"{key}={getattr(config, key)!r} contradicts {path}, trained with "
                     f"{key}={saved[key]!r}: {kept}; drop the setting, or train a new run in "
                     f"another out_dir")
            changes[key] = [saved[key], getattr(config, key)]
    return updates, changes


def load_checkpoint(path: str, device: str, needs: tuple = ()):
    """convert.from_checkpoint (the model, and the entries `needs` that the caller reads), with
    its error as one line."""
    try:
        return convert.from_checkpoint(path, device, needs)
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
        return load_checkpoint(os.path.join(init_from, "ckpt.pt"), "cpu", needs=("config",))
    try:
        model = convert.from_pretrained(init_from)
    except (ImportError, OSError, ValueError) as e:
        fail(f"--init_from={init_from}: {str(e).strip().splitlines()[0]}")
    return model.train(), dict(config={}, model_args=asdict(model.config), meta=None)


def load_start(config, given: set, out, world_size: int):
    """The settings with those of the run it starts from, the model it starts from (None from
    scratch), its checkpoint, and the settings a resume changes. A resumed run is the run in its
    checkpoint (on this machine's device if its own is not here); a run from another's out_dir or
    GPT-2 keeps its model and data settings. Then the checks of the out_dir it writes."""
    model = checkpoint = None
    updates, changes = {}, {}
    if config.init_from == "resume":
        if not os.path.exists(out.ckpt_path) and os.path.exists(out.log_path):
            fail(f"{out.log_path} is there but not {out.ckpt_path}: put the checkpoint back to "
                 f"resume, or start over with --overwrite=True")
        model, checkpoint = load_checkpoint(out.ckpt_path, "cpu", needs=(
            "config", "optimizer", "scaler", "rng", "best_val_loss", "elapsed_s"))
        saved = [f.name for f in fields(config) if f.name not in ("out_dir", "init_from")]
        updates, changes = from_checkpoint(config, given, checkpoint, out.ckpt_path, saved,
                                           MAY_CHANGE_ON_RESUME)
        device = updates.get("device", config.device)
        if not device_here(device):  # trained on another machine
            here = next(f.default for f in fields(config) if f.name == "device")
            print(f"note: {out.ckpt_path} trained on {device}, which is not here: resuming on "
                  f"{here}", file=sys.stderr)
            changes["device"], updates["device"] = [device, here], here
        device = torch.device(updates.get("device", config.device))
        if (updates.get("dtype") == "bfloat16" and device.type == "cuda"
                and not bf16_is_native(device)):
            print(f"note: {out.ckpt_path} trained in bfloat16, which this GPU emulates: "
                  f"continuing in float16 (its native dtype)", file=sys.stderr)
            changes["dtype"], updates["dtype"] = ["bfloat16", "float16"], "float16"
        if len(checkpoint["rng"]) != world_size:
            fail(f"{out.ckpt_path} was written by {len(checkpoint['rng'])} processes, this run "
                 f"has {world_size}: resume with as many (torchrun --nproc_per_node="
                 f"{len(checkpoint['rng'])}), each continues its own batches")
    elif config.init_from != "scratch":  # converted, grown, or as it is
        model, checkpoint = load_source(config.init_from)
        # upcycled: the new layers take this run's settings; GPT-2 as it is: a dense FFN
        kept = (KEPT_BY_UPCYCLE if config.upcycle else KEPT_BY_UPCYCLE + ("ffn", "dropout")
                if is_pretrained(config.init_from) else MODEL_FIELDS)
        updates, _ = from_checkpoint(config, given, checkpoint, config.init_from,
                                     kept + ("dataset",))
    config = make(type(config), **{**asdict(config), **updates})
    if checkpoint is not None and config.init_from == "resume" and (
            config.max_iters < checkpoint["iter_num"]):
        fail(f"max_iters={config.max_iters} is below iter {checkpoint['iter_num']} of "
             f"{out.ckpt_path}: give a larger --max_iters to train it on")
    if config.init_from != "resume" and not config.overwrite and not config.eval_only:
        if os.path.exists(out.ckpt_path):
            fail(f"{out.ckpt_path} holds a run: continue it with --init_from=resume, or delete "
                 f"it and start over with --overwrite=True")
        if os.path.exists(out.log_path):
            fail(f"{out.log_path} holds a run's log (its ckpt.pt is not there): start over with "
                 f"--overwrite=True, or choose another --out_dir")
    return config, model, checkpoint, changes


def rng_state(batches) -> dict:
    """The random streams training draws from: dropout (torch, and cuda: the GPU this process
    trains on, None on a CPU) and the batches (data) of dataset.TrainBatches."""
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


def check_data(config, checkpoint, meta: dict) -> None:
    """That the dataset's meta.json fits the checkpoint the run starts from, if any."""
    if checkpoint is not None and checkpoint["meta"] is None and meta["tokenizer"] != "gpt2":
        fail(f"--init_from={config.init_from} is GPT-2, which reads the GPT-2 BPE, but "
             f"dataset {config.dataset!r} has tokenizer {meta['tokenizer']!r}: use a GPT-2 "
             f"BPE dataset such as shakespeare (python data/shakespeare/prepare.py)")
    if checkpoint is not None and checkpoint["meta"] is not None and meta != checkpoint["meta"]:
        fail(f"{os.path.join(config.data_root, config.dataset, 'meta.json')} is not the "
             f"meta.json the checkpoint was trained with (another tokenizer or vocabulary): "
             f"give the data_root that holds its dataset {config.dataset!r}")
