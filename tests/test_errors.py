"""Every user error of train.py, sample.py and prepare.py is one line `error: ...` that names the
setting, file or value and the fix; and a rejected run leaves the run already in its out_dir
untouched, even with --overwrite=True."""

import ctypes
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import sample
import train
from conftest import ROOT, TINY, make_data_root
from shakespeare_char.prepare import prepare as prepare_char

CHAR = "data/shakespeare_char"


@pytest.fixture(scope="module")
def old_run(tmp_path_factory):
    """A directory holding a tiny dataset (data/) and a finished tiny run on it (out/)."""
    root = tmp_path_factory.mktemp("old_run")
    make_data_root(root / "data")
    train.main(TINY + [f"--data_root={root / 'data'}", f"--out_dir={root / 'out'}",
                       "--max_iters=2"])
    return root


@pytest.fixture
def run(old_run, tmp_path):
    """A copy of old_run that a test may damage."""
    return shutil.copytree(old_run, tmp_path / "run")


def files(directory) -> dict:
    return {p: open(os.path.join(directory, p), "rb").read() for p in sorted(os.listdir(directory))}


def write(relative: str, content):
    """A damage to the run's copy: `content` (text or bytes) written at `relative`."""
    def damage(run):
        path = run / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    damage.__name__ = relative
    return damage


def reversed_chars(run):
    """The same vocabulary size, other characters: another dataset under the same name."""
    path = run / CHAR / "meta.json"
    meta = json.loads(path.read_text())
    path.write_text(json.dumps(dict(meta, chars=meta["chars"][::-1])))


def diverged_checkpoint(run):
    """The checkpoint of a run that diverged, as train.py no longer saves one: NaN weights."""
    path = run / "out" / "ckpt.pt"
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["model"]["transformer.wte.weight"][0, 0] = float("nan")
    torch.save(checkpoint, path)


def error(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert message.startswith("error: ") and "\n" not in message
    return message


TRAIN_ERRORS = [  # (flags, damage to the run's copy, words the line must hold)
    (["--batch_size=0"], None, ["batch_size=0", "must be >= 1"]),
    (["--batch_size=-4"], None, ["batch_size=-4", "must be >= 1"]),
    (["--eval_interval=0"], None, ["eval_interval=0", "must be >= 1"]),
    (["--gradient_accumulation_steps=0"], None, ["gradient_accumulation_steps=0", "positive"]),
    (["--warmup_iters=20"], None, ["lr_decay_iters=20", "> warmup_iters=20", "decay_lr=False"]),
    (["--learning_rate=-1e-3"], None, ["learning_rate=-0.001", "must be >= 0"]),
    (["--ffn=mot", "--temperature_final=0"], None, ["temperature_final=0", "must be > 0"]),
    (["--temperature_final=0.5"], None, ["temperature_final", "MoT"]),
    (["--eval_iters=0"], None, ["eval_iters=0", "must be >= 1"]),
    (["--log_interval=0"], None, ["log_interval=0", "must be >= 1"]),
    (["--device=cuda"], None, ["device='cuda'", "CUDA is not available", "--device=cpu"]),
    (["--device=gpu"], None, ["device='gpu'", "cpu, cuda or cuda:N"]),
    (["--dtype=float64"], None, ["dtype='float64'", "float32, bfloat16, float16"]),
    (["--out_dir={run}/a_file"], write("a_file", "x"), ["a_file' is a file"]),
    (["{run}/raises.py"], write("raises.py", "batch_size = 8\nn_layer = 1 // 0\n"),
     ["raises.py, line 2: ZeroDivisionError"]),
    (["{run}/syntax.py"], write("syntax.py", "batch_size = = 8\n"), ["syntax.py, line 1"]),
    (["{run}/data"], None, ["config file", "data is a directory"]),
    (["{run}/latin1.py"], write("latin1.py", "# caf\xe9\n".encode("latin-1")),
     ["latin1.py is not UTF-8"]),
    (["{run}/missing.py"], None, ["missing.py not found"]),
    (["--no_such_key=1"], None, ["unknown setting 'no_such_key'"]),
    (["--batch_size=abc"], None, ["--batch_size='abc'", "expected int"]),
    (["--batch_size=None"], None, ["--batch_size=None", "expected int"]),
    (["--batch_size=3", "--ffn=mot"], None, ["batch_size=3", "group_size=2"]),
    (["--ffn=transformer"], None, ["GPTConfig.ffn"]),
    (["--dataset=nope"], None, ["data/nope/prepare.py"]),
    ([], write(f"{CHAR}/train.bin", b""), ["train.bin holds 0 tokens"]),
    ([], write(f"{CHAR}/val.bin", b"\0" * 101), ["val.bin has 101 bytes", "prepare.py"]),
    ([], write(f"{CHAR}/meta.json", "{not json"), ["meta.json is not valid JSON"]),
    ([], write(f"{CHAR}/meta.json", '{"tokenizer": "char"}'), ["meta.json", "vocab_size"]),
    ([], write(f"{CHAR}/meta.json", '{"vocab_size": 5, "tokenizer": "char", "chars": []}'),
     ["train.bin holds token id", "vocab_size=5"]),
    (["--transition=discrete"], None, ["transition='discrete'", "--init_from=DIR"]),
    (["--init_from={run}/data"], None, ["no checkpoint at", "data/ckpt.pt"]),
    (["--init_from={run}/out", "--upcycle=moe", "--expert_size=16"], None,
     ["expert_size=16 must be 4·n_embd=64"]),
    (["--init_from={run}/out", "--upcycle=moe", "--n_embd=32"], None,
     ["n_embd=32 contradicts"]),
    (["--upcycle=moe"], None, ["upcycle='moe'", "--init_from"]),
    (["--upcycle=dense", "--init_from={run}/out"], None, ["upcycle='dense'", "'mot', 'moe'"]),
    (["--init_from=resume", "--out_dir={run}/empty"], None, ["no checkpoint at"]),
    (["--init_from=resume", "--n_layer=3"], None, ["n_layer=3 contradicts", "n_layer=2"]),
    (["--init_from=resume", "--ffn=moe"], None, ["ffn='moe' contradicts", "ffn='dense'"]),
    (["--init_from=resume", "--dataset=other"], None, ["dataset='other' contradicts"]),
    (["--init_from=resume", "--batch_size=8"], None, ["batch_size=8 contradicts"]),
    (["--init_from=resume"], reversed_chars, ["meta.json is not the meta.json"]),
    (["--init_from=resume"], diverged_checkpoint, ["non-finite weights", "transformer.wte"]),
    (["--init_from={run}/out", "--transition=discrete", "--n_layer=3"], None,
     ["n_layer=3 contradicts", "converted run keeps its model"]),
]


@pytest.mark.parametrize("flags, damage, words", TRAIN_ERRORS,
                         ids=[" ".join(f) + (f" {d.__name__}" if d else "")
                              for f, d, _ in TRAIN_ERRORS])
def test_bad_runs_fail_in_one_line_and_touch_nothing(run, monkeypatch, flags, damage, words):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same with a GPU
    if damage:
        damage(run)
    before = files(run / "out")
    with pytest.raises(SystemExit) as e:
        train.main(TINY + [f"--data_root={run / 'data'}", f"--out_dir={run / 'out'}",
                           "--overwrite=True", *[f.format(run=run) for f in flags]])
    message = error(e)
    assert all(word in message for word in words), message
    assert files(run / "out") == before


SAMPLE_ERRORS = [
    (["--temperature=-1"], None, ["--temperature=-1.0", "0 for greedy"]),
    (["--top_k=0"], None, ["--top_k=0", "at least 1"]),
    (["--num_samples=0"], None, ["--num_samples=0"]),
    (["--start=FILE:{run}/missing.txt"], None, ["missing.txt", "No such file"]),
    (["--start=FILE:{run}/latin1.txt"], write("latin1.txt", "caf\xe9".encode("latin-1")),
     ["latin1.txt", "not UTF-8"]),
    (["--device=cuda"], None, ["--device=cuda", "CUDA is not available"]),
    (["--start=Zebra"], None, ["'Z'"]),
    (["--start=Speak"], diverged_checkpoint, ["ckpt.pt holds non-finite weights", "diverged"]),
]


@pytest.mark.parametrize("flags, damage, words", SAMPLE_ERRORS,
                         ids=[" ".join(f) for f, _, _ in SAMPLE_ERRORS])
def test_bad_samples_fail_in_one_line(run, monkeypatch, flags, damage, words):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if damage:
        damage(run)
    with pytest.raises(SystemExit) as e:
        sample.main([f"--out_dir={run / 'out'}", "--device=cpu", "--max_new_tokens=2",
                     *[f.format(run=run) for f in flags]])
    message = error(e)
    assert all(word in message for word in words) and "truncated" not in message, message


def test_prepare_refuses_an_empty_input(tmp_path):
    (tmp_path / "input.txt").write_text("")
    with pytest.raises(SystemExit, match="input.txt is empty"):
        prepare_char(str(tmp_path))
    assert os.listdir(tmp_path) == ["input.txt"]


def unprivileged():
    """Run in the child before it starts: a root process drops CAP_DAC_OVERRIDE, so that a
    directory's mode binds it as it binds a user."""
    if os.geteuid() == 0:
        ctypes.CDLL(None).prctl(24, 1, 0, 0, 0)  # PR_CAPBSET_DROP, CAP_DAC_OVERRIDE


def read_only(run):
    (run / "read-only").mkdir()
    (run / "read-only").chmod(0o555)


def truncated_checkpoint(run):
    ckpt = run / "out" / "ckpt.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])


CLI_ERRORS = [  # (command, damage, words)
    (["train.py", "--out_dir={run}/read-only/out"], read_only,
     ["cannot write", "Permission denied"]),
    (["train.py", "{run}/raises.py"], write("raises.py", "n_layer = 1 // 0\n"),
     ["raises.py, line 1"]),
    (["train.py", "--init_from=resume"], truncated_checkpoint, ["truncated or corrupted"]),
    (["train.py", "--bogus_flag=1"], None, ["bogus_flag"]),
    (["sample.py", "--top_k=0"], None, ["--top_k=0"]),
    (["sample.py"], truncated_checkpoint, ["truncated or corrupted"]),
    (["sample.py"], diverged_checkpoint, ["non-finite weights"]),
]


@pytest.mark.parametrize("command, damage, words", CLI_ERRORS,
                         ids=[" ".join(c) for c, _, _ in CLI_ERRORS])
def test_cli_errors_are_one_line_without_traceback(run, command, damage, words):
    """As a user sees them: exit status 1, one line on stderr, no traceback."""
    if damage:
        damage(run)
    flags = [f"--out_dir={run / 'out'}", "--device=cpu"]
    if command[0] == "train.py":
        flags = TINY + [f"--data_root={run / 'data'}", f"--out_dir={run / 'out'}"]
    result = subprocess.run([sys.executable, command[0], *flags,
                             *[c.format(run=run) for c in command[1:]]],
                            cwd=ROOT, capture_output=True, text=True, preexec_fn=unprivileged)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
    assert all(word in result.stderr for word in words), result.stderr
