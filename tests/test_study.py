"""data/python_stdlib/prepare.py on a small directory, and experiments/study.py on a tiny copy of
its protocol: a tiny model, 4 steps, small grids, the tiny dataset of conftest.py."""

import json
import os
import statistics
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest
import torch

import study
import configurator
import train
from conftest import ROOT, TINY
from plot import read_log
from python_stdlib.prepare import prepare as prepare_stdlib

TINY_MODEL = ["--n_layer=2", "--n_head=2", "--n_embd=16", "--block_size=16", "--batch_size=4",
              "--eval_iters=2", "--eval_interval=2", "--log_interval=1", "--warmup_iters=2"]
FIELDS = {"name", "stage", "model", "command", "seed", "lr", "max_iters", "final_val_loss",
          "final_train_loss", "best_val_loss", "elapsed_s", "curve", "machine"}


def write_library(directory, n_modules=19) -> dict:
    """A small standard library: modules, a Latin-1 file, and files that are not part of it.
    Returns the text prepare should read from each file, by relative path."""
    texts = {f"pkg/mod{i:02d}.py": f"def f{i}(x):\n    return x * {i}  # é\n" * 3
             for i in range(n_modules)}
    texts["abc.py"] = "no newline at the end"
    for path, text in texts.items():
        (directory / path).parent.mkdir(parents=True, exist_ok=True)
        (directory / path).write_text(text, encoding="utf-8")
    (directory / "latin1.py").write_bytes(b"s = '\xe9'\n")  # not UTF-8
    texts["latin1.py"] = "s = '\ufffd'\n"
    for skipped in ("site-packages/x.py", "pkg/__pycache__/y.py", "notes.txt"):
        (directory / skipped).parent.mkdir(parents=True, exist_ok=True)
        (directory / skipped).write_text("skipped")
    return texts


def test_stdlib_prepare_on_a_small_directory(tmp_path):
    texts = write_library(tmp_path / "lib")
    prepare_stdlib(str(tmp_path), str(tmp_path / "lib"))
    meta = json.loads((tmp_path / "meta.json").read_text())

    def decode(split):
        ids = np.fromfile(tmp_path / f"{split}.bin", dtype=np.uint16)
        return "".join(meta["chars"][i] for i in ids)

    def corpus(paths):
        return "".join(f"# ==== {path} ====\n{texts[path]}" for path in paths)

    paths = sorted(texts)  # abc.py, latin1.py, pkg/mod00.py, ...: 21 files, the 10th and 20th val
    assert decode("val") == corpus(paths[9::10])
    assert decode("train") == corpus(p for i, p in enumerate(paths) if i % 10 != 9)
    characters = len(decode("train")) + len(decode("val"))
    assert meta["chars"] == sorted(set(corpus(paths))) and meta["vocab_size"] == len(meta["chars"])
    assert (meta["tokenizer"], meta["python_version"]) == ("char", sys.version)
    assert (meta["files"], meta["characters"]) == (21, characters)


def test_stdlib_prepare_refuses_more_characters_than_uint16_ids(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "wide.py").write_text("".join(map(chr, range(0x10000, 0x10000 + 70000))),
                                              encoding="utf-8")
    with pytest.raises(SystemExit, match="more than uint16"):
        prepare_stdlib(str(tmp_path), str(tmp_path / "lib"))


def tiny_study(tmp_path, data_root) -> dict:
    return {**study.STUDY, "flags": TINY_MODEL + [f"--data_root={data_root}"], "steps": 4,
            "stdlib_steps": 4, "mot_sizes": [(4, 2)], "controller_init_stds": [0.02, 0.25],
            "temperatures": [0.3], "n_dense_layers": 1, "lrs": [1e-3, 2e-3], "seeds": [0, 1],
            "stdlib_seeds": [0],
            "sizes": dict(tiny=[]), "regime_steps": 4, "regime_lrs": [1e-3, 2e-3],
            "regime_seeds": [0, 1],
            "regime_mot": dict(n_experts=4, group_size=2, controller_init_std=0.25,
                               temperature=0.3),
            "regime_knobs": [dict(n_experts=8), dict(temperature=1.0, temperature_final=0.1)],
            "regime_lr_factors": [2.0], "regime_lengths": [6], "regime_length_seeds": [0],
            "regime_long_steps": 8, "regime_evals": 2, "regime_plot": str(tmp_path / "regime.png"),
            "regime_baseline_mot": dict(n_experts=16), "regime_baseline_knob": dict(n_experts=8),
            "equal_flops": [(4, [0, 1]), (6, [0])],
            "timings": str(tmp_path / "results" / "timings.jsonl"),
            "results": str(tmp_path / "results" / "study.jsonl"),
            "runs_dir": str(tmp_path / "runs"),
            "plots": dict(final=str(tmp_path / "final.png"),
                          python_stdlib=str(tmp_path / "stdlib.png")),
            "docs": [str(tmp_path / "doc.md")]}


def read_lines(S) -> list:
    with open(S["results"]) as f:
        return [json.loads(line) for line in f]


@pytest.fixture
def tiny(tmp_path, data_root, monkeypatch):
    """The tiny study, whose runs train in this process (train.main on one thread) rather than as
    subprocesses: a tiny model's step is all overhead, and more threads only wait on a busy CPU."""
    (data_root / "python_stdlib").mkdir()
    write_library(tmp_path / "lib", n_modules=40)
    prepare_stdlib(str(data_root / "python_stdlib"), str(tmp_path / "lib"))
    monkeypatch.chdir(ROOT)  # the config files are relative to the repository root
    monkeypatch.setattr(study, "launch", train.main)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tiny_study(tmp_path, data_root)
    torch.set_num_threads(threads)


def test_the_study_runs_every_stage_once(tiny, tmp_path, capsys, monkeypatch):
    study.main([], tiny)
    lines = read_lines(tiny)
    names = [line["name"] for line in lines]
    results = {line["name"]: line for line in lines}
    planned = {r["name"] for stage in study.STAGES for r in study.plan(tiny, results, stage)}
    assert len(set(names)) == len(names) and set(names) == planned
    # 6 screening (2 + 4 variants), 5 lr (+1 from screening), 10 final (3 or 4 from lr and
    # screening), 3 python_stdlib (one seed); regime: 6 lr, 3 more seeds, 2 or 3 knobs (the lr
    # knob may be an lr run) and up to 3 of their seeds, 3 at the other length, 3 long; the
    # baselines: 5 models at 2 lrs, then their second seed; equal_flops: dense at MoT's FLOPs,
    # 2 seeds at the usual length and 1 at the other
    assert 55 <= len(lines) <= 60
    equal = [line for line in lines if line["stage"] == "equal_flops"]
    assert [line["mot_steps"] for line in equal] == [4, 4, 6]
    assert all(line["max_iters"] >= line["mot_steps"] for line in equal)  # MoT costs more
    stages = [line["stage"] for line in lines]
    assert stages == sorted(stages, key=study.STAGES.index)
    for line in lines:
        assert FIELDS <= set(line) and not any("--out_dir" in arg for arg in line["command"])
        curve, steps = line["curve"], line["max_iters"]  # 2 evaluations after step 0
        assert curve["iter"] == [0, steps // 2, steps]
        assert line["final_val_loss"] == curve["val_loss"][-1]
        assert line["best_val_loss"] == min(curve["val_loss"])
        assert line["elapsed_s"] == curve["elapsed_s"][-1] and line["machine"]["threads"] == 1
    # a line's command reproduces its losses
    train.main(lines[-1]["command"] + [f"--out_dir={tmp_path / 'again'}"])
    again = read_log(str(tmp_path / "again"))[-1]["val_loss"]
    assert again == pytest.approx(lines[-1]["final_val_loss"], abs=1e-6)

    monkeypatch.setattr(study, "launch", lambda args: pytest.fail(f"trained again: {args}"))
    study.main([], tiny)
    assert read_lines(tiny) == lines

    doc = ("# Results\n" + study.BEGIN + " final python_stdlib -->\nold\n" + study.END + "\ntext\n"
           + study.BEGIN + " screening -->\n" + study.END + "\n")
    with open(tiny["docs"][0], "w") as f:
        f.write(doc)
    capsys.readouterr()
    study.main(["--table", "--plot", "--docs"], tiny)
    table = capsys.readouterr().out
    with open(tiny["docs"][0]) as f:
        updated = f.read()
    final_tables = study.tables(tiny, results, ["final", "python_stdlib"])
    assert updated == doc.replace("old\n", final_tables + "\n").replace(
        "screening -->\n", "screening -->\n" + study.tables(tiny, results, ["screening"]) + "\n")
    stage_tables, machines = final_tables.rsplit("\n\n", 1)  # the machines close every table
    assert stage_tables in table and machines in table
    assert "**Stage screening.**" not in final_tables
    final = study.plan(tiny, results, "final")
    dense = [results[r["name"]] for r in final if r["model"] == "dense"]
    losses = [line["final_val_loss"] for line in dense]
    assert (f"| dense | {dense[0]['lr']:g} | 2 | {statistics.mean(losses):.4f} ± "
            f"{statistics.stdev(losses):.4f} |") in table
    assert "**Stage python_stdlib.**" in table and study.RULE in table
    assert os.path.getsize(tiny["plots"]["final"]) > 0
    assert os.path.getsize(tiny["plots"]["python_stdlib"]) > 0
    assert os.path.getsize(tiny["regime_plot"]) > 0
    baselines = study.tables(tiny, results, ["regime_baselines"])
    rows = {row.split(" | ")[0][2:]: row.split(" | ") for row in baselines.splitlines()
            if row.startswith("| ") and not row.startswith("| model")}
    seeded = ("dense", "moe-top1-e8", "moe-top1-e8-cf1.25", "moe-ec-e8", "moe-top4-e32",
              "moe-top8-e64", "mot-e4-g2-init0.25-tau0.3", "mot-e16-g2-init0.25-tau0.3")
    assert all(rows[model][2] == "2" for model in seeded)  # the knob: 1 or 2 seeds
    assert set(rows) == set(seeded) | {"mot-e8-g2-init0.25-tau0.3"}
    assert [rows[model][-1] for model in ("moe-top1-e8-cf1.25", "moe-ec-e8")] == ["no |"] * 2
    name = next(line["name"] for line in lines if line["stage"] == "regime_baselines")
    results[name]["cpu_share"] = 0.5  # as if it had shared the CPU: re-timed alone
    with open(tiny["results"], "w") as f:
        f.writelines(json.dumps(line) + "\n" for line in results.values())
    monkeypatch.setattr(study, "launch", train.main)
    study.main(["--retime", name], tiny)
    timing = json.loads(open(tiny["timings"]).read())
    assert timing["name"] == name and timing["reproduced"]
    retimed = study.read_results(tiny)[name]  # its seconds if it had the CPU to itself
    assert retimed.get("retimed_s", None) == (timing["elapsed_s"] if timing["cpu_share"]
                                              >= study.SHARED else None)
    assert study.seconds([dict(elapsed_s=90.0, cpu_share=0.5, retimed_s=40.0),
                          dict(elapsed_s=50.0, cpu_share=0.95)]) == "45 ± 7 (re-timed alone)"
    assert study.seconds([dict(elapsed_s=90.0, cpu_share=0.5)]) == "90 (shared)"
    regime = study.tables(tiny, results, ["regime", "regime_knobs"])
    assert regime.count("| tiny |") == 2 and regime.count("| recipe |") == 2  # 2 lengths each
    assert all(line["commit"] and 0 < line["cpu_share"] for line in lines)


def record(S, stage, losses, default=1.9) -> None:
    """Record the stage's runs not done yet as if they had run, with final val loss
    losses[name] (default otherwise), train loss 0.1 lower, and evaluations at steps 0, 2, 4."""
    results = study.read_results(S)
    os.makedirs(os.path.dirname(S["results"]), exist_ok=True)
    while True:  # the screening plans its variants once its grid is recorded
        todo = [r for r in study.plan(S, results, stage) if r["name"] not in results]
        if not todo:
            return
        for run in todo:
            loss = losses.get(run["name"], default)
            curve = dict(iter=[0, 2, 4], val_loss=[4.0, loss + 0.1, loss],
                         train_loss=[4.0, loss, loss - 0.1], elapsed_s=[0.0, 5.0, 10.0])
            results[run["name"]] = dict(
                run, final_val_loss=loss, final_train_loss=loss - 0.1, best_val_loss=loss,
                elapsed_s=10.0, curve=curve,
                machine=dict(cpu="test", cores=2, threads=1, torch="x"))
            with open(S["results"], "a") as f:
                f.write(json.dumps(results[run["name"]]) + "\n")


def names(S, stage) -> list:
    return [r["name"] for r in study.plan(S, study.read_results(S), stage)]


def test_later_stages_choose_from_the_results_of_earlier_ones(tmp_path, capsys):
    S = {**tiny_study(tmp_path, tmp_path), "temperatures": [1.0, 0.3]}
    # screening: init 0.25 τ 0.3 is the best of the grid, init 0.02 τ 1 the second; the second's
    # dropout variant then beats everything: it is the best MoT, the best grid model second
    record(S, "screening", {"mot-e4-g2-init0.25-tau0.3-s0": 1.50,
                            "mot-e4-g2-init0.02-tau1-s0": 1.60,
                            "mot-e4-g2-init0.25-tau0.3-drop0.1-s0": 1.55,
                            "mot-e4-g2-init0.25-tau0.3-dense1-s0": 1.52,
                            "mot-e4-g2-init0.02-tau1-drop0.1-s0": 1.45})
    assert names(S, "screening")[4:] == [
        "mot-e4-g2-init0.25-tau0.3-drop0.1-s0", "mot-e4-g2-init0.25-tau0.3-dense1-s0",
        "mot-e4-g2-init0.02-tau1-drop0.1-s0", "mot-e4-g2-init0.02-tau1-dense1-s0"]
    best = "mot-e4-g2-init0.02-tau1-drop0.1"
    assert names(S, "lr") == ["dense-s0", "dense-lr0.002-s0", f"{best}-s0",
                              f"{best}-lr0.002-s0", "moe-top1-e8-s0", "moe-top1-e8-lr0.002-s0"]
    with pytest.raises(study.Waiting, match="final waits for lr: 5 runs to go"):
        names(S, "final")  # the best MoT's run at lr 1e-3 is its screening run
    with pytest.raises(SystemExit, match="final waits for lr"):
        study.main(["--stage", "final"], S)

    # lr: dense is best at 2e-3, MoT and MoE at 1e-3 (the second MoT takes the best MoT's)
    record(S, "lr", {"dense-s0": 1.70, "dense-lr0.002-s0": 1.65, f"{best}-lr0.002-s0": 1.60,
                     "moe-top1-e8-s0": 1.50, "moe-top1-e8-lr0.002-s0": 1.55})
    final = ["dense-lr0.002", best, "mot-e4-g2-init0.25-tau0.3", "moe-top1-e8", "moe-ec-e8"]
    assert names(S, "final") == [f"{model}-s{seed}" for seed in (0, 1) for model in final]
    runs = {r["name"]: r for r in study.plan(S, study.read_results(S), "final")}
    assert {"--learning_rate=0.002", "--min_lr=0.0002"} <= set(
        runs["dense-lr0.002-s1"]["command"])
    assert "--moe_routing=expert_choice" in runs["moe-ec-e8-s1"]["command"]
    # final: dense 1.65 (its lr run) and 1.63; the best MoT clearly lower, the second within the
    # spread of its seeds, expert choice never reaches dense
    record(S, "final", {"dense-lr0.002-s1": 1.63, f"{best}-s1": 1.47,
                        "mot-e4-g2-init0.25-tau0.3-s1": 1.80, "moe-top1-e8-s1": 1.52,
                        "moe-ec-e8-s0": 1.90, "moe-ec-e8-s1": 1.92})
    # python_stdlib: the best MoT without dropout, on the other corpus
    assert names(S, "python_stdlib")[:3] == ["stdlib-dense-lr0.002-s0",
                                             "stdlib-mot-e4-g2-init0.02-tau1-s0",
                                             "stdlib-moe-top1-e8-s0"]
    mot_run = study.plan(S, study.read_results(S), "python_stdlib")[1]
    assert mot_run["command"][:2] == [S["config"], S["stdlib_config"]]
    assert "--dropout=0.0" in mot_run["command"]

    capsys.readouterr()
    study.main(["--table"], S)
    rows = {row.split(" | ")[0][2:]: row for row in capsys.readouterr().out.splitlines()
            if row.startswith("| ")}
    assert rows["dense"].startswith("| dense | 0.002 | 2 | 1.6400 ± 0.0141 | 1.5400 ± 0.0141 |")
    assert "| 4 (1 of 2 seeds) |" in rows["dense"]
    assert rows[best].startswith(f"| {best} | 0.001 | 2 | 1.4600 ± 0.0141 |")
    assert rows[best].endswith("| 2 | 10 ± 0 | **-0.1800** | **-0.1800** |")
    assert rows["mot-e4-g2-init0.25-tau0.3"].endswith(
        "| 2 (1 of 2 seeds) | 10 ± 0 | +0.0100 | +0.0100 |")
    assert rows["moe-ec-e8 (not causal)"].endswith("| — | 10 ± 0 | **+0.2700** | **+0.2700** |")

    # val loss at chosen steps: dense's seeds read 1.75 and 1.73 at step 2; step 3 was not evaluated
    study.main(["--at", "2", "3"], S)
    rows = {row.split(" | ")[0][2:]: row for row in capsys.readouterr().out.splitlines()
            if row.startswith("| ")}
    assert rows["dense"] == "| dense | 1.740 [1.730–1.750] | — |"


def test_dry_run_prints_the_protocols_first_commands(tmp_path, capsys):
    study.main(["--dry_run"], {**study.STUDY, "results": str(tmp_path / "none.jsonl")})
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "# screening: 12 of 12 runs to do" and len(out) == 14
    assert out[5] == ("python train.py config/train_shakespeare_char_cpu.py "
                      "config/train_shakespeare_char_cpu_mot.py --n_experts=128 --group_size=32 "
                      "--controller_init_std=0.08838834764831845 --temperature=0.3 --dropout=0.0 "
                      "--n_dense_layers=0 --learning_rate=0.001 --min_lr=0.0001 --max_iters=2000 "
                      "--lr_decay_iters=2000 --seed=0 --out_dir=out-study/mot-e128-g32-init0.088-"
                      "tau0.3-s0")
    assert out[13].startswith("lr waits for screening: 12 runs to go")


def test_a_run_is_a_train_py_subprocess(tmp_path, data_root, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a tiny model: more threads only wait
    S = tiny_study(tmp_path, data_root)
    study.main(["--only", "mot-e4-g2-init0.02-tau0.3-s0"], S)
    (line,) = read_lines(S)
    assert line["name"] == "mot-e4-g2-init0.02-tau0.3-s0" and line["curve"]["iter"] == [0, 2, 4]
    assert os.path.exists(tmp_path / "runs" / line["name"] / "ckpt.pt")
    with pytest.raises(SystemExit, match="no run named dense-s9"):
        study.main(["--only", "dense-s9"], S)
    help_text = subprocess.run([sys.executable, "experiments/study.py", "--help"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout
    assert "--stage" in help_text and "python_stdlib" in help_text


def test_the_docs_show_the_tables_of_the_recorded_study():
    """README.md and RESULTS.md hold the tables that `study.py --docs` computes from
    results/cpu_study.jsonl: no number in them is typed by hand."""
    results = study.read_results(study.STUDY)
    for doc in study.STUDY["docs"]:
        with open(os.path.join(ROOT, doc), encoding="utf-8") as f:
            text = f.read()
        blocks = list(study.doc_blocks(text))
        assert blocks, f"{doc} shows no study tables"
        for start, end, stages in blocks:
            assert text[start:end] == study.tables(study.STUDY, results, stages) + "\n", (
                f"{doc}: run `python experiments/study.py --docs`")


def test_the_regime_tunes_each_model_and_seeds_the_knobs_that_close_half_the_gap(tmp_path):
    S = tiny_study(tmp_path, tmp_path)  # the tiny regime's usual length is stdlib_steps: no suffix
    for stage in ("screening", "lr", "final", "python_stdlib"):
        record(S, stage, {})
    mot_name, tiny = "mot-e4-g2-init0.25-tau0.3", "stdlib-tiny-"
    # regime_lr: dense best at 2e-3, MoT and MoE at 1e-3
    record(S, "regime_lr", {f"{tiny}dense-s0": 1.50, f"{tiny}dense-lr0.002-s0": 1.40,
                            f"{tiny}{mot_name}-s0": 1.30, f"{tiny}{mot_name}-lr0.002-s0": 1.35,
                            f"{tiny}moe-top1-e8-s0": 1.10, f"{tiny}moe-top1-e8-lr0.002-s0": 1.2})
    assert names(S, "regime_seeds") == [
        f"{tiny}{model}-s{seed}" for seed in (0, 1)
        for model in ("dense-lr0.002", mot_name, "moe-top1-e8")]
    # seeds: MoT 1.30 and 1.32, MoE 1.10 and 1.12: a gap of 0.20
    record(S, "regime_seeds", {f"{tiny}{mot_name}-s1": 1.32, f"{tiny}moe-top1-e8-s1": 1.12})
    knobs = [f"{tiny}mot-e8-g2-init0.25-tau0.3-s0", f"{tiny}mot-e4-g2-init0.25-tau1-to0.1-s0",
             f"{tiny}{mot_name}-lr0.002-s0"]  # the lr knob (2 x 1e-3) is regime_lr's run
    assert names(S, "regime_knobs") == knobs
    # E=8 closes 0.11 of the gap of 0.20 (more than half), the annealed τ 0.05
    record(S, "regime_knobs", {knobs[0]: 1.20, knobs[1]: 1.26})
    assert names(S, "regime_knobs") == knobs + [knobs[0].replace("-s0", "-s1")]
    record(S, "regime_knobs", {})
    record(S, "regime_lengths", {})
    long_runs = study.plan(S, study.read_results(S), "regime_long")
    assert [r["max_iters"] for r in long_runs] == [8] * 3
    assert all(r["size"] == "recipe" and not r["name"].startswith(tiny) for r in long_runs)


def test_upcycle_experiment_runs_resumes_and_tabulates(tmp_path, data_root, capsys):
    """A tiny copy of experiments/upcycle.py: every run once, each line with its commit; run
    again, nothing is trained; the table has a row per model; --step0 prints the distances."""
    import upcycle
    S = dict(upcycle.EXPERIMENT, steps=4, more=4, after=2, seeds=[0],
             flags=TINY + [f"--data_root={data_root}", "--dropout=0.0", "--eval_interval=2"],
             mot=dict(n_experts=4, group_size=2, temperature=0.3),
             moe=dict(n_experts=2, moe_top_k=1),
             results=str(tmp_path / "upcycle.jsonl"), runs_dir=str(tmp_path / "runs"))
    upcycle.main([], S)
    lines = [json.loads(line) for line in open(tmp_path / "upcycle.jsonl")]
    assert [line["name"] for line in lines] == [
        "dense-s0", "dense-from-dense-s0", "mot-e4-g2-from-dense-s0",
        "mot-e2-g2-copies-from-dense-s0", "moe-top1-e2-from-dense-s0", "mot-e4-g2-scratch-s0",
        "moe-top1-e2-scratch-s0"]
    assert all(line["commit"] for line in lines)
    assert lines[5]["curve"]["iter"][-1] == 8 and lines[1]["curve"]["iter"][-1] == 4
    upcycle.main([], S)
    assert len(open(tmp_path / "upcycle.jsonl").readlines()) == 7
    capsys.readouterr()
    upcycle.main(["--table"], S)
    table = capsys.readouterr().out
    assert table.count("\n") == 2 + 6 and "| mot-e4-g2-from-dense |" in table
    upcycle.main(["--step0", str(tmp_path / "runs" / "dense-s0")], S)
    out = capsys.readouterr().out
    assert out.startswith("dense: val loss") and out.count("relative distance") == 3


# The README's "See MoT beat dense" configs and the study model each of them trains.
TINY_RECIPE = "config/train_python_stdlib_tiny.py"
TINY_OVERLAYS = {None: study.DENSE,
                 "config/train_python_stdlib_tiny_mot.py": study.mot(**study.STUDY["regime_mot"]),
                 "config/train_python_stdlib_tiny_moe.py": study.MOE}


@pytest.mark.parametrize("overlay", list(TINY_OVERLAYS))
def test_see_mot_beat_dense_trains_the_studys_seed_0_runs(overlay, monkeypatch):
    """Each of the README's three commands trains its model's 10,000-step tiny run of the study
    at seed 0, setting for setting (only out_dir differs), so that it reproduces the recorded
    losses."""
    monkeypatch.chdir(ROOT)

    def settings(argv):
        return asdict(configurator.configure(train.TrainConfig, argv)[0])
    given = settings([TINY_RECIPE] + ([overlay] if overlay else []))
    run = study.make_run(study.STUDY, "regime_lr", TINY_OVERLAYS[overlay],
                         given["learning_rate"], 0, stdlib=True, size="tiny",
                         steps=study.STUDY["regime_steps"])
    expected = settings(run["command"])
    assert {k: v for k, v in given.items() if k != "out_dir"} == {
        k: v for k, v in expected.items() if k != "out_dir"}
    assert given["out_dir"] not in {settings([TINY_RECIPE] + ([o] if o else []))["out_dir"]
                                    for o in TINY_OVERLAYS if o != overlay}  # three directories
