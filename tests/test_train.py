"""Tests of the data scripts, train.py and sample.py on tiny models (seconds on a CPU)."""

import glob
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import bookkeeping
import checkpoints
import configurator
import dataset
import sample
import test_mot
import train
from mot import FFNS, GPT, MixtureOfTokens

from conftest import CORPUS, ROOT, SHARED, TINY, read_log

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


@pytest.mark.parametrize("name, tokenizer, train_tokens, val_tokens",
                         [("shakespeare_char", "char", 1_003_854, 111_540),
                          ("shakespeare", "gpt2", 301_966, 36_059)])
def test_prepare_shakespeare(tmp_path, monkeypatch, gpt2_bpe, name, tokenizer, train_tokens,
                             val_tokens):
    """A generated text is split 90/10 and its tokens decode back to it (the GPT-2 BPE: the small
    one of conftest). When a copy of the real file lies in ../shared (with tiktoken's GPT-2 files
    beside it), the real file also gives nanoGPT's token counts with the real BPE."""
    script = os.path.join(ROOT, "data", name, "prepare.py")

    def prepare(directory, text_file):
        directory.mkdir()
        os.symlink(os.path.abspath(text_file), directory / "input.txt")
        namespace = {"__name__": "prepare", "__file__": script}
        exec(open(script).read(), namespace)
        namespace["prepare"](str(directory))
        meta = json.loads((directory / "meta.json").read_text())
        ids = [np.fromfile(directory / f"{split}.bin", dtype=np.uint16) for split in ("train",
                                                                                      "val")]
        return meta, ids

    (tmp_path / "corpus.txt").write_text(CORPUS)
    meta, ids = prepare(tmp_path / "generated", tmp_path / "corpus.txt")
    decode = (gpt2_bpe.decode if tokenizer == "gpt2" else
              lambda t: "".join(meta["chars"][i] for i in t))
    assert meta["tokenizer"] == tokenizer
    assert decode(ids[0].tolist()) + decode(ids[1].tolist()) == CORPUS
    assert decode(ids[0].tolist()) == CORPUS[:int(0.9 * len(CORPUS))]
    if os.path.exists(SHAKESPEARE):
        monkeypatch.undo()  # the real BPE
        meta, ids = prepare(tmp_path / "real", SHAKESPEARE)
        assert [len(i) for i in ids] == [train_tokens, val_tokens]


def test_prepare_without_file_or_network_says_where_to_put_it(tmp_path, monkeypatch):
    """A failed download names the path where the user can place input.txt."""
    import prepare_common
    monkeypatch.setattr(prepare_common, "SHAKESPEARE_URL", "http://127.0.0.1:9/input.txt")
    with pytest.raises(SystemExit, match=str(tmp_path / "input.txt")):
        prepare_common.read_or_download(str(tmp_path / "input.txt"), prepare_common.SHAKESPEARE_URL)
    assert not os.path.exists(tmp_path / "input.txt")


def test_openwebtext_tokenize_and_write(tmp_path, gpt2_bpe):
    """Multi-process, sharded writing keeps document order and separates documents by
    <|endoftext|> (with the small GPT-2 BPE of conftest)."""
    from openwebtext.prepare import tokenize_and_write
    docs = [f"Document number {i}: " + "words " * (i % 7) for i in range(300)]
    path = str(tmp_path / "train.bin")
    n = tokenize_and_write(iter(docs), path, num_proc=2, shard_tokens=100)
    enc = gpt2_bpe
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


def test_a_run_resumes_on_another_machine(tmp_path, data_root, run_train, capsys):
    """A checkpoint written on a GPU machine (its device cuda, a random stream per visible GPU,
    as earlier versions saved) resumes on this CPU without a traceback: the device becomes this
    machine's with a note, the CPU streams are restored, and the run ends as an uninterrupted
    one (dropout draws on the CPU here)."""
    args = ["--ffn=mot", "--eval_interval=2"]
    full = run_train(tmp_path / "full", *args, "--max_iters=6")
    run_train(tmp_path / "split", *args, "--max_iters=4")
    path = tmp_path / "split" / "ckpt.pt"
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["config"]["device"] = "cuda:3"  # trained there, with 4 GPUs in sight
    for state in checkpoint["rng"]:
        state["cuda"] = [torch.zeros(16, dtype=torch.uint8)] * 4
    torch.save(checkpoint, path)
    capsys.readouterr()
    train.main([arg for arg in TINY if arg != "--device=cpu"] + args + [
        f"--data_root={data_root}", f"--out_dir={tmp_path / 'split'}", "--max_iters=6",
        "--init_from=resume"])  # the device of this machine's default, not given
    assert "trained on cuda:3, which is not here: resuming on cpu" in capsys.readouterr().err
    resumed = read_log(tmp_path / "split")
    assert [(r["iter"], r["val_loss"]) for r in resumed] == [(r["iter"], r["val_loss"])
                                                            for r in full]


@pytest.mark.parametrize("saved, device, restored", [
    (torch.ones(8, dtype=torch.uint8), "cuda:1", "the tensor"),  # this process's GPU's stream
    ([torch.zeros(8, dtype=torch.uint8), torch.ones(8, dtype=torch.uint8)], "cuda:1", "index 1"),
    ([torch.zeros(8, dtype=torch.uint8)], "cuda:1", None),  # fewer GPUs then: a note
    (None, "cuda", None),  # trained on a CPU: a note
    (torch.ones(8, dtype=torch.uint8), "cpu", None)])  # trained on a GPU, resumed on a CPU
def test_the_gpu_random_stream_is_restored_where_it_applies(monkeypatch, capsys, saved, device,
                                                            restored):
    calls = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append(state))
    data_rng = torch.Generator()
    state = dict(torch=torch.get_rng_state(), data=data_rng.get_state(), cuda=saved)
    checkpoints.set_rng_state(state, data_rng, device)
    note = "no random stream for" in capsys.readouterr().err
    if restored is None:
        assert calls == [] and note == (device != "cpu")
    else:
        expected = saved if restored == "the tensor" else saved[1]
        assert len(calls) == 1 and torch.equal(calls[0], expected) and not note


@pytest.mark.parametrize("capability, dtype", [((7, 0), "float16"), ((7, 5), "float16"),
                                               ((8, 0), "bfloat16"), ((8, 9), "bfloat16"),
                                               ((9, 0), "bfloat16")])
def test_each_gpu_trains_in_its_native_dtype_and_never_compiles_emulated_bfloat16(
        monkeypatch, tmp_path, capability, dtype):
    """With a GPU of each capability (faked): the default dtype is bfloat16 where the GPU
    computes in it, else float16; bfloat16 asked for on an older GPU warns, and with
    torch.compile is refused in one line naming float16."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    config, _ = configurator.configure(train.TrainConfig, ["--device=cuda"])
    assert config.dtype == "auto" and config.native_dtype() == dtype
    argv = ["--device=cuda", "--dtype=bfloat16", "--compile=True"]
    if dtype == "float16":
        with pytest.raises(SystemExit, match="dtype.*float16"):
            configurator.configure(train.TrainConfig, argv)
    else:
        configurator.configure(train.TrainConfig, argv)


def test_dtype_auto_is_saved_as_given_and_bfloat16_resumes_in_float16_before_ampere(
        tmp_path, run_train, monkeypatch, capsys):
    """A run with dtype=auto saves "auto" (resolved again where it resumes). A checkpoint of a
    bfloat16 run resumed with no --dtype on a GPU that emulates bfloat16 (faked: capability 7.5)
    continues in float16, its native dtype, with a note, and compiles."""
    out = tmp_path / "out"
    run_train(out, "--max_iters=2", "--dtype=auto")
    path = out / "ckpt.pt"
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["config"]["dtype"] == "auto"
    checkpoint["config"].update(dtype="bfloat16", device="cuda", compile=True)
    torch.save(checkpoint, path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device=None: torch.zeros(8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device=None: None)
    config, given = configurator.configure(train.TrainConfig, [f"--out_dir={out}",
                                                               "--init_from=resume"])
    held = bookkeeping.OutDir(config, hold=False)
    config, _, _, changes = checkpoints.load_start(config, given, held, 1)
    assert (config.dtype, config.device, config.compile) == ("float16", "cuda", True)
    assert changes["dtype"] == ["bfloat16", "float16"] and "note:" in capsys.readouterr().err


def test_checkpoint_loads_weights_only_and_save_is_atomic(tmp_path, monkeypatch, run_train):
    """ckpt.pt loads with weights_only=True; a save interrupted midway keeps the previous
    checkpoint."""
    out = tmp_path / "out"
    run_train(out, "--max_iters=2")
    path = str(out / "ckpt.pt")
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["iter_num"] == 2 and len(checkpoint["rng"]) == 1  # one per process
    assert set(checkpoint["rng"][0]) == {"torch", "cuda", "data"}

    def interrupted_save(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted_save)
    held = bookkeeping.OutDir(types.SimpleNamespace(out_dir=str(out)), hold=True)
    with pytest.raises(KeyboardInterrupt):
        bookkeeping.save_checkpoint(checkpoint, held)
    held.release()
    assert torch.load(path, weights_only=True)["iter_num"] == 2
    assert sorted(os.listdir(out)) == ["ckpt.pt", "log.jsonl"]  # no temporary file left


def test_sample_prints_samples_for_a_partial_group(tmp_path, capsys, run_train, monkeypatch,
                                                   data_root):
    """3 samples from a MoT with group_size 2 all start with the prompt. The partial group is
    filled with one companion, a window of the training text as long as a sample, unless
    --no-companions or the training data is gone (zero padding, with a note)."""
    out = tmp_path / "out"
    run_train(out, "--ffn=mot", "--max_iters=2")
    filled, generate = [], GPT.generate
    monkeypatch.setattr(GPT, "generate", lambda self, *a, companions=None, **k:
                        filled.append(companions) or generate(self, *a, companions=companions, **k))
    args = [f"--out_dir={out}", "--start=Speak", "--num_samples=3", "--max_new_tokens=5",
            "--device=cpu"]
    for extra in ([], ["--no-companions"]):
        capsys.readouterr()
        sample.main(args + extra)
        samples = capsys.readouterr().out.split("---------------\n")[:-1]
        assert len(samples) == 3 and all(s.startswith("Speak") and len(s) == len("Speak") + 5 + 1
                                         for s in samples)
    train_text = (data_root / "shakespeare_char" / "train.bin").read_bytes()
    window = np.frombuffer(bytes(filled[0].numpy().astype(np.uint16)), dtype=np.uint16)
    assert filled[0].shape == (1, 10) and bytes(window) in train_text and filled[1] is None
    os.remove(data_root / "shakespeare_char" / "train.bin")
    sample.main(args)
    assert "zero rows" in capsys.readouterr().out and filled[2] is None


def files(directory) -> dict:
    return {p: open(os.path.join(directory, p), "rb").read() for p in sorted(os.listdir(directory))}


def test_a_new_run_refuses_a_directory_holding_a_run(tmp_path, run_train):
    """A run into a directory with ckpt.pt is refused, touching nothing, and the message names
    both ways on; --overwrite=True deletes the old run and starts a new log."""
    out = tmp_path / "out"
    old = run_train(out, "--max_iters=2")
    before = files(out)
    with pytest.raises(SystemExit, match="--init_from=resume.*--overwrite=True"):
        run_train(out, "--max_iters=4", "--batch_size=8")
    assert files(out) == before
    new = run_train(out, "--max_iters=4", "--batch_size=8", "--overwrite=True")
    assert [r["iter"] for r in new] == [0, 2, 4] and new[0]["train_loss"] != old[0]["train_loss"]


def test_resume_takes_its_settings_from_the_checkpoint(data_root, tmp_path, run_train, capsys):
    """`--out_dir=DIR --init_from=resume --max_iters=N` and nothing else continues the run as it
    was (model, data, data_root, batches, schedule, device, dtype, seed from the checkpoint);
    the change is printed and logged on the first evaluation after it."""
    args = ["--ffn=mot", "--learning_rate=2e-3", "--seed=5", "--batch_size=6", "--n_experts=8"]
    full = run_train(tmp_path / "full", *args, "--max_iters=8")
    run_train(tmp_path / "split", *args, "--max_iters=4")
    capsys.readouterr()
    train.main([f"--out_dir={tmp_path / 'split'}", "--init_from=resume", "--max_iters=8"])
    assert "resumed at iter 4, changed: max_iters 4 -> 8" in capsys.readouterr().out
    with open(tmp_path / "split" / "log.jsonl") as f:
        resumed = [json.loads(line) for line in f]
    assert [(r["iter"], r["train_loss"], r["val_loss"], r["lr"]) for r in resumed] == \
        [(r["iter"], r["train_loss"], r["val_loss"], r["lr"]) for r in full]
    assert [r.get("changed_on_resume") for r in resumed] == [None] * 3 + [{"max_iters": [4, 8]},
                                                                         None]


@pytest.mark.parametrize("always_save_checkpoint", [True, False])
def test_a_crash_between_log_line_and_checkpoint_leaves_each_evaluation_once(
        tmp_path, monkeypatch, run_train, always_save_checkpoint):
    """The 3rd checkpoint save fails after its log line is written: the log runs past the
    checkpoint, and without always_save_checkpoint also holds an evaluation that saved nothing
    (val loss rose at iter 6). Resumed, the log holds every evaluation once, with the losses of
    an uninterrupted run."""
    args = ["--max_iters=10", "--learning_rate=0.03", "--ffn=mot", "--controller_init_std=0.02",
            f"--always_save_checkpoint={always_save_checkpoint}"]  # val loss rises at iter 6
    full = run_train(tmp_path / "full", *args)
    saves = []

    def crashing_save(checkpoint, path):
        saves.append(checkpoint["iter_num"])
        if len(saves) == 3:
            raise KeyboardInterrupt
        save_checkpoint(checkpoint, path)

    save_checkpoint = bookkeeping.save_checkpoint
    monkeypatch.setattr(bookkeeping, "save_checkpoint", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        run_train(tmp_path / "split", *args)
    monkeypatch.undo()
    with open(tmp_path / "split" / "log.jsonl") as f:
        past = [json.loads(line)["iter"] for line in f][3:]  # after the checkpoint at iter 4
    assert past == ([6] if always_save_checkpoint else [6, 8])
    resumed = run_train(tmp_path / "split", *args, "--init_from=resume")
    assert [(r["iter"], r["val_loss"]) for r in resumed] == [(r["iter"], r["val_loss"])
                                                             for r in full]


def test_eval_only_writes_nothing(tmp_path, run_train, capsys):
    out = tmp_path / "out"
    log = run_train(out, "--max_iters=2")
    before = files(out)
    capsys.readouterr()
    run_train(out, "--init_from=resume", "--eval_only=True")
    assert f"step 2: train loss {log[-1]['train_loss']:.4f}" in capsys.readouterr().out
    assert files(out) == before


def test_expert_choice_run_warns_and_is_marked_not_causal(tmp_path, run_train, capsys):
    dense = run_train(tmp_path / "dense", "--max_iters=2")
    assert "warning" not in capsys.readouterr().err
    expert_choice = run_train(tmp_path / "ec", "--ffn=moe", "--moe_routing=expert_choice",
                              "--max_iters=2")
    assert "warning: this MoE" in capsys.readouterr().err
    assert all(r["causal"] for r in dense) and not any(r["causal"] for r in expert_choice)


def test_saved_config_agrees_with_the_model(tmp_path, run_train):
    """A converted run's checkpoint holds the converted model's settings in `config` too."""
    run_train(tmp_path / "mot", "--ffn=mot", "--max_iters=2")
    run_train(tmp_path / "tc", f"--init_from={tmp_path / 'mot'}", "--transition=token_choice",
              "--max_iters=2")
    checkpoint = torch.load(tmp_path / "tc" / "ckpt.pt", weights_only=True)
    assert checkpoint["config"]["ffn"] == "moe"
    assert all(checkpoint["config"][k] == v for k, v in checkpoint["model_args"].items()
               if k != "vocab_size")


def test_temperature_zero_samples_greedily(tmp_path, run_train, capsys):
    """--temperature=0 gives the most likely token each step: the same text for every seed,
    the text of --top_k=1."""
    out = tmp_path / "out"
    run_train(out, "--max_iters=4", "--learning_rate=1e-2")

    def samples(*flags):
        capsys.readouterr()
        sample.main([f"--out_dir={out}", "--start=Speak", "--num_samples=2",
                     "--max_new_tokens=10", "--device=cpu", *flags])
        return capsys.readouterr().out

    greedy = samples("--temperature=0", "--seed=1")
    assert greedy == samples("--temperature=0", "--seed=2") == samples("--top_k=1")
    assert greedy != samples("--temperature=1.0", "--seed=1")


def test_the_loss_reaches_the_host_only_when_printed(tmp_path, run_train, monkeypatch, capsys):
    """Outside evaluations a training step reads nothing back from the device (a read waits for
    the GPU): the loss is read only at the log interval, for the line it prints."""
    reads = []
    original = torch.Tensor.item

    def item(tensor):
        caller = sys._getframe(1).f_code
        if (caller.co_filename in (train.__file__, bookkeeping.__file__)
                and caller.co_name != "evaluate"):
            reads.append(caller.co_name)
        return original(tensor)

    monkeypatch.setattr(torch.Tensor, "item", item)
    run_train(tmp_path / "out", "--max_iters=6", "--eval_interval=100", "--log_interval=3")
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("iter ")]
    assert [line.split(":")[0] for line in printed] == ["iter 0", "iter 3"]
    assert len(reads) == len(printed)


def test_load_checks_every_token_id(data_root):
    """A foreign id anywhere in a split, its last token included, is the one-line error naming
    the file, before a run writes anything."""
    path = data_root / "shakespeare_char" / "train.bin"
    tokens = np.fromfile(path, dtype=np.uint16)
    dataset.load(str(data_root), "shakespeare_char", 16)
    tokens[-1] = 60000
    tokens.tofile(path)
    with pytest.raises(SystemExit, match="train.bin"):
        dataset.load(str(data_root), "shakespeare_char", 16)


def test_wandb_logs_the_log_lines_offline(tmp_path, run_train, monkeypatch):
    """--wandb_log=True (WANDB_MODE=offline: no account, no network) logs every number of each
    log.jsonl line, a list per layer as name/i, at its iteration; a run without it imports no
    wandb."""
    import wandb
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logged, log = [], wandb.sdk.wandb_run.Run.log
    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", lambda self, data, step=None, **k:
                        logged.append((step, data)) or log(self, data, step=step, **k))
    records = run_train(tmp_path / "out", "--ffn=mot", "--max_iters=2", "--wandb_log=True",
                        "--wandb_run_name=tiny")
    assert [step for step, _ in logged] == [r["iter"] for r in records] == [0, 2]
    step, data = logged[-1]
    assert data["val_loss"] == records[-1]["val_loss"]
    assert data["merge_entropy/1"] == records[-1]["merge_entropy"][1]
    assert data["temperature/0"] == records[-1]["temperature"][0]
    assert glob.glob(str(tmp_path / "wandb" / "offline-run-*"))


def test_help_lists_every_setting_and_a_field_added_to_gptconfig_is_one(tmp_path, data_root):
    """`train.py --help` lists every TrainConfig setting with its default; a field added to
    mot.GPTConfig (here in a copy of the repository) is listed and taken as --field=value, and
    the run's checkpoint holds it, with no other edit."""
    for name in glob.glob(os.path.join(ROOT, "*.py")):
        shutil.copy(name, tmp_path)
    source = (tmp_path / "mot.py").read_text()
    anchor = "    aux_loss_coef: float = 0.01"
    assert anchor in source
    (tmp_path / "mot.py").write_text(source.replace(anchor, "    my_knob: int = 3\n" + anchor))

    def run(*args):
        return subprocess.run([sys.executable, "train.py", *args], cwd=tmp_path,
                              capture_output=True, text=True)
    listed = run("--help").stdout
    for key in configurator.settings_of(train.TrainConfig):
        assert f"  --{key}=" in listed, key
    assert "  --my_knob=3\n" in listed
    done = run(*TINY, f"--data_root={data_root}", "--out_dir=out", "--max_iters=0",
                 "--my_knob=5")
    assert done.returncode == 0, done.stderr
    checkpoint = torch.load(tmp_path / "out" / "ckpt.pt", weights_only=True)
    assert checkpoint["config"]["my_knob"] == 5 and checkpoint["iter_num"] == 0


def test_wandb_missing_is_one_line_before_anything_is_written(tmp_path, run_train, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SystemExit, match="^error: wandb_log=True: needs the wandb package: "
                                         "pip install wandb$"):
        run_train(tmp_path / "out", "--wandb_log=True")
    assert not os.path.exists(tmp_path / "out")


def readme_ffn_code() -> tuple:
    """README.md's "Add your own FFN" example: its FFNS key, its class's name, and its code up to
    its FFNS line (the registration is the test's)."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = re.search(r"^### Add your own FFN\n(.*?)(?=^##)", text, re.DOTALL | re.MULTILINE)
    code = re.search(r"^```python\n(.*?)^```", section.group(1), re.DOTALL | re.MULTILINE)[1]
    registration = re.search(r'^FFNS\["(\w+)"\] = (\w+)', code, re.MULTILINE)
    return registration[1], registration[2], code[:registration.start()]


def readme_ffn() -> tuple:
    """README.md's example FFN: its FFNS key and its class, its code run as a reader pastes it
    (the registration is the test's, undone after it)."""
    kind, name, code = readme_ffn_code()
    namespace = {"__name__": "readme_ffn"}
    exec(compile(code, "README.md, Add your own FFN", "exec"), namespace)  # noqa: S102
    return kind, namespace[name]


def test_the_whole_of_test_mot_passes_with_the_readme_ffn_registered(tmp_path):
    """Every test of test_mot.py, in a pytest whose plugin registers README.md's example FFN (a
    grouped FFN that is not MoT) in FFNS before collection: the tests over every kind take it
    (parametrized ones too), the MoT-only ones leave it out, and all pass."""
    kind, name, code = readme_ffn_code()
    (tmp_path / "register_readme_ffn.py").write_text(
        f"{code}\n\ndef pytest_configure(config):\n    FFNS[{kind!r}] = {name}\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider",
                             "-p", "register_readme_ffn", "test_mot.py"], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
    assert f"[{kind}] PASSED" in result.stdout, result.stdout[-5000:]


def test_a_new_ffn_is_one_class_and_one_line_in_ffns(tmp_path, run_train, monkeypatch):
    """README.md's example, a grouped FFN that is not MoT, registered with its one FFNS line:
    test_mot.py's properties of every kind hold for it (causal, whole groups independent and
    permutations inside a group commuting, the KV cache exact, from_config by keyword, a step
    lowers the loss), GPT.generate decodes one sequence (a padded group: no code of its own),
    and train.py trains it (whole groups checked, resumed exactly)."""
    kind, cls = readme_ffn()
    assert cls.group_size > 1 and not issubclass(cls, MixtureOfTokens)
    monkeypatch.setitem(FFNS, kind, cls)

    @test_mot.PROPERTY
    @given(setup=test_mot.gpt_setups((kind,)), groups=test_mot.ffn_setups((kind,)),
           data=st.data())
    def properties(setup, groups, data):
        test_mot.check_causal(setup, data)
        test_mot.check_groups(groups)
    properties()
    for B in (1, 3, 4):
        test_mot.check_kv_cache(kind, B)
    test_mot.check_generate_one(kind)
    test_mot.test_every_registered_kind_builds_a_gpt_that_trains(kind, torch.device("cpu"))
    with monkeypatch.context() as patch:  # patches the class's __init__: undone right after
        test_mot.test_from_config_sets_every_constructor_argument_by_name(kind, patch)
    args = (f"--ffn={kind}", "--dropout=0.0")
    full = run_train(tmp_path / "full", *args, "--max_iters=6")
    assert full[-1]["train_loss"] < full[0]["train_loss"]
    run_train(tmp_path / "split", *args, "--max_iters=4")
    resumed = run_train(tmp_path / "split", *args, "--max_iters=6", "--init_from=resume")
    assert [(r["iter"], r["val_loss"]) for r in resumed] == [(r["iter"], r["val_loss"])
                                                            for r in full]
    G = cls.group_size
    with pytest.raises(SystemExit, match=f"batch_size={G + 1} .* multiple of group_size={G}: "
                                         f"{kind}"):
        run_train(tmp_path / "odd", *args, f"--batch_size={G + 1}")


def test_the_first_step_is_timed_apart_and_the_clock_waits_only_where_it_reads(
        tmp_path, run_train, monkeypatch):
    """A slow first step (compilation) is logged as warmup_s, not in elapsed_s or tokens_per_s;
    with a GPU's clock (faked), the loop waits for the device only where it reads the time: at
    evaluations, the first step and log steps, never in between. The time is a fake one that
    only training forwards advance: 100 s for the first, 1 s for each other."""
    now, forward = [0.0], GPT.forward

    def timed_forward(self, *args, **kwargs):
        if self.training:
            now[0] += 1.0 if now[0] else 100.0
        return forward(self, *args, **kwargs)
    monkeypatch.setattr(GPT, "forward", timed_forward)
    monkeypatch.setattr(bookkeeping, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    syncs = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: syncs.append(1))
    read_clock = bookkeeping.Run.read_clock

    def read_a_gpus_clock(self, counted):  # as on a GPU: the device is waited for at each read
        device, self.device = self.device, "cuda"
        try:
            return read_clock(self, counted)
        finally:
            self.device = device
    monkeypatch.setattr(bookkeeping.Run, "read_clock", read_a_gpus_clock)
    log = run_train(tmp_path / "out", "--max_iters=6", "--eval_interval=100", "--log_interval=3")
    assert (log[-1]["warmup_s"], log[-1]["elapsed_s"]) == (100.0, 5.0)
    assert log[-1]["tokens_per_s"] == 5 * 4 * 16 / 5.0  # 5 timed steps of 4 × 16 tokens
    # iter 0: before and after its evaluation, then its step (the first); iter 3 (a log step);
    # iter 6: before its evaluation. Steps 1, 2, 4 and 5 run without a wait.
    assert len(syncs) == 5
