"""A careless user's commands, for every script: each fails with exactly one line, `error: ...`,
that names the setting, flag or file at fault (the rows name them, not the wording around them);
no traceback, and no file changed, made or removed. A rejected train.py run leaves the run already
in its out_dir untouched, even with --overwrite=True.

CASES is the table: case(script, argv, names, setup) runs `python <script> <argv>` in-process
(the script's main(argv); a prepare script's prepare(*argv)) in a copy of a small world, the
working directory:

    data/shakespeare_char/  a tiny prepared dataset (input.txt, train.bin, val.bin, meta.json)
    out/                    a dense run of train.py on it (ckpt.pt, log.jsonl), data_root=data
    mot/                    a MoT run (group_size 2), the same way

on a machine without CUDA unless setup says otherwise. setup(monkeypatch) damages the copy (it
runs there) before the command. The command must raise SystemExit with the line (any other
exception is a traceback: the case fails), holding every one of `names`, print nothing on stderr
itself, and leave every file and folder of the copy as setup left it. CLI_CASES run commands as a
user does, in a subprocess, for what only a subprocess shows: exit status 1, nothing on stdout,
the one line on stderr, a folder's mode that binds even a root process."""

import ctypes
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import tiktoken
import torch

import bench
import evaluate
import gpu_check
import plot
import sample
import study
import train
import upcycle
import visualize
from conftest import ROOT, TINY, error_line, make_data_root, small_bpe
from python_stdlib.prepare import prepare as prepare_stdlib
from shakespeare.prepare import prepare as prepare_shakespeare
from shakespeare_char.prepare import prepare as prepare_char

CHAR = "data/shakespeare_char"


def protocol(S: dict) -> dict:
    """An experiment's protocol with its files in the working directory."""
    return dict(S, results=os.path.abspath("results.jsonl"), docs=[os.path.abspath("doc.md")],
                runs_dir=os.path.abspath("runs"))


# The scripts, as functions of their command-line arguments.
RUNNERS = {
    "train.py": train.main,
    "sample.py": sample.main,
    "bench.py": bench.main,
    "experiments/plot.py": plot.main,
    "experiments/visualize.py": visualize.main,
    "experiments/evaluate.py": evaluate.main,
    "experiments/upcycle.py": lambda argv: upcycle.main(argv, protocol(upcycle.EXPERIMENT)),
    "experiments/study.py": lambda argv: study.main(argv, protocol(study.STUDY)),
    "experiments/gpu_check.py": gpu_check.main,
    "data/shakespeare_char/prepare.py": lambda argv: prepare_char(*argv),  # out_dir
    "data/shakespeare/prepare.py": lambda argv: prepare_shakespeare(*argv),  # out_dir
    "data/python_stdlib/prepare.py": lambda argv: prepare_stdlib(*argv),  # out_dir, source_dir
    "data/openwebtext/prepare.py":
        lambda argv: importlib.import_module("openwebtext.prepare").main(argv),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    make_data_root(root / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # relative paths in the checkpoints: a copy of the world uses its own data
        for out_dir, ffn in (("out", "dense"), ("mot", "mot")):
            train.main(TINY + ["--data_root=data", f"--out_dir={out_dir}", f"--ffn={ffn}",
                               "--max_iters=2"])
    return root


@pytest.fixture
def here(world, tmp_path, monkeypatch):
    """A copy of the world, the working directory; its runs read its own data (a run saves its
    data_root absolute)."""
    copy = shutil.copytree(world, tmp_path / "world")
    monkeypatch.chdir(copy)
    for out_dir in ("out", "mot"):
        path = os.path.join(copy, out_dir, "ckpt.pt")
        checkpoint = torch.load(path, weights_only=True)
        checkpoint["config"]["data_root"] = os.path.join(copy, "data")
        torch.save(checkpoint, path)
    return copy


def snapshot(root) -> dict:
    """Every file's bytes and every folder under root."""
    found = {}
    for directory, folders, files in os.walk(root):
        for name in folders:
            found[os.path.relpath(os.path.join(directory, name), root)] = "folder"
        for name in files:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, root)] = f.read()
    return found


# ----------------------------------------------------------------------------- damages


def write(path: str, content):
    """setup: `content` (text or bytes) written at path, its folder made if needed."""
    def setup(monkeypatch):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "wb") as f:
            f.write(content if isinstance(content, bytes) else content.encode())
    return setup


def remove(path: str):
    return lambda monkeypatch: os.remove(path)


def folder(path: str):
    """setup: a folder where a file was (or nothing was)."""
    def setup(monkeypatch):
        if os.path.isfile(path):
            os.remove(path)
        os.makedirs(path)
    return setup


def truncate(path: str, size: int = 1000):
    def setup(monkeypatch):
        with open(path, "rb") as f:
            content = f.read()[:size]
        with open(path, "wb") as f:
            f.write(content)
    return setup


def last_token(path: str, token: int):
    """setup: the last token of a token file (uint16) made `token`."""
    def setup(monkeypatch):
        with open(path, "r+b") as f:
            f.seek(-2, os.SEEK_END)
            f.write(token.to_bytes(2, "little"))
    return setup


def meta_in_checkpoint(change):
    """setup: out/ckpt.pt holding change(its meta) as the dataset's meta.json."""
    def setup(monkeypatch):
        checkpoint = torch.load("out/ckpt.pt", weights_only=True)
        checkpoint["meta"] = change(checkpoint["meta"])
        torch.save(checkpoint, "out/ckpt.pt")
    return setup


def meta_json(change):
    """setup: the dataset's meta.json changed to change(meta)."""
    def setup(monkeypatch):
        with open(f"{CHAR}/meta.json") as f:
            meta = json.load(f)
        with open(f"{CHAR}/meta.json", "w") as f:
            json.dump(change(meta), f)
    return setup


def diverged_checkpoint(monkeypatch):
    """setup: out/ckpt.pt as a run that diverged would have saved it (train.py saves none): a NaN
    weight."""
    checkpoint = torch.load("out/ckpt.pt", weights_only=True)
    checkpoint["model"]["transformer.wte.weight"][0, 0] = float("nan")
    torch.save(checkpoint, "out/ckpt.pt")


def gpus(count: int):
    """setup: a machine with `count` GPUs, as torch sees it."""
    def setup(monkeypatch):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    return setup


def log_lines(run: str, *lines):
    """setup: run/log.jsonl made of these lines (None: its first line as train.py wrote it)."""
    def setup(monkeypatch):
        with open(f"{run}/log.jsonl") as f:
            first = f.readline().rstrip("\n")
        with open(f"{run}/log.jsonl", "w") as f:
            f.write("".join((first if line is None else line) + "\n" for line in lines))
    return setup


def symlink(path: str):
    """setup: path a symlink to `precious`, a file of the user's, its folder made if needed."""
    def setup(monkeypatch):
        write("precious", "a file of the user's\n")(monkeypatch)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.symlink(os.path.abspath("precious"), path)
    return setup


def model_alone(path: str):
    """setup: the checkpoint at path holding only the four entries convert.from_checkpoint
    requires (the model, its settings, its iteration, the dataset's meta.json)."""
    def setup(monkeypatch):
        checkpoint = torch.load(path, weights_only=True)
        torch.save({key: checkpoint[key] for key in ("model", "model_args", "iter_num", "meta")},
                   path)
    return setup


WIDE = "".join(map(chr, range(0x10000, 0x10000 + 70000)))  # 70,000 distinct characters


def openwebtext(monkeypatch):
    """setup: the openwebtext script imported afresh with a small GPT-2 BPE (it encodes at import;
    tiktoken would download GPT-2's), and no `datasets` package."""
    enc = small_bpe()
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: enc)
    monkeypatch.delitem(sys.modules, "openwebtext.prepare", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", None)


def no_wandb_login(monkeypatch):
    """setup: wandb.init as it fails without a W&B login."""
    import wandb

    def init(**kwargs):
        raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.")
    monkeypatch.setattr(wandb, "init", init)


# ----------------------------------------------------------------------------- the table


def case(script, argv, names, setup=None, id=None):
    """A row: `python script argv` fails in one line naming each of `names`."""
    shown = [a for a in argv if a not in BASE]
    return pytest.param(script, argv, names, setup, id=id or " ".join([script, *shown]))


TRAIN = TINY + ["--data_root=data", "--out_dir=new", "--max_iters=2"]  # a new run
OVER = TINY + ["--data_root=data", "--out_dir=out", "--overwrite=True"]  # over the world's run
RUN = ["--out_dir=out", "--device=cpu", "--max_new_tokens=2", "--num_samples=1"]
SAMPLE = RUN[:3]  # as many samples as sample.py's default
MOT = ["--out_dir=mot"] + RUN[1:]  # one sample: the MoT group of 2 takes a companion
BASE = set(TRAIN + RUN)  # left out of the rows' ids
RESULT = '{"name": "dense-s0", "command": []}\n'
DOC = f"# Results\n{study.BEGIN} final -->\nold tables\n"  # no END line
META = f"{CHAR}/meta.json"
CASES = [
    # train.py: settings (each typed, finite, in range; devices this PyTorch and machine have),
    # for a new run and over a run with --overwrite=True (which must not lose it)
    *[case("train.py", TRAIN + [flag], [name]) for flag, name in [
        ("--device=mps", "device"), ("--device=xpu", "device"), ("--device=meta", "device"),
        ("--device=gpu:0", "device"), ("--seed=18446744073709551616", "seed"),
        ("--seed=-1", "seed"), ("--expert_size=abc", "expert_size"),
        ("--expert_size=16.0", "expert_size"), ("--expert_size=True", "expert_size"),
        ("--capacity_factor=abc", "capacity_factor"),
        ("--controller_init_std=[1]", "controller_init_std"),
        ("--temperature_final=abc", "temperature_final"), ("--transition=1", "transition"),
        ("--learning_rate=inf", "learning_rate"), ("--learning_rate=nan", "learning_rate"),
        ("--dropout=1e999", "dropout"), ("--n_layer=True", "n_layer"),
        ("--max_iters=1.5", "max_iters"), ("--dtype=float64", "dtype"),
        ("--compile=yes", "compile"), ("--init_from=nowhere", "nowhere/ckpt.pt"),
        ("--n_layr=2", "n_layr"), ("--n_layer", "--n_layer"),
    ]],
    *[case("train.py", OVER + flags, names) for flags, names in [
        (["--batch_size=0"], ["batch_size"]),
        (["--batch_size=-4"], ["batch_size"]),
        (["--eval_interval=0"], ["eval_interval"]),
        (["--gradient_accumulation_steps=0"], ["gradient_accumulation_steps"]),
        (["--warmup_iters=20"], ["lr_decay_iters", "warmup_iters", "decay_lr"]),
        (["--learning_rate=-1e-3"], ["learning_rate"]),
        (["--ffn=mot", "--temperature_final=0"], ["temperature_final"]),
        (["--temperature_final=0.5"], ["temperature_final"]),
        (["--eval_iters=0"], ["eval_iters"]),
        (["--log_interval=0"], ["log_interval"]),
        (["--device=cuda"], ["device"]),
        (["--device=gpu"], ["device"]),
        (["--dtype=float64"], ["dtype"]),
        (["--no_such_key=1"], ["no_such_key"]),
        (["--batch_size=abc"], ["batch_size"]),
        (["--batch_size=None"], ["batch_size"]),
        (["--batch_size=3", "--ffn=mot"], ["batch_size", "group_size"]),
        (["--ffn=transformer"], ["ffn"]),
        (["--dataset=nope"], ["data/nope/train.bin", "data/nope/prepare.py"]),
        (["--transition=discrete"], ["transition", "init_from"]),
        (["--init_from=data"], ["data/ckpt.pt"]),
        (["--init_from=out", "--upcycle=moe", "--expert_size=16"], ["expert_size", "n_embd"]),
        (["--init_from=out", "--upcycle=moe", "--n_embd=32"], ["n_embd"]),
        (["--upcycle=moe"], ["upcycle", "init_from"]),
        (["--upcycle=dense", "--init_from=out"], ["upcycle"]),
        (["--init_from=resume", "--out_dir=empty"], ["empty/ckpt.pt"]),
        (["--init_from=resume", "--n_layer=3"], ["n_layer", "out/ckpt.pt"]),
        (["--init_from=resume", "--ffn=moe"], ["ffn", "out/ckpt.pt"]),
        (["--init_from=resume", "--dataset=other"], ["dataset", "out/ckpt.pt"]),
        (["--init_from=resume", "--batch_size=8"], ["batch_size", "out/ckpt.pt"]),
        (["--init_from=out", "--transition=discrete", "--n_layer=3"], ["n_layer"]),
    ]],
    case("train.py", TRAIN + ["--device=cuda:7"], ["device"], gpus(1),
         id="train.py --device=cuda:7 on a machine with one GPU"),
    case("train.py", OVER + ["--out_dir=a_file"], ["out_dir", "a_file"], write("a_file", "x"),
         id="train.py --out_dir=a_file, a file"),
    # train.py: config files (Python assignments only)
    case("train.py", ["c.json"] + TRAIN, ["c.json"], write("c.json", '{"n_layer": 4}'),
         id="train.py with a JSON config"),
    case("train.py", ["c.yaml"] + TRAIN, ["c.yaml"], write("c.yaml", "n_layer: 4\n"),
         id="train.py with a YAML config"),
    case("train.py", ["c.py"] + TRAIN, ["c.py"], write("c.py", '{"n_layer": 4}\n'),
         id="train.py with JSON in a .py config"),
    case("train.py", ["c.py"] + TRAIN, ["c.py"], write("c.py", "n_layer: 4\n"),
         id="train.py with YAML in a .py config"),
    case("train.py", ["c.py"] + TRAIN, ["c.py", "ZeroDivisionError"],
         write("c.py", "n_layer = 4\nn_head = 1 / 0\n"), id="train.py config that raises"),
    case("train.py", OVER + ["raises.py"], ["raises.py", "ZeroDivisionError"],
         write("raises.py", "batch_size = 8\nn_layer = 1 // 0\n"),
         id="train.py --overwrite=True config that raises on its 2nd line"),
    case("train.py", OVER + ["syntax.py"], ["syntax.py"], write("syntax.py", "batch_size = = 8\n"),
         id="train.py config with a syntax error"),
    case("train.py", OVER + ["my_configs"], ["my_configs"], folder("my_configs"),
         id="train.py config that is a folder"),
    case("train.py", OVER + ["latin1.py"], ["latin1.py"],
         write("latin1.py", "# caf\xe9\n".encode("latin-1")), id="train.py config not UTF-8"),
    case("train.py", OVER + ["missing.py"], ["missing.py"], id="train.py config not there"),
    # train.py: the data
    case("train.py", TRAIN, [f"{CHAR}/train.bin"], folder(f"{CHAR}/train.bin"),
         id="train.py when train.bin is a folder"),
    case("train.py", TRAIN, [META], folder(META), id="train.py when meta.json is a folder"),
    case("train.py", TRAIN + [f"--data_root={CHAR}"], ["data_root"],
         id="train.py --data_root inside a dataset"),
    case("train.py", OVER, [f"{CHAR}/train.bin", "block_size"], write(f"{CHAR}/train.bin", b""),
         id="train.py with an empty train.bin"),
    case("train.py", OVER, [f"{CHAR}/val.bin", "prepare.py"],
         write(f"{CHAR}/val.bin", b"\0" * 101), id="train.py with an odd-sized val.bin"),
    case("train.py", OVER, [META], write(META, "{not json"), id="train.py meta.json not JSON"),
    case("train.py", OVER, [META, "vocab_size"], write(META, '{"tokenizer": "char"}'),
         id="train.py meta.json without vocab_size"),
    case("train.py", OVER, [META, "vocab_size"],
         write(META, '{"vocab_size": 5, "tokenizer": "char", "chars": []}'),
         id="train.py meta.json with fewer chars than vocab_size"),
    case("train.py", OVER, [f"{CHAR}/train.bin", "vocab_size"],
         meta_json(lambda m: dict(m, vocab_size=5, chars=m["chars"][:5])),
         id="train.py train.bin with token ids beyond meta.json's vocab_size"),
    case("train.py", OVER, [f"{CHAR}/train.bin", "vocab_size"],
         last_token(f"{CHAR}/train.bin", 60000), id="train.py train.bin's last token foreign"),
    case("train.py", OVER + ["--init_from=resume"], [META, "data_root"],
         meta_json(lambda m: dict(m, chars=m["chars"][::-1])),
         id="train.py resume with another meta.json of the same vocab_size"),
    case("train.py", OVER + ["--init_from=resume"], ["out/ckpt.pt", "transformer.wte.weight"],
         diverged_checkpoint, id="train.py resume a checkpoint with a NaN weight"),
    # train.py: an out_dir that holds a run (nothing of it may be lost)
    case("train.py", TRAIN + ["--out_dir=out", "--overwrite=True", "--device=meta"],
         ["device"], id="train.py --overwrite=True with a setting that fails late"),
    case("train.py", TRAIN + ["--out_dir=out", "--overwrite=True", "--wandb_log=True"],
         ["wandb_log"], no_wandb_login,
         id="train.py --overwrite=True --wandb_log=True without a W&B login"),
    case("train.py", TRAIN + ["--out_dir=out"], ["out/log.jsonl", "overwrite"],
         remove("out/ckpt.pt"), id="train.py into an out_dir with log.jsonl but no ckpt.pt"),
    case("train.py", TRAIN + ["--out_dir=out", "--init_from=resume"],
         ["out/log.jsonl", "out/ckpt.pt"], remove("out/ckpt.pt"),
         id="train.py --init_from=resume without ckpt.pt"),
    case("train.py", TRAIN + ["--out_dir=out", "--init_from=resume", "--max_iters=4"],
         ["out/log.jsonl"], log_lines("out", None, '{"loss": 1.0}'),
         id="train.py resume with a foreign log line"),
    case("train.py", TRAIN + ["--out_dir=out", "--init_from=resume", "--max_iters=4"],
         ["out/log.jsonl"], log_lines("out", None, "", "not json"),
         id="train.py resume with a line not JSON"),
    case("train.py", TRAIN + ["--out_dir=out", "--init_from=resume", "--max_iters=4"],
         ["out/log.jsonl"], log_lines("out", '{"iter": "0"}'),
         id="train.py resume with an iter that is not a number"),
    case("train.py", TRAIN + ["--out_dir=out", "--init_from=resume", "--max_iters=1"],
         ["max_iters", "out/ckpt.pt"], id="train.py resume with max_iters below its checkpoint's"),
    case("train.py", OVER + ["--learning_rate=1e-3", "--min_lr=1e-2"], ["min_lr", "learning_rate"]),
    case("train.py", TRAIN + ["--out_dir=a/b/c", "--dataset=nope"], ["data/nope/train.bin"],
         id="train.py a new run into a/b/c that fails late: no folder of it left"),
    case("train.py", ["c.py"] + TRAIN, ["c.py"], write("c.py", "n_layer = 2\nquit()\n"),
         id="train.py config that calls quit()"),
    case("train.py", OVER + ["c.py"], ["c.py"], write("c.py", "import sys\nsys.exit(0)\n"),
         id="train.py --overwrite=True config that calls sys.exit(0)"),
    # train.py: no write through a symlink put in out_dir (the file it links to keeps its bytes)
    case("train.py", OVER, ["out/ckpt.pt.tmp"], symlink("out/ckpt.pt.tmp"),
         id="train.py --overwrite=True with a symlink at ckpt.pt.tmp"),
    case("train.py", OVER, ["out/log.jsonl.tmp"], symlink("out/log.jsonl.tmp"),
         id="train.py --overwrite=True with a symlink at log.jsonl.tmp"),
    case("train.py", TRAIN + ["--out_dir=linked"], ["linked/ckpt.pt"], symlink("linked/ckpt.pt"),
         id="train.py into an out_dir whose ckpt.pt is a symlink"),
    case("train.py", TRAIN + ["--out_dir=linked"], ["linked/log.jsonl"],
         symlink("linked/log.jsonl"), id="train.py into an out_dir whose log.jsonl is a symlink"),
    # a checkpoint of the model alone: the four entries convert.from_checkpoint requires
    case("train.py", TRAIN + ["--out_dir=out", "--init_from=resume", "--max_iters=4"],
         ["out/ckpt.pt", "config"], model_alone("out/ckpt.pt"),
         id="train.py resume a checkpoint of the model alone"),
    case("train.py", TRAIN + ["--init_from=out"], ["out/ckpt.pt", "config"],
         model_alone("out/ckpt.pt"), id="train.py finetune a checkpoint of the model alone"),
    case("sample.py", MOT, ["mot/ckpt.pt", "config", "--no-companions"],
         model_alone("mot/ckpt.pt"), id="sample MoT companions, a checkpoint of the model alone"),
    case("experiments/evaluate.py", ["out"], ["out/ckpt.pt", "config"], model_alone("out/ckpt.pt"),
         id="evaluate a checkpoint of the model alone"),
    # sample.py
    *[case("sample.py", SAMPLE + [flag], [name]) for flag, name in [
        ("--temperature=-1", "--temperature"), ("--top_k=0", "--top_k"),
        ("--num_samples=0", "--num_samples"), ("--seed=18446744073709551616", "--seed")]],
    case("sample.py", SAMPLE + ["--start=FILE:missing.txt"], ["--start", "missing.txt"]),
    case("sample.py", SAMPLE + ["--start=FILE:latin1.txt"], ["--start", "latin1.txt"],
         write("latin1.txt", "caf\xe9".encode("latin-1"))),
    case("sample.py", SAMPLE + ["--start=Zebra"], ["Z"], id="sample.py a prompt outside the vocab"),
    case("sample.py", SAMPLE + ["--start=Speak"], ["out/ckpt.pt", "transformer.wte.weight"],
         diverged_checkpoint, id="sample.py a checkpoint with a NaN weight"),
    case("sample.py", RUN, ["out/ckpt.pt"],
         meta_in_checkpoint(lambda m: {k: v for k, v in m.items() if k != "chars"}),
         id="sample meta without chars"),
    case("sample.py", RUN, ["out/ckpt.pt", "vocab_size"],
         meta_in_checkpoint(lambda m: dict(m, chars=m["chars"][:-3])),
         id="sample vocab_size > len(chars)"),
    case("sample.py", RUN, ["out/ckpt.pt", "tokenizer"],
         meta_in_checkpoint(lambda m: dict(m, tokenizer="bpe")), id="sample unknown tokenizer"),
    case("sample.py", RUN + ["--init_from=out"], ["--init_from", "--out_dir"]),
    case("sample.py", RUN + ["--init_from=data"], ["--init_from"]),
    case("sample.py", RUN + ["--init_from=gpt-2"], ["--init_from"]),
    case("sample.py", ["--out_dir=hf"], ["--out_dir", "--init_from"],
         write("hf/config.json", "{}")),
    case("sample.py", RUN[:1] + ["--device=mps"], ["--device"], truncate("out/ckpt.pt"),
         id="sample --device=mps before a damaged checkpoint"),
    case("sample.py", RUN[:1] + ["--device=xpu"], ["--device"]),
    case("sample.py", RUN[:1] + ["--device=meta"], ["--device"]),
    case("sample.py", RUN[:1] + ["--device=garbage"], ["--device"]),
    case("sample.py", RUN[:1] + ["--device=cuda:7"], ["--device"], gpus(1),
         id="sample --device=cuda:7 on a 1-GPU machine"),
    case("sample.py", RUN[:1] + ["--device=cuda"], ["--device"], gpus(0)),
    case("sample.py", SAMPLE + ["--device=cuda"], ["--device"],
         id="sample --device=cuda after --device=cpu"),
    case("sample.py", RUN + ["--num_samples=abc"], ["--num_samples"]),
    case("sample.py", RUN + ["--start=FILE:data"], ["--start"]),
    case("sample.py", RUN, ["out/ckpt.pt"], truncate("out/ckpt.pt"),
         id="sample truncated checkpoint"),
    case("sample.py", MOT, [f"{CHAR}/train.bin", "--no-companions"],
         write(f"{CHAR}/train.bin", b"\0" * 1001),
         id="sample MoT companions from an odd train.bin"),
    case("sample.py", MOT, [f"{CHAR}/train.bin", "--no-companions"],
         write(f"{CHAR}/train.bin", b"\xff" * 2000),
         id="sample MoT companions from another dataset"),
    # bench.py
    case("bench.py", ["--reps=0"], ["--reps"]),
    case("bench.py", ["--tiny", "--reps=0"], ["--reps"]),
    case("bench.py", ["--C", "-16"], ["--C"]),
    case("bench.py", ["--warmup=-1"], ["--warmup"]),
    case("bench.py", ["--batch_size=3", "--G", "2"], ["--batch_size", "--G"]),
    case("bench.py", ["--C", "16", "--E", "3", "--G", "2"], ["--E"]),
    case("bench.py", ["--device=cuda"], ["--device"], gpus(0)),
    case("bench.py", ["--device=cuda:1"], ["--device"], gpus(1)),
    case("bench.py", ["--step", "--memory"], ["--step", "--memory"]),
    case("bench.py", ["--reps=many"], ["--reps"]),
    # experiments/plot.py
    case("experiments/plot.py", ["out", "--out=x.png"], ["out/log.jsonl"],
         write("out/log.jsonl", ""), id="plot empty log"),
    case("experiments/plot.py", ["out", "--out=x.png"], ["out/log.jsonl"],
         log_lines("out", None, "", None), id="plot blank line"),
    case("experiments/plot.py", ["out", "--out=x.png"], ["out/log.jsonl"],
         log_lines("out", '{"hello": 1}'), id="plot foreign line"),
    case("experiments/plot.py", ["out", "--out=x.png"], ["out/log.jsonl"],
         log_lines("out", None, '{"iter": 4, "val_lo'), id="plot half-written line"),
    case("experiments/plot.py", ["out", "--out=x.png"], ["out/log.jsonl"],
         remove("out/log.jsonl"), id="plot missing log"),
    case("experiments/plot.py", ["out", "--out=x.png"], ["out/log.jsonl"],
         folder("out/log.jsonl"), id="plot log is a folder"),
    case("experiments/plot.py", ["out", "--out=no/x.png"], ["--out", "no/x.png"]),
    case("experiments/plot.py", ["out", "--out=x.xyz"], ["--out", "x.xyz"]),
    case("experiments/plot.py", ["out", "mot", "--labels", "a"], ["labels"]),
    # experiments/visualize.py
    case("experiments/visualize.py", ["--out_dir=mot"], ["mot/log.jsonl"],
         remove("mot/log.jsonl"), id="visualize without log.jsonl"),
    case("experiments/visualize.py", ["--out_dir=mot"], ["mot/ckpt.pt"],
         remove("mot/ckpt.pt"), id="visualize without ckpt.pt"),
    case("experiments/visualize.py", ["--out_dir=out"], ["out/ckpt.pt"]),
    case("experiments/visualize.py", ["--out_dir=mot", "--layer=5"], ["--layer"]),
    case("experiments/visualize.py", ["--out_dir=mot", "--device=mps"], ["--device"]),
    # experiments/evaluate.py
    case("experiments/evaluate.py", ["out", "nowhere"], ["nowhere/ckpt.pt"]),
    case("experiments/evaluate.py", ["out", "--eval_iters=0"], ["--eval_iters"]),
    case("experiments/evaluate.py", ["out"], ["out/ckpt.pt"],
         truncate("out/ckpt.pt"), id="evaluate truncated checkpoint"),
    case("experiments/evaluate.py", ["out"], [META],
         write(META, "{not json"), id="evaluate meta.json not JSON"),
    # experiments/upcycle.py
    case("experiments/upcycle.py", ["--step0", "nowhere"], ["--step0", "nowhere/ckpt.pt"]),
    case("experiments/upcycle.py", ["--step0", "mot"], ["--step0", "ffn"]),
    case("experiments/upcycle.py", ["--step0", "out"], [f"{CHAR}/val.bin"],
         remove(f"{CHAR}/val.bin"), id="upcycle --step0 without val.bin"),
    case("experiments/upcycle.py", ["--table"], ["results.jsonl"],
         write("results.jsonl", RESULT + "\n"), id="upcycle --table blank line"),
    # experiments/study.py
    case("experiments/study.py", ["--table"], ["results.jsonl"],
         write("results.jsonl", RESULT + "}{\n"), id="study --table line not JSON"),
    case("experiments/study.py", ["--table"], ["results.jsonl"],
         write("results.jsonl", "\n" + RESULT), id="study --table blank line"),
    case("experiments/study.py", ["--table"], ["results.jsonl"],
         write("results.jsonl", "[1, 2]\n"), id="study --table foreign line"),
    case("experiments/study.py", ["--table"], ["results.jsonl"],
         write("results.jsonl", b"\xff\xfe\n"), id="study --table not UTF-8"),
    case("experiments/study.py", ["--docs"], ["doc.md"],
         write("doc.md", DOC), id="study --docs without the end line"),
    case("experiments/study.py", ["--stage", "finals"], ["--stage", "finals"]),
    # experiments/gpu_check.py
    case("experiments/gpu_check.py", ["--device=cuda:7"], ["--device"], gpus(1)),
    case("experiments/gpu_check.py", ["--sections=layer"], ["--sections", "-k"]),
    # the prepare scripts
    case("data/shakespeare_char/prepare.py", [CHAR], [f"{CHAR}/input.txt"],
         write(f"{CHAR}/input.txt", "caf\xe9\n".encode("latin-1")), id="prepare char latin-1"),
    case("data/shakespeare_char/prepare.py", [CHAR], [f"{CHAR}/input.txt"],
         folder(f"{CHAR}/input.txt"), id="prepare char input.txt is a folder"),
    case("data/shakespeare_char/prepare.py", [CHAR], [META],
         folder(META), id="prepare char meta.json is a folder: all files or none"),
    case("data/shakespeare_char/prepare.py", ["fresh"], ["fresh/input.txt"],
         write("fresh/input.txt", ""), id="prepare char of an empty input.txt"),
    case("data/shakespeare_char/prepare.py", [CHAR], ["train.bin"],
         write(f"{CHAR}/input.txt", "a"), id="prepare char of a 1-character input.txt"),
    case("data/shakespeare_char/prepare.py", [CHAR], [f"{CHAR}/input.txt", "70,000"],
         write(f"{CHAR}/input.txt", WIDE), id="prepare char of 70,000 distinct characters"),
    case("data/shakespeare/prepare.py", [CHAR], [f"{CHAR}/input.txt"],
         write(f"{CHAR}/input.txt", b"\x80abc"), id="prepare shakespeare not UTF-8"),
    case("data/python_stdlib/prepare.py", [CHAR, "lib"], ["lib"],
         folder("lib"), id="prepare python_stdlib of a folder without .py files"),
    case("data/openwebtext/prepare.py", ["--num_proc=0"], ["--num_proc"], openwebtext),
    case("data/openwebtext/prepare.py", [], ["datasets"], openwebtext,
         id="prepare openwebtext without datasets"),
]


@pytest.mark.parametrize("script, argv, names, setup", CASES)
def test_a_careless_command_fails_in_one_line(here, monkeypatch, capsys, script, argv, names,
                                              setup):
    gpus(0)(monkeypatch)  # the same on a machine with a GPU
    if setup:
        setup(monkeypatch)
    before = snapshot(here)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        RUNNERS[script](argv)
    line = error_line(e)
    assert all(name in line for name in names), line
    assert capsys.readouterr().err == ""
    assert snapshot(here) == before


def unprivileged():
    """Run in the child before it starts: a root process drops CAP_DAC_OVERRIDE, so that a
    folder's mode binds it as it binds a user."""
    if os.geteuid() == 0:
        ctypes.CDLL(None).prctl(24, 1, 0, 0, 0)  # PR_CAPBSET_DROP, CAP_DAC_OVERRIDE


def prepare_here(text=None):
    """setup: the char prepare script beside the world's dataset (it prepares its own folder),
    and `text` its input.txt if given."""
    def setup(monkeypatch):
        for script in ("prepare_common.py", "shakespeare_char/prepare.py"):
            shutil.copy(os.path.join(ROOT, "data", script), os.path.join("data", script))
        shutil.copy(os.path.join(ROOT, "configurator.py"), "configurator.py")  # prepare's fail
        if text is not None:
            write(f"{CHAR}/input.txt", text)(monkeypatch)
    return setup


def read_only_dataset(monkeypatch):
    """setup: the char prepare script beside the world's dataset, whose folder is read-only."""
    prepare_here()(monkeypatch)
    os.chmod(CHAR, 0o555)


def read_only_folder(monkeypatch):
    os.makedirs("read-only", mode=0o555)


CLI_TRAIN = [f"{ROOT}/train.py", *TINY, "--data_root=data", "--out_dir=out"]
CLI_SAMPLE = [f"{ROOT}/sample.py", "--out_dir=out", "--device=cpu"]
CLI_CASES = [  # (command, setup, names): the scripts as a user runs them, in the world's copy
    pytest.param(CLI_TRAIN + ["--out_dir=read-only/out"], read_only_folder, ["read-only/out"],
                 id="train.py into a read-only folder"),
    pytest.param(CLI_TRAIN + ["raises.py"], write("raises.py", "n_layer = 1 // 0\n"),
                 ["raises.py", "ZeroDivisionError"], id="train.py config that raises"),
    pytest.param(CLI_TRAIN + ["--init_from=resume"], truncate("out/ckpt.pt"), ["out/ckpt.pt"],
                 id="train.py resume a truncated checkpoint"),
    pytest.param(CLI_TRAIN + ["--bogus_flag=1"], None, ["bogus_flag"], id="train.py --bogus_flag"),
    pytest.param(CLI_SAMPLE + ["--top_k=0"], None, ["--top_k"], id="sample.py --top_k=0"),
    pytest.param(CLI_SAMPLE, truncate("out/ckpt.pt"), ["out/ckpt.pt"],
                 id="sample.py a truncated checkpoint"),
    pytest.param(CLI_SAMPLE, diverged_checkpoint, ["out/ckpt.pt", "transformer.wte.weight"],
                 id="sample.py a checkpoint with a NaN weight"),
    pytest.param([f"{ROOT}/sample.py", "--init_from=out"], None, ["--init_from", "--out_dir"],
                 id="sample.py --init_from=out"),
    pytest.param([f"{ROOT}/bench.py", "--batch_size=3", "--G", "2"], None,
                 ["--batch_size", "--G"], id="bench.py --batch_size=3 --G 2"),
    pytest.param(["data/shakespeare_char/prepare.py"], read_only_dataset, [CHAR],
                 id="prepare char in a read-only folder"),
    pytest.param(["data/shakespeare_char/prepare.py", "--out_dir=x"], prepare_here(),
                 ["--out_dir=x"], id="prepare char with an argument"),
    pytest.param(["-O", "data/shakespeare_char/prepare.py"], prepare_here(WIDE), ["input.txt"],
                 id="python -O prepare char of 70,000 distinct characters"),
]


@pytest.mark.parametrize("command, setup, names", CLI_CASES)
def test_a_careless_command_line(here, monkeypatch, command, setup, names):
    """As a user sees it: exit status 1, nothing on stdout, one line on stderr, no traceback,
    nothing changed."""
    if setup:
        setup(monkeypatch)
    before = snapshot(here)
    try:
        result = subprocess.run([sys.executable, *command], capture_output=True, text=True,
                                env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"),
                                preexec_fn=unprivileged)
    finally:
        for directory, _, _ in os.walk(here):
            os.chmod(directory, 0o755)
    assert (result.returncode, result.stdout) == (1, ""), result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(name in lines[0] for name in names), lines[0]
    assert snapshot(here) == before


# `python script args` (train.py or sample.py) as a user runs it, paused first where the test
# says: at the import of a module ("import torch.nn", halfway through torch's own import) or at
# the call of a method of mot.GPT ("GPT.__init__": the model's build); there it prints `paused`
# and waits for a line on stdin, and a signal sent then lands at that moment, however loaded the
# machine is.
INTERRUPTIBLE = """
import importlib.abc, runpy, sys
root, where, script = sys.argv[1:4]
sys.argv, sys.path[0] = [script, *sys.argv[4:]], root
def pause():
    print("paused", flush=True)
    sys.stdin.readline()
class PauseAtImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if where == "import " + name:
            pause()
if where.startswith("import "):
    sys.meta_path.insert(0, PauseAtImport())
else:
    import mot
    name = where.split(".")[1]
    method = getattr(mot.GPT, name)
    def paused(self, *args, **kwargs):
        pause()
        return method(self, *args, **kwargs)
    setattr(mot.GPT, name, paused)
runpy.run_path(script, run_name="__main__")
"""
NEW_RUN = [*TINY, "--data_root=data", "--out_dir=new/run", "--max_iters=4"]
OVER_RUN = [*TINY, "--data_root=data", "--out_dir=out", "--max_iters=4", "--overwrite=True"]


@pytest.mark.parametrize("command, where, signum", [
    (["train.py", *NEW_RUN], "import torch.nn", signal.SIGINT),
    (["train.py", *NEW_RUN], "import torch.nn", signal.SIGTERM),
    (["train.py", *OVER_RUN], "GPT.__init__", signal.SIGINT),  # the model's build
    (["train.py", *NEW_RUN], "GPT.configure_optimizers", signal.SIGTERM),
    (["sample.py", "--out_dir=out", "--device=cpu"], "import torch.nn", signal.SIGINT),
    (["sample.py", "--out_dir=out", "--device=cpu", "--max_new_tokens=100000"], "GPT.forward",
     signal.SIGINT),  # generating
], ids=["train.py importing torch, SIGINT", "train.py importing torch, SIGTERM",
        "train.py --overwrite=True building the model, SIGINT",
        "train.py into new/run making its optimizer, SIGTERM", "sample.py importing torch, SIGINT",
        "sample.py generating, SIGINT"])
def test_ctrl_c_or_sigterm_at_any_moment_is_one_line(here, command, where, signum):
    """Ctrl-C or SIGTERM while train.py or sample.py imports torch (seconds), builds the model or
    the optimizer, or generates: exit status 1, one line on stderr naming the signal, no
    traceback, and no file changed, made or removed: the run that --overwrite=True would have
    replaced keeps its checkpoint, the folders new/run made are gone."""
    before = snapshot(here)
    process = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTIBLE, ROOT, where, os.path.join(ROOT, command[0]),
         *command[1:]], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1"))
    try:
        assert process.stdout.readline() == "paused\n", process.communicate()[1]
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert (process.returncode, stdout) == (1, ""), stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert signum.name in lines[0], lines[0]
    assert snapshot(here) == before


def test_a_settings_error_under_torchrun_is_one_line_and_leaves_nothing(here):
    """A mistake every process finds (here a dataset that is not there, found after rank 0 took
    its new out_dir) under torchrun with 2 processes: the line once, not once per process, and
    no folder of the run left behind."""
    before = snapshot(here)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         os.path.join(ROOT, "train.py"), *NEW_RUN, "--gradient_accumulation_steps=2",
         "--dataset=nope"], capture_output=True,
        text=True, timeout=300, env=dict(os.environ, CUDA_VISIBLE_DEVICES="",
                                         PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1"))
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "data/nope/train.bin" in errors[0], result.stderr
    assert snapshot(here) == before


def test_prepare_help_prints_and_writes_nothing(here, monkeypatch):
    """python data/shakespeare_char/prepare.py --help: what the script does, exit 0, the dataset
    beside it as it was."""
    prepare_here()(monkeypatch)
    before = snapshot(here)
    result = subprocess.run([sys.executable, "data/shakespeare_char/prepare.py", "--help"],
                            capture_output=True, text=True,
                            env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    assert result.returncode == 0 and result.stdout.startswith("usage:"), result.stderr
    assert snapshot(here) == before


def test_the_help_still_prints_and_tiny_sets_only_what_is_not_given(capsys):
    for main in (sample.main, bench.main):
        with pytest.raises(SystemExit) as e:
            main(["--help"])
        assert e.value.code == 0 and capsys.readouterr().out.startswith("usage:")
    tiny = bench.parse(["--tiny", "--reps=3", "--C", "32"])
    assert (tiny.reps, tiny.C, tiny.batch_size, tiny.warmup) == (3, [32], 4, 1)
    assert (bench.parse([]).reps, bench.parse([]).C) == (5, [128, 256, 512])


def test_prepare_replaces_the_dataset_whole_and_leaves_nothing_else(here):
    """A second prepare of new text replaces all three files, and leaves no temporary file."""
    with open(f"{CHAR}/input.txt", "w") as f:
        f.write("a new text, another vocabulary\n" * 20)
    prepare_char(CHAR)
    assert sorted(os.listdir(CHAR)) == ["input.txt", "meta.json", "train.bin", "val.bin"]
    with open(f"{CHAR}/meta.json") as f:
        assert json.load(f)["chars"] == sorted(set("a new text, another vocabulary\n"))


# ----------------------------------------------------------------------------- runs never destroy
# one another: the four ways they could, and what train.py accepts that looks careless


def log_of(out_dir) -> list:
    """Every line of out_dir/log.jsonl, less what depends on the machine's speed."""
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items()
                 if k not in ("elapsed_s", "tokens_per_s", "warmup_s")} for line in f]


def weights(out_dir) -> dict:
    return torch.load(os.path.join(out_dir, "ckpt.pt"), weights_only=True)["model"]


@pytest.mark.parametrize("second", [[], ["--init_from=resume"]], ids=["new", "resume"])
def test_a_second_run_into_a_running_runs_out_dir_is_refused_and_takes_nothing(
        here, paused_train, second):
    """While a run trains in out_dir (held at its first step's pause: it took out_dir before it
    wrote anything), a new run there or a resume of it is refused in one line naming out_dir.
    The first run then ends as it would have alone: every line of its log and every weight of its
    checkpoint; nothing of a lock is left after."""
    args = TINY + ["--data_root=data", "--max_iters=100", "--eval_interval=50"]
    train.main(args + ["--out_dir=alone"])
    first = paused_train(args + ["--out_dir=busy"], cwd=here)
    assert first.pause() == "before step"
    with pytest.raises(SystemExit) as e:
        train.main(args + ["--out_dir=busy", *second])
    line = error_line(e)
    assert "out_dir='busy'" in line, line
    returncode, stderr = first.finish()
    assert returncode == 0, stderr
    assert log_of("busy") == log_of("alone")
    assert all(torch.equal(v, weights("alone")[k]) for k, v in weights("busy").items())
    assert sorted(os.listdir("busy")) == ["ckpt.pt", "log.jsonl"]


def test_a_run_whose_out_dir_is_replaced_stops_and_writes_nothing_into_the_new_one(
        here, paused_train):
    """A running run's out_dir moved away (as rm -rf would take it, but kept to look at) and a new
    run started at its path, which trains to its end: the first run, at its next write, stops in
    one line naming out_dir; the new run's log and checkpoint are those it would have alone,
    every line once; the moved folder keeps the first run's files, iter 2's checkpoint, as they
    were when it moved."""
    args = TINY + ["--data_root=data", "--max_iters=100"]
    train.main(args + ["--out_dir=alone", "--max_iters=4"])
    first = paused_train(args + ["--out_dir=busy"], cwd=here)
    first.until("before step", n=4)  # iters 0 and 2 logged, iter 2 saved
    os.rename("busy", "moved")
    moved = snapshot("moved")
    train.main(args + ["--out_dir=busy", "--max_iters=4"])
    returncode, stderr = first.finish()
    assert returncode == 1 and len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith("error: ") and "out_dir='busy'" in stderr, stderr
    assert log_of("busy") == log_of("alone")
    assert all(torch.equal(v, weights("alone")[k]) for k, v in weights("busy").items())
    assert snapshot("moved") == moved
    assert torch.load("moved/ckpt.pt", weights_only=True)["iter_num"] == 2


def test_a_run_that_fails_to_start_removes_no_folder_but_its_own(here, monkeypatch):
    """A new run into a/b makes both folders; when it fails (a dataset not there), it removes
    them. If a/b was replaced while it started (another run started there), it removes nothing:
    never another run's folder."""
    args = TINY + ["--data_root=data", "--out_dir=a/b", "--dataset=nope"]
    with pytest.raises(SystemExit):
        train.main(args)
    assert not os.path.exists("a")
    load = train.dataset.load

    def load_after_a_replacement(*load_args):
        os.rmdir("a/b")
        os.mkdir("a/b")
        return load(*load_args)
    monkeypatch.setattr(train.dataset, "load", load_after_a_replacement)
    with pytest.raises(SystemExit):
        train.main(args)
    assert os.path.isdir("a/b")


def test_the_lock_of_a_killed_run_is_no_lock(here, paused_train):
    """kill -9 (here before its 4th step, after the checkpoint of iter 2): the kernel released
    its lock, which was on the folder itself (no lock file to look stale): the run resumes."""
    args = TINY + ["--data_root=data", "--max_iters=300", "--eval_interval=2"]
    process = paused_train(args + ["--out_dir=killed"], cwd=here)
    process.until("before step", n=4)
    process.kill()
    assert sorted(os.listdir("killed")) == ["ckpt.pt", "log.jsonl"]
    assert torch.load("killed/ckpt.pt", weights_only=True)["iter_num"] == 2
    train.main(args + ["--out_dir=killed", "--init_from=resume", "--max_iters=4"])
    assert [r["iter"] for r in log_of("killed")] == [0, 2, 4]
    assert sorted(os.listdir("killed")) == ["ckpt.pt", "log.jsonl"]


def test_what_looks_careless_but_is_fine(here, capsys, monkeypatch):
    """A config file that imports a module or keeps private helpers (they are not settings),
    blank lines in a resumed log, --help (the settings and their defaults, exit 0), --max_iters=0
    (it evaluates and saves: a run to resume), --out_dir=~/x (in the home folder, no folder
    named ~), a relative --data_root (saved absolute: resumed from another directory, the run
    finds its data), and --overwrite=True into an out_dir whose ckpt.pt and log.jsonl are
    symlinks (replaced by the run's own files: the file they link to keeps its bytes), as is a
    symlink named run.lock (left alone)."""
    with open("c.py", "w") as f:
        f.write("import math\n_width = 32\nn_embd = _width\nlearning_rate = math.sqrt(1e-6)\n")
    tiny = [a for a in TINY if not a.startswith("--n_embd=")]
    train.main(["c.py"] + tiny + ["--data_root=data", "--out_dir=c", "--max_iters=2",
                                  "--decay_lr=False"])
    assert torch.load("c/ckpt.pt", weights_only=True)["model_args"]["n_embd"] == 32
    assert [r["lr"] for r in log_of("c")] == [1e-3, 1e-3]
    with open("out/log.jsonl") as f:
        lines = f.readlines()
    with open("out/log.jsonl", "w") as f:
        f.writelines([lines[0], "\n", "   \n", *lines[1:]])
    train.main(TINY + ["--data_root=data", "--out_dir=out", "--init_from=resume",
                       "--max_iters=4"])
    assert [r["iter"] for r in log_of("out")] == [0, 2, 4]
    monkeypatch.setenv("HOME", os.path.join(here, "home"))
    train.main(TINY + ["--data_root=data", "--out_dir=~/zero", "--max_iters=0"])
    assert not os.path.exists("~") and [r["iter"] for r in log_of("home/zero")] == [0]
    monkeypatch.chdir("home")
    train.main(["--out_dir=zero", "--init_from=resume", "--max_iters=2"])
    assert [r["iter"] for r in log_of("zero")] == [0, 2]
    monkeypatch.chdir(here)
    for name in ("ckpt.pt", "log.jsonl", "run.lock"):  # no run.lock is made, or written
        if os.path.exists(f"c/{name}"):
            os.remove(f"c/{name}")
        symlink(f"c/{name}")(monkeypatch)
    train.main(["c.py"] + tiny + ["--data_root=data", "--out_dir=c", "--max_iters=2",
                                  "--overwrite=True"])
    with open("precious") as f:
        assert f.read() == "a file of the user's\n"
    assert not any(os.path.islink(f"c/{name}") for name in ("ckpt.pt", "log.jsonl"))
    assert os.path.islink("c/run.lock")  # left alone
    assert [r["iter"] for r in log_of("c")] == [0, 2]
    capsys.readouterr()
    for flag in ("--help", "-h"):
        with pytest.raises(SystemExit) as e:
            train.main([flag])
        assert e.value.code == 0
        lines = capsys.readouterr().out.splitlines()
        for name, default in [("--learning_rate", "0.0006"), ("--out_dir", "out"),
                              ("--expert_size", "None")]:
            assert any(name in line and default in line for line in lines), (name, lines)
