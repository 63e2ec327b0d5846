"""A careless user's commands, for every script: each fails with exactly one line on stderr,
`error: ...`, that names what is wrong and the fix; a non-zero exit, no traceback, and no file
changed, made or removed.

CASES is the table: case(script, argv, words, setup) runs `python <script> <argv>` in-process
(the script's main(argv); a prepare script's prepare(*argv)) in a copy of a small world, the
working directory:

    data/shakespeare_char/  a tiny prepared dataset (input.txt, train.bin, val.bin, meta.json)
    out/                    a dense run of train.py on it (ckpt.pt, log.jsonl), data_root=data
    mot/                    a MoT run (group_size 2), the same way

setup(monkeypatch) damages the copy (it runs there) before the command. The command must raise
SystemExit with the line (any other exception is a traceback: the case fails), print nothing on
stderr itself, and leave every file and folder of the copy as setup left it. CLI_CASES run a few
of them as a user does, in a subprocess: for what only a subprocess shows (exit status, the
stderr a user sees, a folder a root process could write anyway)."""

import ctypes
import importlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import tiktoken
import torch

import bench
import bookkeeping
import evaluate
import gpu_check
import plot
import sample
import study
import train
import upcycle
import visualize
from conftest import ROOT, TINY, make_data_root, small_bpe
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
    """A copy of the world, the working directory."""
    copy = shutil.copytree(world, tmp_path / "world")
    monkeypatch.chdir(copy)
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


def meta_in_checkpoint(change):
    """setup: out/ckpt.pt holding change(its meta) as the dataset's meta.json."""
    def setup(monkeypatch):
        checkpoint = torch.load("out/ckpt.pt", weights_only=True)
        checkpoint["meta"] = change(checkpoint["meta"])
        torch.save(checkpoint, "out/ckpt.pt")
    return setup


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


def both(*setups):
    def setup(monkeypatch):
        for s in setups:
            s(monkeypatch)
    return setup


def case(script, argv, words, setup=None, id=None):
    return pytest.param(script, argv, words, setup, id=id or f"{script} {' '.join(argv)}")


RUN = ["--out_dir=out", "--device=cpu", "--max_new_tokens=2", "--num_samples=1"]
TRAIN = TINY + ["--data_root=data", "--out_dir=new", "--max_iters=2"]
MOT = ["--out_dir=mot"] + RUN[1:]  # one sample: the MoT group of 2 takes a companion
RESULT = '{"name": "dense-s0", "command": []}\n'
DOC = f"# Results\n{study.BEGIN} final -->\nold tables\n"  # no END line
CASES = [
    # train.py: settings (each typed, finite, in range; devices this PyTorch and machine have)
    *[case("train.py", TRAIN + [flag], words) for flag, words in [
        ("--device=mps", ["device='mps'", "use cpu, cuda or cuda:N"]),
        ("--device=xpu", ["device='xpu'", "use cpu, cuda or cuda:N"]),
        ("--device=meta", ["device='meta'", "use cpu, cuda or cuda:N"]),
        ("--device=gpu:0", ["device='gpu:0'", "use cpu, cuda or cuda:N"]),
        ("--seed=18446744073709551616", ["--seed=18446744073709551616", "64-bit"]),
        ("--seed=-1", ["seed=-1", "must be in [0, 2**63"]),
        ("--expert_size=abc", ["--expert_size='abc'", "has type str, expected int"]),
        ("--expert_size=16.0", ["--expert_size=16.0", "has type float, expected int"]),
        ("--expert_size=True", ["--expert_size=True", "has type bool, expected int"]),
        ("--capacity_factor=abc", ["--capacity_factor='abc'", "expected float"]),
        ("--controller_init_std=[1]", ["--controller_init_std=[1]", "expected float"]),
        ("--temperature_final=abc", ["--temperature_final='abc'", "expected float"]),
        ("--transition=1", ["--transition=1", "has type int, expected str"]),
        ("--learning_rate=inf", ["--learning_rate=inf", "finite"]),
        ("--learning_rate=nan", ["--learning_rate=nan", "finite"]),
        ("--dropout=1e999", ["--dropout=inf", "finite"]),
        ("--n_layer=True", ["--n_layer=True", "expected int"]),
        ("--max_iters=1.5", ["--max_iters=1.5", "expected int"]),
        ("--dtype=float64", ["dtype='float64'", "auto, float32, bfloat16, float16"]),
        ("--compile=yes", ["--compile='yes'", "expected bool"]),
        ("--init_from=nowhere", ["nowhere/ckpt.pt", "train one first"]),
        ("--n_layr=2", ["unknown setting 'n_layr'", "--help"]),
        ("--n_layer", ["--n_layer: write --n_layer=VALUE"]),
    ]],
    case("train.py", TRAIN + ["--device=cuda:7"], ["device='cuda:7'", "1 GPU (cuda:0 to cuda:0)"],
         gpus(1), id="train.py --device=cuda:7 on a machine with one GPU"),
    # train.py: config files (Python assignments only)
    case("train.py", ["c.json"] + TRAIN, ["c.json is JSON", "n_layer = 4"],
         write("c.json", '{"n_layer": 4}'), id="train.py with a JSON config"),
    case("train.py", ["c.yaml"] + TRAIN, ["c.yaml is YAML", "Python assignments"],
         write("c.yaml", "n_layer: 4\n"), id="train.py with a YAML config"),
    case("train.py", ["c.py"] + TRAIN, ["c.py assigns no setting (found JSON)"],
         write("c.py", '{"n_layer": 4}\n'), id="train.py with JSON in a .py config"),
    case("train.py", ["c.py"] + TRAIN, ["c.py assigns no setting (found no assignment)"],
         write("c.py", "n_layer: 4\n"), id="train.py with YAML in a .py config"),
    case("train.py", ["c.py"] + TRAIN, ["c.py, line 2", "ZeroDivisionError"],
         write("c.py", "n_layer = 4\nn_head = 1 / 0\n"), id="train.py config that raises"),
    # train.py: the data
    case("train.py", TRAIN, ["train.bin is not a file", "prepare.py"],
         folder(f"{CHAR}/train.bin"), id="train.py when train.bin is a folder"),
    case("train.py", TRAIN, ["meta.json is not a file", "prepare.py"],
         folder(f"{CHAR}/meta.json"), id="train.py when meta.json is a folder"),
    case("train.py", TRAIN + [f"--data_root={CHAR}"], ["is a dataset's folder", "--data_root="],
         id="train.py --data_root inside a dataset"),
    # train.py: an out_dir that holds a run (nothing of it may be lost)
    case("train.py", TRAIN + ["--out_dir=out", "--overwrite=True", "--device=meta"],
         ["device='meta'"], id="train.py --overwrite=True with a setting that fails late"),
    case("train.py", TRAIN + ["--out_dir=out", "--overwrite=True", "--wandb_log=True"],
         ["W&B did not start", "No API key configured", "wandb login"], no_wandb_login,
         id="train.py --overwrite=True --wandb_log=True without a W&B login"),
    case("train.py", TRAIN + ["--out_dir=out"], ["log.jsonl holds a run's log", "--overwrite"],
         remove("out/ckpt.pt"), id="train.py into an out_dir with log.jsonl but no ckpt.pt"),
    case("train.py", TRAIN + ["--out_dir=out", "--init_from=resume"],
         ["log.jsonl is there but not", "put the checkpoint back"], remove("out/ckpt.pt"),
         id="train.py --init_from=resume without ckpt.pt"),
    case("train.py", TRAIN + ["--out_dir=out", "--init_from=resume", "--max_iters=4"],
         ["log.jsonl, line 2, is not a line of this run's log", "remove that line"],
         log_lines("out", None, '{"loss": 1.0}'), id="train.py resume with a foreign log line"),
    case("train.py", TRAIN + ["--out_dir=out", "--init_from=resume", "--max_iters=4"],
         ["log.jsonl, line 3, is not a line", "remove that line"],
         log_lines("out", None, "", "not json"), id="train.py resume with a line not JSON"),
    case("train.py", TRAIN + ["--out_dir=out", "--init_from=resume", "--max_iters=4"],
         ["log.jsonl, line 1, has iter='0'"], log_lines("out", '{"iter": "0"}'),
         id="train.py resume with an iter that is not a number"),
    # sample.py
    case("sample.py", RUN, ["out/ckpt.pt", "no list of chars", "prepare its dataset again"],
         meta_in_checkpoint(lambda m: {k: v for k, v in m.items() if k != "chars"}),
         id="sample meta without chars"),
    case("sample.py", RUN, ["vocab_size=", "chars, one per token id", "prepare"],
         meta_in_checkpoint(lambda m: dict(m, chars=m["chars"][:-3])),
         id="sample vocab_size > len(chars)"),
    case("sample.py", RUN, ["tokenizer 'bpe'", "prepare"],
         meta_in_checkpoint(lambda m: dict(m, tokenizer="bpe")), id="sample unknown tokenizer"),
    case("sample.py", RUN + ["--init_from=out"], ["--init_from=out is a run", "--out_dir=out"]),
    case("sample.py", RUN + ["--init_from=data"], ["--init_from=data", "config.json"]),
    case("sample.py", RUN + ["--init_from=gpt-2"], ["--init_from=gpt-2", "gpt2-medium"]),
    case("sample.py", ["--out_dir=hf"], ["--out_dir=hf holds a GPT-2", "--init_from=hf"],
         write("hf/config.json", "{}")),
    case("sample.py", RUN[:1] + ["--device=mps"], ["--device=mps", "cpu, cuda or cuda:N"],
         truncate("out/ckpt.pt"), id="sample --device=mps before a damaged checkpoint"),
    case("sample.py", RUN[:1] + ["--device=xpu"], ["--device=xpu", "cpu, cuda or cuda:N"]),
    case("sample.py", RUN[:1] + ["--device=meta"], ["--device=meta", "cpu, cuda or cuda:N"]),
    case("sample.py", RUN[:1] + ["--device=garbage"], ["--device=garbage", "cpu, cuda"]),
    case("sample.py", RUN[:1] + ["--device=cuda:7"], ["--device=cuda:7", "cuda:0"], gpus(1),
         id="sample --device=cuda:7 on a 1-GPU machine"),
    case("sample.py", RUN[:1] + ["--device=cuda"], ["CUDA is not available", "--device=cpu"],
         gpus(0)),
    case("sample.py", RUN + ["--num_samples=abc"], ["--num_samples", "'abc'", "--help"]),
    case("sample.py", RUN + ["--start=FILE:data"], ["--start=FILE:data", "Is a directory"]),
    case("sample.py", RUN, ["truncated or corrupted"], truncate("out/ckpt.pt"),
         id="sample truncated checkpoint"),
    case("sample.py", MOT, ["train.bin has 1001 bytes", "--no-companions"],
         write(f"{CHAR}/train.bin", b"\0" * 1001),
         id="sample MoT companions from an odd train.bin"),
    case("sample.py", MOT, ["token id 65535", "--no-companions"],
         write(f"{CHAR}/train.bin", b"\xff" * 2000),
         id="sample MoT companions from another dataset"),
    # bench.py
    case("bench.py", ["--reps=0"], ["--reps=0", ">= 1"]),
    case("bench.py", ["--tiny", "--reps=0"], ["--reps=0", ">= 1"]),
    case("bench.py", ["--C", "-16"], ["--C=-16", ">= 1"]),
    case("bench.py", ["--warmup=-1"], ["--warmup=-1", ">= 0"]),
    case("bench.py", ["--batch_size=3", "--G", "2"], ["--batch_size=3", "--G 2", "multiple"]),
    case("bench.py", ["--C", "16", "--E", "3", "--G", "2"], ["--E 3", "4·C·G/E = 128/3"]),
    case("bench.py", ["--device=cuda"], ["--device=cuda", "CUDA is not available"], gpus(0)),
    case("bench.py", ["--device=cuda:1"], ["--device=cuda:1", "cuda:0"], gpus(1)),
    case("bench.py", ["--step", "--memory"], ["--memory", "not allowed with", "--help"]),
    case("bench.py", ["--reps=many"], ["--reps", "'many'", "--help"]),
    # experiments/plot.py
    case("experiments/plot.py", ["out", "--out=x.png"], ["out/log.jsonl is empty"],
         write("out/log.jsonl", ""), id="plot empty log"),
    case("experiments/plot.py", ["out", "--out=x.png"], ["out/log.jsonl, line 2: a blank line"],
         log_lines("out", None, "", None), id="plot blank line"),
    case("experiments/plot.py", ["out", "--out=x.png"], ["out/log.jsonl, line 1", "iter"],
         log_lines("out", '{"hello": 1}'), id="plot foreign line"),
    case("experiments/plot.py", ["out", "--out=x.png"], ["line 2: not JSON", "remove"],
         log_lines("out", None, '{"iter": 4, "val_lo'), id="plot half-written line"),
    case("experiments/plot.py", ["out", "--out=x.png"], ["out/log.jsonl not found"],
         remove("out/log.jsonl"), id="plot missing log"),
    case("experiments/plot.py", ["out", "--out=x.png"], ["cannot read", "Is a directory"],
         folder("out/log.jsonl"), id="plot log is a folder"),
    case("experiments/plot.py", ["out", "--out=no/x.png"], ["--out=no/x.png", "writable"]),
    case("experiments/plot.py", ["out", "--out=x.xyz"], ["--out=x.xyz", "xyz"]),
    case("experiments/plot.py", ["out", "mot", "--labels", "a"], ["1 labels for 2 runs"]),
    # experiments/visualize.py
    case("experiments/visualize.py", ["--out_dir=mot"], ["mot/log.jsonl not found"],
         remove("mot/log.jsonl"), id="visualize without log.jsonl"),
    case("experiments/visualize.py", ["--out_dir=mot"], ["no checkpoint at mot/ckpt.pt"],
         remove("mot/ckpt.pt"), id="visualize without ckpt.pt"),
    case("experiments/visualize.py", ["--out_dir=out"], ["dense model", "no merge weights"]),
    case("experiments/visualize.py", ["--out_dir=mot", "--layer=5"], ["--layer=5", "2 MoT"]),
    case("experiments/visualize.py", ["--out_dir=mot", "--device=mps"], ["--device=mps"]),
    # experiments/evaluate.py
    case("experiments/evaluate.py", ["out", "nowhere"], ["no checkpoint at nowhere/ckpt.pt"]),
    case("experiments/evaluate.py", ["out", "--eval_iters=0"], ["--eval_iters=0", ">= 1"]),
    case("experiments/evaluate.py", ["out"], ["truncated or corrupted"],
         truncate("out/ckpt.pt"), id="evaluate truncated checkpoint"),
    case("experiments/evaluate.py", ["out"], ["meta.json is not valid JSON", "prepare.py"],
         write(f"{CHAR}/meta.json", "{not json"), id="evaluate meta.json not JSON"),
    # experiments/upcycle.py
    case("experiments/upcycle.py", ["--step0", "nowhere"], ["--step0 nowhere", "no checkpoint"]),
    case("experiments/upcycle.py", ["--step0", "mot"], ["--step0 mot", "grows a dense model"]),
    case("experiments/upcycle.py", ["--step0", "out"], ["val.bin: not found", "prepare.py"],
         remove(f"{CHAR}/val.bin"), id="upcycle --step0 without val.bin"),
    case("experiments/upcycle.py", ["--table"], ["results.jsonl, line 2: a blank line"],
         write("results.jsonl", RESULT + "\n"), id="upcycle --table blank line"),
    # experiments/study.py
    case("experiments/study.py", ["--table"], ["results.jsonl, line 2: not JSON", "runs again"],
         write("results.jsonl", RESULT + "}{\n"), id="study --table line not JSON"),
    case("experiments/study.py", ["--table"], ["results.jsonl, line 1: a blank line"],
         write("results.jsonl", "\n" + RESULT), id="study --table blank line"),
    case("experiments/study.py", ["--table"], ["line 1: not a record with name, command"],
         write("results.jsonl", "[1, 2]\n"), id="study --table foreign line"),
    case("experiments/study.py", ["--table"], ["results.jsonl is not UTF-8"],
         write("results.jsonl", b"\xff\xfe\n"), id="study --table not UTF-8"),
    case("experiments/study.py", ["--docs"], ["doc.md has a block of tables without its end"],
         write("doc.md", DOC), id="study --docs without the end line"),
    case("experiments/study.py", ["--stage", "finals"], ["invalid choice: 'finals'", "--help"]),
    # experiments/gpu_check.py
    case("experiments/gpu_check.py", ["--device=cuda:7"], ["--device=cuda:7", "cuda:0"],
         gpus(1)),
    case("experiments/gpu_check.py", ["--sections=layer"], ["no section 'layer'"]),
    # the prepare scripts
    case("data/shakespeare_char/prepare.py", [CHAR], ["input.txt is not UTF-8", "UTF-8"],
         write(f"{CHAR}/input.txt", "caf\xe9\n".encode("latin-1")), id="prepare char latin-1"),
    case("data/shakespeare_char/prepare.py", [CHAR], ["input.txt is a directory", "as a file"],
         folder(f"{CHAR}/input.txt"), id="prepare char input.txt is a folder"),
    case("data/shakespeare_char/prepare.py", [CHAR], ["meta.json is a directory", "move it"],
         folder(f"{CHAR}/meta.json"), id="prepare char meta.json is a folder: all files or none"),
    case("data/shakespeare/prepare.py", [CHAR], ["input.txt is not UTF-8"],
         write(f"{CHAR}/input.txt", b"\x80abc"), id="prepare shakespeare not UTF-8"),
    case("data/python_stdlib/prepare.py", [CHAR, "lib"], ["no .py files under lib"],
         folder("lib"), id="prepare python_stdlib of a folder without .py files"),
    case("data/openwebtext/prepare.py", ["--num_proc=0"], ["--num_proc=0", "1 or more"],
         openwebtext),
    case("data/openwebtext/prepare.py", [], ["pip install datasets"], openwebtext,
         id="prepare openwebtext without datasets"),
]


@pytest.mark.parametrize("script, argv, words, setup", CASES)
def test_a_careless_command_fails_in_one_line(here, monkeypatch, capsys, script, argv, words,
                                              setup):
    if setup:
        setup(monkeypatch)
    before = snapshot(here)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        RUNNERS[script](argv)
    line = e.value.code  # what Python prints on stderr for it, before exiting with status 1
    assert isinstance(line, str) and line.startswith("error: ") and "\n" not in line, line
    assert all(word in line for word in words), line
    assert capsys.readouterr().err == ""
    assert snapshot(here) == before


def unprivileged():
    """Run in the child before it starts: a root process drops CAP_DAC_OVERRIDE, so that a
    folder's mode binds it as it binds a user."""
    if os.geteuid() == 0:
        ctypes.CDLL(None).prctl(24, 1, 0, 0, 0)  # PR_CAPBSET_DROP, CAP_DAC_OVERRIDE


def read_only_dataset(monkeypatch):
    """setup: the char prepare script beside the world's dataset, whose folder is read-only."""
    for script in ("prepare_common.py", "shakespeare_char/prepare.py"):
        shutil.copy(os.path.join(ROOT, "data", script), os.path.join("data", script))
    os.chmod(CHAR, 0o555)


CLI_CASES = [  # the scripts as a user runs them, in the world's copy
    pytest.param(["data/shakespeare_char/prepare.py"], read_only_dataset,
                 ["cannot write in", "Permission denied", "make it writable"],
                 id="prepare char in a read-only folder"),
    pytest.param([f"{ROOT}/sample.py", "--init_from=out"], None, ["--out_dir=out"],
                 id="sample.py --init_from=out"),
    pytest.param([f"{ROOT}/bench.py", "--batch_size=3", "--G", "2"], None,
                 ["--batch_size=3", "--G 2"], id="bench.py --batch_size=3 --G 2"),
]


@pytest.mark.parametrize("command, setup, words", CLI_CASES)
def test_a_careless_command_line(here, monkeypatch, command, setup, words):
    """As a user sees it: a non-zero exit status, one line on stderr, nothing else changed."""
    if setup:
        setup(monkeypatch)
    before = snapshot(here)
    try:
        result = subprocess.run([sys.executable, *command], capture_output=True, text=True,
                                env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"),
                                preexec_fn=unprivileged)
    finally:
        os.chmod(CHAR, 0o755)
    assert result.returncode != 0
    assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1, \
        result.stderr
    assert all(word in result.stderr for word in words), result.stderr
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


def started(args: list, line=" GPT: ") -> subprocess.Popen:
    """train.py in a subprocess, returned once it printed `line` (the summary: it holds its
    out_dir)."""
    process = subprocess.Popen([sys.executable, "-u", f"{ROOT}/train.py", *args], text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    next(printed for printed in process.stdout if line in printed)
    return process


@pytest.mark.parametrize("second", [[], ["--init_from=resume"]], ids=["new", "resume"])
def test_a_second_run_into_a_running_runs_out_dir_is_refused_and_takes_nothing(here, second):
    """While a run trains in out_dir, a new run there (even 0.3 s after it) or a resume of it is
    refused in one line naming the process that holds it. The first run ends as it would have
    alone: every line of its log and every weight of its checkpoint; its lock is gone after."""
    args = TINY + ["--data_root=data", "--max_iters=100", "--eval_interval=50"]
    train.main(args + ["--out_dir=alone"])
    first = started(args + ["--out_dir=busy"])
    try:
        with pytest.raises(SystemExit) as e:
            train.main(args + ["--out_dir=busy", *second])
        assert e.value.code == (f"error: out_dir='busy' is in use by another run (process "
                                f"{first.pid}): wait for it to end, or choose another --out_dir")
    finally:
        _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert log_of("busy") == log_of("alone")
    assert all(torch.equal(v, weights("alone")[k]) for k, v in weights("busy").items())
    assert sorted(os.listdir("busy")) == ["ckpt.pt", "log.jsonl"]


def test_the_lock_of_a_killed_run_is_no_lock(here):
    """kill -9 leaves out_dir/run.lock behind but the kernel released its lock: the run
    resumes, and a new run into another out_dir is never refused for it."""
    args = TINY + ["--data_root=data", "--max_iters=300", "--eval_interval=2"]
    process = started(args + ["--out_dir=killed"], line="iter 3:")  # after a checkpoint
    process.kill()
    process.communicate()
    assert os.path.exists("killed/run.lock")
    train.main(args + ["--out_dir=killed", "--init_from=resume", "--max_iters=4"])
    assert sorted(os.listdir("killed")) == ["ckpt.pt", "log.jsonl"]


def test_what_looks_careless_but_is_fine(here, capsys):
    """A config file that imports a module or keeps private helpers, blank lines in a resumed
    log, and --help (the settings and their defaults, exit 0)."""
    with open("c.py", "w") as f:
        f.write("import math\n_width = 16\nn_embd = _width\nlearning_rate = math.sqrt(1e-6)\n")
    settings, given = bookkeeping.configure(["c.py"], train.DEFAULTS)
    assert (settings["n_embd"], settings["learning_rate"]) == (16, 1e-3)
    assert given == {"n_embd", "learning_rate"}
    with open("out/log.jsonl") as f:
        lines = f.readlines()
    with open("out/log.jsonl", "w") as f:
        f.writelines([lines[0], "\n", "   \n", *lines[1:]])
    train.main(TINY + ["--data_root=data", "--out_dir=out", "--init_from=resume",
                       "--max_iters=4"])
    assert [r["iter"] for r in log_of("out")] == [0, 2, 4]
    capsys.readouterr()
    for flag in ("--help", "-h"):
        with pytest.raises(SystemExit) as e:
            train.main([flag])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("Train a GPT") and "  --learning_rate=0.0006\n" in out
        assert "  --out_dir='out'\n" in out and "  --expert_size=None\n" in out
