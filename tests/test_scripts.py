"""The evidence scripts keep working: bench.py, plot.py, evaluate.py, visualize.py (tiny sizes,
no timing asserts)."""

import subprocess
import sys

import pytest

import evaluate
import plot
import visualize
from conftest import ROOT


def run_script(*args):
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_bench_prints_the_tables():
    out = run_script("bench.py", "--tiny")
    for row in ("dense", "mot E=4 G=2", "moe top-1 E=4"):
        assert row in out
    assert "x dense" in out and "saved MB" in out
    out = run_script("bench.py", "--step", "--tiny")
    rows = [line.split() for line in out.splitlines() if line.startswith(("dense", "mot", "moe"))]
    assert [row[0] for row in rows] == ["dense", "mot", "moe"]
    assert "FLOPs x" in out and "optimizer" in out and rows[0][2:4] == ["1.00", "1.00"]
    out = run_script("bench.py", "--sampling", "--tiny")
    for row in ("dense B=1 cache off", "mot B=2 cache on", "moe B=1 cache on"):
        assert row in out
    assert "cache speed-up" in out


def test_speedups_from_logs():
    """A run that reaches the baseline's final loss at half the steps and a third of the time."""
    baseline = [dict(iter=i, val_loss=3.0 - i / 100, elapsed_s=i * 3.0) for i in range(0, 101, 10)]
    faster = [dict(iter=i, val_loss=3.0 - i / 50, elapsed_s=i * 2.0) for i in range(0, 101, 10)]
    s = plot.speedups(baseline, faster)
    assert (s["reached_iter"], s["step_speedup"], s["time_speedup"]) == (50, 2.0, 3.0)
    assert plot.speedups(faster, baseline)["reached_iter"] is None


def test_plot_evaluate_and_visualize_on_tiny_runs(tmp_path, run_train, capsys, monkeypatch):
    dense = run_train(tmp_path / "dense", "--max_iters=4")
    mot = run_train(tmp_path / "mot", "--ffn=mot", "--max_iters=4")
    png = tmp_path / "results.png"
    monkeypatch.setattr(sys, "argv", ["plot.py", str(tmp_path / "dense"), str(tmp_path / "mot"),
                                      f"--out={png}"])
    plot.main()
    table = capsys.readouterr().out
    assert png.stat().st_size > 0 and f"| mot | {mot[-1]['val_loss']:.4f} |" in table

    # "grouped" reproduces the logged val loss: the same batches as train.py's evaluation
    evaluate.main([str(tmp_path / "mot"), str(tmp_path / "dense")])
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines()[2:]]
    assert float(rows[0][3]) == pytest.approx(mot[-1]["val_loss"], abs=1e-4)
    assert float(rows[1][3]) == pytest.approx(dense[-1]["val_loss"], abs=1e-4)
    # dense: one at a time, with companions or not, changes nothing
    assert rows[1][3] == rows[1][4] == rows[1][5].strip(" |")
    assert rows[0][4] != rows[0][5]  # MoT: zero padding and companions are different groups

    visualize.main([f"--out_dir={tmp_path / 'mot'}"])
    assert (tmp_path / "mot" / "merge_weights.png").stat().st_size > 0
    assert (tmp_path / "mot" / "merge_entropy.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="no merge weights"):
        visualize.main([f"--out_dir={tmp_path / 'dense'}"])
