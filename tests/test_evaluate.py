"""evaluate.py --windows: the val loss with a group's windows drawn as train.py draws them, with
no two of a group overlapping, and in pairs one token apart; the three draws checked directly."""

from types import SimpleNamespace

import pytest
import torch

import evaluate
from dataset import eval_batches, load, windows


def groups(starts: list, group_size: int) -> list:
    return [starts[i:i + group_size] for i in range(0, len(starts), group_size)]


@pytest.mark.parametrize("group_size", [1, 2, 4, 5])
def test_disjoint_windows_share_no_token_within_a_group(group_size):
    """Starts in get_batch's range [0, limit), at least `length` apart within every group, in
    a range so tight (room for 3 more starts than the windows need) that independent draws would
    overlap; the groups still differ from one another (drawn, not laid out)."""
    length, n = 17, 40 * group_size
    limit = (group_size - 1) * length + 3
    generator = torch.Generator().manual_seed(0)
    starts = evaluate.disjoint_starts(n, group_size, limit, length, generator)
    assert len(starts) == n and all(0 <= s < limit for s in starts)
    for group in groups(starts, group_size):
        assert all(abs(a - b) >= length for i, a in enumerate(group) for b in group[i + 1:])
    assert len({tuple(g) for g in groups(starts, group_size)}) > 1
    assert evaluate.overlapping_share(starts, group_size, length) == 0.0


def test_too_little_room_for_disjoint_windows_is_one_line():
    with pytest.raises(SystemExit, match="group_size=4 windows of 17 tokens"):
        evaluate.disjoint_starts(8, 4, 3 * 17, 17, torch.Generator())


@pytest.mark.parametrize("group_size", [1, 2, 4, 5])
def test_paired_windows_sit_one_token_apart(group_size):
    """Every group: pairs (s, s+1), an odd group's last window alone; all in [0, limit)."""
    limit, n = 50, 30 * group_size
    starts = evaluate.paired_starts(n, group_size, limit, torch.Generator().manual_seed(0))
    assert len(starts) == n and all(0 <= s < limit for s in starts)
    for group in groups(starts, group_size):
        assert all(group[k + 1] == group[k] + 1 for k in range(0, group_size - 1, 2))


def test_overlapping_share():
    """Windows of 17 tokens: starts 17 apart share none, 16 or fewer apart share some, in any
    order within the group."""
    assert evaluate.overlapping_share([0, 17, 100, 110, 40, 30], 2, 17) == pytest.approx(2 / 3)
    assert evaluate.overlapping_share([100, 0, 50, 16], 4, 17) == 1.0
    assert evaluate.overlapping_share([100, 0, 50, 17], 4, 17) == 0.0


def test_eval_starts_are_the_evaluations_windows(data_root):
    data = load(str(data_root), "shakespeare_char", 16)[0]["val"]
    c = SimpleNamespace(seed=3, eval_iters=3, batch_size=4, block_size=16, device="cpu")
    starts = evaluate.eval_starts(data, c)
    batches = list(eval_batches(data, c))
    assert len(starts) == 12
    for k, (x, y) in enumerate(batches):
        drawn = windows(data, starts[4 * k:4 * k + 4], 16)
        assert torch.equal(x, drawn[0]) and torch.equal(y, drawn[1])


def test_windows_table_on_tiny_runs(tmp_path, run_train, capsys):
    """(a) is the val loss train.py logged at the checkpoint's iteration; every loss has a
    standard error; the share of overlapping groups is a percentage, for a model with groups."""
    logs = dict(mot=run_train(tmp_path / "mot", "--ffn=mot", "--max_iters=4"),
                dense=run_train(tmp_path / "dense", "--max_iters=4"))
    capsys.readouterr()  # train.py's output
    evaluate.main([str(tmp_path / "mot"), str(tmp_path / "dense"), "--windows"])
    out = capsys.readouterr().out
    assert "(c) each window beside its one-token shift" in out and "standard error" in out
    rows = [line.strip("| ").split(" | ") for line in out.splitlines()[2:4]]
    for row, (name, log) in zip(rows, logs.items()):
        iter_num = int(row[2])
        logged = [r["val_loss"] for r in log if r["iter"] == iter_num]
        share, losses = row[3], [cell.split(" ± ") for cell in row[4:]]
        if name == "mot":
            assert share.endswith("%") and 0 <= float(share[:-1]) <= 100
        else:
            assert share == "— (no groups)"
        assert len(losses) == 3 and all(float(error) > 0 for _, error in losses)
        assert float(losses[0][0]) == pytest.approx(logged[0], abs=1e-4), name
