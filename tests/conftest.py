"""Fixtures shared by the tests: a tiny prepared dataset and a tiny training run."""

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "data"), os.path.join(ROOT, "experiments")]
SHARED = os.path.join(ROOT, "..", "shared", "data")
TIKTOKEN_CACHE = os.path.join(SHARED, "tiktoken_cache")
if "TIKTOKEN_CACHE_DIR" not in os.environ and os.path.isdir(TIKTOKEN_CACHE):
    os.environ["TIKTOKEN_CACHE_DIR"] = os.path.abspath(TIKTOKEN_CACHE)
import train  # noqa: E402
from shakespeare_char.prepare import prepare as prepare_char  # noqa: E402

CORPUS = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
          "All:\nSpeak, speak.\n") * 40
TINY = ["--n_layer=2", "--n_head=2", "--n_embd=16", "--block_size=16", "--batch_size=4",
        "--eval_iters=2", "--eval_interval=2", "--log_interval=1", "--device=cpu",
        "--dtype=float32", "--n_experts=4", "--group_size=2", "--moe_top_k=2",
        "--warmup_iters=2", "--lr_decay_iters=20", "--dropout=0.1"]


def read_log(out_dir) -> list:
    """The records of out_dir/log.jsonl, each line read as strict JSON (RFC 8259): a NaN or
    Infinity token, which Python's json.loads would take, fails the test."""
    def reject(token):
        raise ValueError(f"{token} in {out_dir}/log.jsonl is not JSON")
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [json.loads(line, parse_constant=reject) for line in f]


def make_data_root(path):
    """path, made a data root with shakespeare_char prepared from a small generated corpus."""
    (path / "shakespeare_char").mkdir(parents=True)
    (path / "shakespeare_char" / "input.txt").write_text(CORPUS)
    prepare_char(str(path / "shakespeare_char"))
    return path


@pytest.fixture
def data_root(tmp_path):
    return make_data_root(tmp_path)


@pytest.fixture
def run_train(data_root):
    """run_train(out_dir, *flags): train a tiny model on the tiny dataset; returns its log
    records (strict JSON)."""
    def run(out_dir, *args):
        train.main(TINY + [f"--data_root={data_root}", f"--out_dir={out_dir}", *args])
        return read_log(out_dir)
    return run
