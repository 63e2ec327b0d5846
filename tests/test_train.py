"""Tests of the data scripts, train.py and sample.py on tiny models (seconds on a CPU)."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import sample
import train

from conftest import CORPUS, ROOT, SHARED

SHAKESPEARE = os.path.join(SHARED, "tinyshakespeare", "input.txt")


def test_prepare_char_round_trips_the_text(data_root):
    """train.bin + val.bin decode back to the corpus, split 90/10, with a JSON vocabulary."""
    d = data_root / "shakespeare_char"
    meta = json.loads((d / "meta.json").read_text())
    ids = np.concatenate([np.fromfile(d / "train.bin", dtype=np.uint16),
                          np.fromfile(d / "val.bin", dtype=np.uint16)])
    assert "".join(meta["chars"][i] for i in ids) == CORPUS
    assert len(np.fromfile(d / "train.bin", dtype=np.uint16)) == int(0.9 * len(CORPUS))
    assert meta["vocab_size"] == len(set(CORPUS)) and meta["tokenizer"] == "char"


@pytest.mark.skipif(not os.path.exists(SHAKESPEARE), reason="needs ../shared/data/tinyshakespeare")
@pytest.mark.parametrize("name, train_tokens, val_tokens",
                         [("shakespeare_char", 1_003_854, 111_540),
                          ("shakespeare", 301_966, 36_059)])
def test_prepare_real_shakespeare(tmp_path, name, train_tokens, val_tokens):
    """The real file gives nanoGPT's token counts, characters and GPT-2 BPE."""
    os.symlink(os.path.abspath(SHAKESPEARE), tmp_path / "input.txt")
    script = os.path.join(ROOT, "data", name, "prepare.py")
    namespace = {"__name__": "prepare", "__file__": script}
    exec(open(script).read(), namespace)
    namespace["prepare"](str(tmp_path))
    assert os.path.getsize(tmp_path / "train.bin") == 2 * train_tokens
    assert os.path.getsize(tmp_path / "val.bin") == 2 * val_tokens


def test_prepare_without_file_or_network_says_where_to_put_it(tmp_path, monkeypatch):
    """A failed download names the path where the user can place input.txt."""
    import prepare_common
    monkeypatch.setattr(prepare_common, "SHAKESPEARE_URL", "http://127.0.0.1:9/input.txt")
    with pytest.raises(SystemExit, match=str(tmp_path / "input.txt")):
        prepare_common.read_or_download(str(tmp_path / "input.txt"), prepare_common.SHAKESPEARE_URL)
    assert not os.path.exists(tmp_path / "input.txt")


def test_openwebtext_tokenize_and_write(tmp_path):
    """Multi-process, sharded writing keeps document order and separates documents by
    <|endoftext|>."""
    import tiktoken
    from openwebtext.prepare import tokenize_and_write
    docs = [f"Document number {i}: " + "words " * (i % 7) for i in range(300)]
    path = str(tmp_path / "train.bin")
    n = tokenize_and_write(iter(docs), path, num_proc=2, shard_tokens=100)
    enc = tiktoken.get_encoding("gpt2")
    expected = [t for d in docs for t in enc.encode_ordinary(d) + [enc.eot_token]]
    written = np.fromfile(path, dtype=np.uint16)
    assert n == len(expected) and written.tolist() == expected


@pytest.mark.parametrize("ffn", ["dense", "mot", "moe"])
def test_train_each_ffn_logs_and_learns(data_root, tmp_path, ffn, run_train):
    """A few iterations write log.jsonl with the contract fields and lower the loss."""
    log = run_train(tmp_path / "out", f"--ffn={ffn}", "--max_iters=8", "--learning_rate=1e-2")
    assert [r["iter"] for r in log] == [0, 2, 4, 6, 8]
    for key in ("train_loss", "val_loss", "lr", "elapsed_s", "tokens_per_s"):
        assert all(key in r for r in log)
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    assert (log[-1]["aux_loss"] is not None) == (ffn == "moe")
    assert ("merge_entropy" in log[-1]) == (ffn == "mot")
    assert glob.glob(str(tmp_path / "**" / "*.pkl"), recursive=True) == []
    assert glob.glob(str(data_root / "**" / "*.pkl"), recursive=True) == []


@pytest.mark.parametrize("eval_interval, m, n, resumed_iters",
                         [(2, 4, 8, [0, 2, 4, 6, 8]), (5, 3, 7, [0, 3, 5, 7])])
def test_resume_is_exact(tmp_path, run_train, eval_interval, m, n, resumed_iters):
    """N iterations in one run log the same losses and lr as M < N iterations resumed to N
    (the last iteration is always evaluated and saved, whatever eval_interval)."""
    args = ["--ffn=mot", "--gradient_accumulation_steps=2", f"--eval_interval={eval_interval}"]
    full = run_train(tmp_path / "full", *args, f"--max_iters={n}")
    run_train(tmp_path / "split", *args, f"--max_iters={m}")
    resumed = run_train(tmp_path / "split", *args, f"--max_iters={n}", "--init_from=resume")
    assert [r["iter"] for r in resumed] == resumed_iters
    after_m = [(r["iter"], r["train_loss"], r["val_loss"], r["lr"]) for r in full if r["iter"] > m]
    assert after_m == [(r["iter"], r["train_loss"], r["val_loss"], r["lr"])
                       for r in resumed if r["iter"] > m]
    assert after_m[-1][0] == n


def test_checkpoint_loads_weights_only_and_save_is_atomic(tmp_path, monkeypatch, run_train):
    """ckpt.pt loads with weights_only=True; a save interrupted midway keeps the previous
    checkpoint."""
    out = tmp_path / "out"
    run_train(out, "--max_iters=2")
    path = str(out / "ckpt.pt")
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["iter_num"] == 2 and set(checkpoint["rng"]) == {"torch", "cuda", "data"}

    def interrupted_save(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        train.save_checkpoint(checkpoint, path)
    assert torch.load(path, weights_only=True)["iter_num"] == 2


def test_sample_prints_samples_for_a_partial_group(tmp_path, capsys, run_train):
    """3 samples from a MoT with group_size 2 (a padded group) all start with the prompt."""
    out = tmp_path / "out"
    run_train(out, "--ffn=mot", "--max_iters=2")
    capsys.readouterr()
    sample.main([f"--out_dir={out}", "--start=Speak", "--num_samples=3", "--max_new_tokens=5",
                 "--device=cpu"])
    samples = capsys.readouterr().out.split("---------------\n")[:-1]
    assert len(samples) == 3 and all(s.startswith("Speak") and len(s) == len("Speak") + 5 + 1
                                     for s in samples)


@pytest.mark.parametrize("args, message", [
    (["--no_such_key=1"], "unknown setting 'no_such_key'"),
    (["--batch_size=abc"], "batch_size"),
    (["--batch_size=3", "--ffn=mot"], "group_size=2"),
    (["--ffn=transformer"], "GPTConfig.ffn"),
    (["--dataset=nope"], "data/nope/prepare.py"),
    (["--init_from=resume"], "no checkpoint"),
])
def test_bad_settings_exit_with_a_message(tmp_path, args, message, run_train):
    with pytest.raises(SystemExit) as e:
        run_train(tmp_path / "out", *args)
    assert message in str(e.value)


def test_unknown_prompt_characters_are_named(tmp_path, run_train):
    out = tmp_path / "out"
    checkpoint_args = [f"--out_dir={out}", "--device=cpu", "--max_new_tokens=1"]
    run_train(out, "--max_iters=2")
    with pytest.raises(SystemExit, match="'Z'"):
        sample.main(checkpoint_args + ["--start=Zebra"])


def test_cli_errors_are_one_line_without_traceback(tmp_path, run_train):
    """A truncated checkpoint and an unknown flag exit non-zero with one line, no traceback."""
    out = tmp_path / "out"
    run_train(out, "--max_iters=2")
    ckpt = out / "ckpt.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    for cmd in ([sys.executable, "sample.py", f"--out_dir={out}"],
                [sys.executable, "train.py", f"--out_dir={out}", "--init_from=resume"],
                [sys.executable, "train.py", "--bogus_flag=1"]):
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        assert result.returncode != 0
        assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
