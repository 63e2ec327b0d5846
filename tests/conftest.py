"""Fixtures shared by the tests: a tiny prepared dataset, a tiny training run, a small GPT-2 BPE
and a tiny GPT-2 saved by transformers, all made here: no test needs the network."""

import json
import os
import sys

import pytest
import tiktoken
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "data"), os.path.join(ROOT, "experiments")]
SHARED = os.path.join(ROOT, "..", "shared", "data")
TIKTOKEN_CACHE = os.path.join(SHARED, "tiktoken_cache")
if "TIKTOKEN_CACHE_DIR" not in os.environ and os.path.isdir(TIKTOKEN_CACHE):
    os.environ["TIKTOKEN_CACHE_DIR"] = os.path.abspath(TIKTOKEN_CACHE)
import train  # noqa: E402
from prepare_common import write_meta, write_tokens  # noqa: E402
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


# GPT-2's pre-tokenisation pattern (tiktoken's gpt2 encoding)
GPT2_PATTERN = (r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|"""
                r"""\s+""")


def small_bpe() -> tiktoken.Encoding:
    """A byte-level BPE with GPT-2's vocabulary size: the 256 bytes, then byte pairs (in byte
    order) up to id 50255, and <|endoftext|> = 50256 as in GPT-2: every id a model of GPT-2's
    vocabulary emits decodes."""
    ranks = {bytes([b]): b for b in range(256)}
    pairs = (bytes([a, b]) for a in range(256) for b in range(256))
    ranks.update((pair, rank) for rank, pair in zip(range(256, 50256), pairs))
    return tiktoken.Encoding("small_gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


@pytest.fixture
def gpt2_bpe(monkeypatch):
    """tiktoken.get_encoding("gpt2") gives small_bpe() (tiktoken would download GPT-2's)."""
    enc, get_encoding = small_bpe(), tiktoken.get_encoding
    monkeypatch.setattr(tiktoken, "get_encoding",
                        lambda name: enc if name == "gpt2" else get_encoding(name))
    monkeypatch.delitem(sys.modules, "openwebtext.prepare", raising=False)  # encodes at import
    return enc


def make_gpt2_dir(path, **config):
    """A random GPT2LMHeadModel (tiny unless config says otherwise) saved by transformers in
    path; returns the model, in eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(**{**dict(n_positions=16, n_embd=16, n_layer=2, n_head=2),
                                       **config}))
    hf.save_pretrained(path)
    return hf.eval()


@pytest.fixture
def gpt2_dir(tmp_path):
    return make_gpt2_dir(tmp_path / "gpt2"), str(tmp_path / "gpt2")


@pytest.fixture
def bpe_data_root(tmp_path, gpt2_bpe):
    """A data root whose shakespeare dataset is CORPUS in small_bpe's GPT-2 ids."""
    directory = tmp_path / "bpe_data" / "shakespeare"
    directory.mkdir(parents=True)
    ids = gpt2_bpe.encode_ordinary(CORPUS)
    write_tokens(ids[:int(0.9 * len(ids))], str(directory / "train.bin"))
    write_tokens(ids[int(0.9 * len(ids)):], str(directory / "val.bin"))
    write_meta(str(directory), tokenizer="gpt2", vocab_size=50304)
    return tmp_path / "bpe_data"


# ----------------------------------------------------------------------------- an error's line and
# a run that stops where the test says (the careless, fault, kill and lock tests)


def error_line(exit: pytest.ExceptionInfo) -> str:
    """The SystemExit's message, which Python prints on stderr before exiting with status 1:
    asserted to be one line, `error: ...`."""
    line = exit.value.code
    assert isinstance(line, str) and line.startswith("error: ") and "\n" not in line, line
    return line


# train.py with pauses of the test's own (hooks here, not in train.py): before each training
# step's forward ("before step"), and halfway through each checkpoint save, half its bytes in
# ckpt.pt.tmp ("in save"), the process prints `paused <where>` and waits for a line on stdin. A
# kill or a signal sent while it waits lands at that moment, however loaded the machine is.
PAUSING = """
import io, sys
sys.path.insert(0, sys.argv.pop(1))  # the repository
import torch, train
from mot import GPT
save, forward = torch.save, GPT.forward
def pause(where):
    print("paused", where, flush=True)
    sys.stdin.readline()
def paused_save(obj, f):
    buffer = io.BytesIO()
    save(obj, buffer)
    data = buffer.getvalue()
    f.write(data[:len(data) // 2])
    f.flush()
    pause("in save")
    f.write(data[len(data) // 2:])
def paused_forward(self, *args, **kwargs):
    if self.training:
        pause("before step")
    return forward(self, *args, **kwargs)
torch.save, GPT.forward = paused_save, paused_forward
train.main(sys.argv[1:])
"""


class PausedRun:
    """train.py (PAUSING) in a subprocess; `output`: its lines on stdout so far, less the pauses."""

    def __init__(self, args: list, cwd, env: dict):
        import subprocess
        self.process = subprocess.Popen(
            [sys.executable, "-u", "-c", PAUSING, ROOT, *args], cwd=cwd, env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.output, self.waiting = [], False

    def pause(self):
        """Its next pause, "before step" or "in save", where it waits; None: it ended first."""
        self.go_on()
        for line in self.process.stdout:
            if line.startswith("paused "):
                self.waiting = True
                return line[len("paused "):].rstrip("\n")
            self.output.append(line)
        return None

    def go_on(self) -> None:
        """If it waits at a pause, it goes on."""
        if self.waiting:
            self.process.stdin.write("\n")
            self.process.stdin.flush()
            self.waiting = False

    def until(self, where=None, n: int = 1) -> str:
        """Its n-th pause `where` (any pause if None) from now, going on at the others."""
        while True:
            paused = self.pause()
            assert paused is not None, f"the run ended before pausing {where or ''}"
            n -= where in (None, paused)
            if n == 0:
                return paused

    def finish(self):
        """It goes on at every pause to its end: its exit status and stderr."""
        while self.pause() is not None:
            pass
        _, stderr = self.process.communicate()
        return self.process.returncode, stderr

    def kill(self) -> int:
        self.process.kill()
        self.process.communicate()
        return self.process.returncode


@pytest.fixture
def paused_train():
    """paused_train(args, cwd=ROOT): a PausedRun of train.py with these arguments, on one thread
    (a tiny model: faster); one still running when the test ends is killed."""
    runs = []

    def start(args: list, cwd=ROOT) -> PausedRun:
        runs.append(PausedRun(args, cwd, dict(os.environ, OMP_NUM_THREADS="1")))
        return runs[-1]
    yield start
    for run in runs:
        if run.process.poll() is None:
            run.kill()
