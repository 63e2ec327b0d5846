"""
A dataset as train.py reads it: data_root/<dataset>/{train,val}.bin (uint16 token ids) and
meta.json, written by data/<dataset>/prepare.py; checked whole before a run writes anything
(load), and windows of it drawn as batches (get_batch): train.py's, a step ahead
(TrainBatches), and its evaluations' (eval_batches); sample.py's companions, the experiments'.
"""

import json
import os

import numpy as np
import torch

from configurator import fail


def load(data_root: str, dataset: str, block_size: int):
    """The train and val token arrays (memory-mapped) and meta.json, checked: whole uint16
    tokens, more than block_size of them, every id below meta.json's vocab_size (a vectorised
    max over the memory map), and a 'char' meta.json's chars as many as its vocab_size."""
    data_dir = os.path.join(data_root, dataset)
    prepare = f"python data/{dataset}/prepare.py"
    if os.path.exists(os.path.join(data_root, "meta.json")):
        fail(f"data_root={data_root!r} is a dataset's folder: give the folder that holds the "
             f"datasets, --data_root={os.path.dirname(os.path.abspath(data_root))}")
    meta_path = os.path.join(data_dir, "meta.json")
    paths = [os.path.join(data_dir, f"{split}.bin") for split in ("train", "val")]
    for path in paths + [meta_path]:
        if not os.path.exists(path):
            fail(f"{path} not found: run `{prepare}` first")
        if not os.path.isfile(path):
            fail(f"{path} is not a file: run `{prepare}` again")
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except ValueError as e:  # not UTF-8, or not JSON
        fail(f"{meta_path} is not valid JSON ({e}): run `{prepare}` again")
    except OSError as e:
        fail(f"cannot read {meta_path} ({e.strerror}): run `{prepare}` again")
    if not (isinstance(meta, dict) and type(meta.get("vocab_size")) is int
            and meta["vocab_size"] > 0 and meta.get("tokenizer") in ("char", "gpt2")):
        fail(f"{meta_path} needs a positive integer vocab_size and a tokenizer ('char' or "
             f"'gpt2'): run `{prepare}` again")
    if meta["tokenizer"] == "char" and (not isinstance(meta.get("chars"), list)
                                        or len(meta["chars"]) != meta["vocab_size"]):
        fail(f"{meta_path} has vocab_size={meta['vocab_size']} but not as many chars to decode "
             f"them with: run `{prepare}` again")
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
        largest = int(splits[split].max())
        if largest >= meta["vocab_size"]:
            fail(f"{path} holds token id {largest}, but {meta_path} has vocab_size="
                 f"{meta['vocab_size']}: they come from different data; run `{prepare}` again")
    return splits, meta


def windows(data: np.ndarray, starts: list, length: int, device: str = "cpu"):
    """The windows of data at `starts`, inputs x and next-token targets y, each
    (len(starts), length); on a GPU copied from pinned memory, without waiting."""
    x = torch.stack([torch.from_numpy(data[i:i + length].astype(np.int64)) for i in starts])
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + length].astype(np.int64))
                     for i in starts])
    if "cuda" in str(device):
        return (x.pin_memory().to(device, non_blocking=True),
                y.pin_memory().to(device, non_blocking=True))
    return x.to(device), y.to(device)


def get_batch(data: np.ndarray, batch_size: int, block_size: int, generator: torch.Generator,
              device: str = "cpu"):
    """batch_size windows of data at random starts: x and y, each (batch_size, block_size)."""
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator).tolist()
    return windows(data, starts, block_size, device)


class TrainBatches:
    """A process's training batches, each drawn a step ahead of its use, so that on a GPU its copy
    overlaps the compute. `state` is the data stream as it was before the batch drawn ahead: a
    run resumed from it draws that batch again, as an uninterrupted run uses it."""

    def __init__(self, data: np.ndarray, config, generator: torch.Generator,
                 device: str):
        self.data, self.config, self.generator, self.device = data, config, generator, device
        self.state = generator.get_state()

    def next(self):
        self.state = self.generator.get_state()
        return get_batch(self.data, self.config.batch_size, self.config.block_size,
                                 self.generator, self.device)


def eval_batches(data: np.ndarray, config):
    """The eval_iters batches of every evaluation: the same windows each time, apart from
    training's."""
    generator = torch.Generator().manual_seed(config.seed + 1)
    for _ in range(config.eval_iters):
        yield get_batch(data, config.batch_size, config.block_size, generator,
                                config.device)
