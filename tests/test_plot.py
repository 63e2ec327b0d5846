"""plot.py's curves against steps, training FLOPs and seconds, and a diverged run's log (its last
line "val_loss": null, as train.py writes it) drawn without that point."""

import matplotlib.figure
import pytest
import torch

import plot
from mot import GPT, GPTConfig
from conftest import error_line


@pytest.fixture
def figures(monkeypatch) -> list:
    """The figures plot.py saves, in order (still saved)."""
    saved, savefig = [], matplotlib.figure.Figure.savefig

    def record(fig, *args, **kwargs):
        saved.append(fig)
        return savefig(fig, *args, **kwargs)
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    return saved


def curves(ax) -> list:
    """The (x, y) points of each line of a panel, lists of floats."""
    return [(list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()
            if line.get_linestyle() != ":"]  # not the baseline's final loss, a dotted line


def test_curves_against_training_flops_and_seconds(tmp_path, run_train, figures, capsys):
    """--x=flops: each point at the model's whole forward+backward FLOPs per token (built here
    from the checkpoint's model_args, weights loaded) × the tokens read by then, iter × 2 × 4 ×
    16 for the MoT run that accumulates 2 micro-batches of 4 windows of 16 tokens; --x=seconds:
    at log.jsonl's elapsed_s. The panels' labels say which."""
    dense = run_train(tmp_path / "dense", "--max_iters=4")
    mot = run_train(tmp_path / "mot", "--ffn=mot", "--max_iters=4",
                    "--gradient_accumulation_steps=2")
    runs = [str(tmp_path / "dense"), str(tmp_path / "mot")]
    per_token = []
    for run in runs:
        checkpoint = torch.load(f"{run}/ckpt.pt", weights_only=True)
        model = GPT(GPTConfig(**checkpoint["model_args"]))
        model.load_state_dict(checkpoint["model"])
        per_token.append(model.flops_per_token())
    assert per_token[1] != per_token[0]  # MoT's own FLOPs: a wrong model would go unseen

    plot.main(runs + ["--x=flops", f"--out={tmp_path / 'flops.png'}"])
    by_flops, by_time = figures[-1].axes
    assert "FLOPs" in by_flops.get_xlabel() and "seconds" in by_time.get_xlabel()
    expected = [[per_token[0] * r["iter"] * 1 * 4 * 16 for r in dense],
                [per_token[1] * r["iter"] * 2 * 4 * 16 for r in mot]]
    assert [x for x, _ in curves(by_flops)] == expected
    assert [y for _, y in curves(by_flops)] == [[r["val_loss"] for r in log] for log in (dense,
                                                                                          mot)]
    assert "FLOP speed-up" in capsys.readouterr().out

    plot.main(runs + ["--x=seconds", f"--out={tmp_path / 'seconds.png'}"])
    [by_time] = figures[-1].axes
    assert "seconds" in by_time.get_xlabel()
    assert [x for x, _ in curves(by_time)] == [[r["elapsed_s"] for r in log] for log in (dense,
                                                                                         mot)]
    plot.main(runs + [f"--out={tmp_path / 'steps.png'}"])  # the default: steps, as before
    by_step, _ = figures[-1].axes
    assert by_step.get_xlabel() == "step"
    assert [x for x, _ in curves(by_step)] == [[r["iter"] for r in log] for log in (dense, mot)]


def test_flops_need_the_checkpoint_and_offsets_need_steps(tmp_path, run_train):
    run_train(tmp_path / "dense", "--max_iters=2")
    (tmp_path / "dense" / "ckpt.pt").unlink()
    with pytest.raises(SystemExit) as e:
        plot.main([str(tmp_path / "dense"), "--x=flops", f"--out={tmp_path / 'x.png'}"])
    assert "ckpt.pt not found" in error_line(e) and "--x=steps" in error_line(e)
    with pytest.raises(SystemExit) as e:
        plot.main([str(tmp_path / "dense"), "--x=seconds", "--step_offsets", "2",
                   f"--out={tmp_path / 'x.png'}"])
    assert "--step_offsets" in error_line(e)


def test_a_diverged_runs_null_val_loss_is_left_out(tmp_path, run_train, figures, capsys):
    """A run resumed at iter 4 with learning_rate=1000 diverges: train.py logs iter 8 with
    "val_loss": null and stops. plot.py draws iters 0-6, and says it left iter 8 out."""
    out = tmp_path / "out"
    run_train(out, "--max_iters=4")
    with pytest.raises(SystemExit):
        run_train(out, "--init_from=resume", "--max_iters=12", "--learning_rate=1000.0",
                  "--grad_clip=0.0")
    log = plot.read_log(str(out))
    assert (out / "log.jsonl").read_text().count('"val_loss": null') == 1
    plot.main([str(out), f"--out={tmp_path / 'x.png'}"])
    by_step, _ = figures[-1].axes
    assert [x for x, _ in curves(by_step)] == [[0, 2, 4, 6]] == [[r["iter"] for r in log]]
    assert "val_loss null (the run diverged) at iter 8" in capsys.readouterr().err
