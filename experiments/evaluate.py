"""
Val loss of trained checkpoints under inference modes:

    python experiments/evaluate.py out-mot out-mot-discrete out-mot-token-choice [--eval_iters=20]

For each run directory: "grouped" evaluates batches as in training (a MoT model mixes the batch's
examples in groups of group_size), "one at a time" feeds each sequence alone (MoT pads it to a
group with zero rows), "with companions" feeds each sequence with group_size − 1 windows of
training text that fill its group (their own loss is not counted). The batches are those of
train.py's evaluations (same seed), so "grouped" reproduces the val_loss that train.py logged.

    python experiments/evaluate.py out-mot out-dense --windows [--eval_iters=200]

--windows prints instead whether a group's windows leak text into each other. MoT mixes the
tokens at one position of a group's G windows, and train.py draws those windows at random starts
of one split: two can overlap, and then a group-mate's token at position t is this window's
token at t+d, d tokens ahead. The val loss, grouped as trained, with the windows drawn three
ways (each as many windows, in batches of the run's batch_size):
  (a) as train.py draws them: dataset.eval_batches, the batches of its evaluations;
  (b) no two windows of a group sharing a token (inputs and targets: starts at least
      block_size+1 apart), starts drawn at random otherwise (disjoint_starts);
  (c) every group made of pairs, a window at s beside one at s+1 (paired_starts): a group-mate
      holds, at each position, this window's next token, its target; the largest leak there is.
Each loss ± its standard error over the batches' mean losses (the batches are independent
draws; the windows within one batch are not, their groups mixed). Also the share of (a)'s groups
with two windows sharing a token. A dense model (no groups) is the control: there the three
differ only by the draw. The model is evaluated in float32 on --device: (a) is the logged val
loss of a float32 run.
"""

import argparse
import math
import os
import sys
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # mot.py, ...
from checkpoints import load_checkpoint  # noqa: E402
from configurator import fail  # noqa: E402
from dataset import eval_batches, get_batch, load, windows  # noqa: E402
from devices import device_problem  # noqa: E402


@torch.no_grad()
def mean_loss(model, batches, mode: str, companions: torch.Tensor) -> float:
    """mode "grouped": whole batches; "alone": one sequence at a time; "companions": one sequence
    with the companions (K, T) after it, their targets -1 (ignored by the loss)."""
    losses = []
    for x, y in batches:
        if mode == "grouped":
            losses += [model(x, y)[1].item()] * len(x)
        for i in range(len(x)):
            if mode == "alone":
                losses.append(model(x[i:i + 1], y[i:i + 1])[1].item())
            if mode == "companions":
                ignored = torch.full_like(companions, -1)
                losses.append(model(torch.cat([x[i:i + 1], companions]),
                                    torch.cat([y[i:i + 1], ignored]))[1].item())
    return sum(losses) / len(losses)


def eval_starts(data: np.ndarray, c: SimpleNamespace) -> list:
    """The window starts of dataset.eval_batches, batch after batch, drawn as dataset.get_batch
    draws them (the tests check the windows are the same)."""
    generator = torch.Generator().manual_seed(c.seed + 1)
    return [s for _ in range(c.eval_iters)
            for s in torch.randint(len(data) - c.block_size, (c.batch_size,),
                                   generator=generator).tolist()]


def disjoint_starts(n: int, group_size: int, limit: int, length: int,
                    generator: torch.Generator) -> list:
    """n window starts in [0, limit) (get_batch's range), in groups of group_size within which
    no two windows of `length` tokens share one: starts at least `length` apart. Each group: a
    sorted draw u of group_size starts in a range shortened by the gaps, u[k] + k·length, in a
    random order."""
    room = limit - (group_size - 1) * length
    if room < 1:
        fail(f"the val split has room for fewer than group_size={group_size} windows of "
             f"{length} tokens that share none: evaluate on a larger val split")
    starts = []
    for _ in range(n // group_size):
        u = torch.randint(room, (group_size,), generator=generator).sort().values
        group = u + torch.arange(group_size) * length
        starts += group[torch.randperm(group_size, generator=generator)].tolist()
    return starts


def paired_starts(n: int, group_size: int, limit: int, generator: torch.Generator) -> list:
    """n window starts in [0, limit), in groups of group_size made of pairs s, s+1 (an odd
    group's last window alone; with group_size 1, no groups: every window alone)."""
    starts = []
    for _ in range(n // group_size):
        for _ in range(group_size // 2):
            s = torch.randint(limit - 1, (1,), generator=generator).item()
            starts += [s, s + 1]
        if group_size % 2:
            starts.append(torch.randint(limit, (1,), generator=generator).item())
    return starts


def overlapping_share(starts: list, group_size: int, length: int) -> float:
    """The share of the groups of `starts` with two windows of `length` tokens sharing one."""
    groups = [sorted(starts[i:i + group_size]) for i in range(0, len(starts), group_size)]
    return sum(any(b - a < length for a, b in zip(g, g[1:])) for g in groups) / len(groups)


def start_batches(data: np.ndarray, starts: list, c: SimpleNamespace):
    """The windows at `starts` in batches of batch_size, as train.py's batches: x and y."""
    for i in range(0, len(starts), c.batch_size):
        yield windows(data, starts[i:i + c.batch_size], c.block_size, c.device)


@torch.no_grad()
def loss_and_error(model, batches) -> tuple:
    """The mean of the batches' mean losses, and its standard error (NaN for one batch)."""
    losses = torch.tensor([model(x, y)[1].item() for x, y in batches], dtype=torch.float64)
    error = losses.std().item() / math.sqrt(len(losses)) if len(losses) > 1 else math.nan
    return losses.mean().item(), error


def window_losses(model, data: np.ndarray, c: SimpleNamespace, group_size: int) -> dict:
    """The val loss with the windows drawn three ways (the docstring's a, b, c), each (mean,
    standard error), and the share of (a)'s groups with overlapping windows."""
    n, limit = c.eval_iters * c.batch_size, len(data) - c.block_size
    length = c.block_size + 1  # a window's tokens: block_size inputs and the last target
    generator = torch.Generator().manual_seed(c.seed + 3)  # apart from every other draw
    disjoint = disjoint_starts(n, group_size, limit, length, generator)
    paired = paired_starts(n, group_size, limit, generator)
    return dict(overlapping=overlapping_share(eval_starts(data, c), group_size, length),
                as_trained=loss_and_error(model, eval_batches(data, c)),
                disjoint=loss_and_error(model, start_batches(data, disjoint, c)),
                paired=loss_and_error(model, start_batches(data, paired, c)))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dirs", nargs="+", help="run directories holding ckpt.pt")
    parser.add_argument("--eval_iters", type=int,
                        help="batches to evaluate (default: the run's eval_iters)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--windows", action="store_true",
                        help="the val loss with a group's windows drawn three ways (see above), "
                             "instead of the inference modes")
    parser.error = lambda message: fail(f"{message} (see --help)")
    args = parser.parse_args(argv)
    if args.eval_iters is not None and args.eval_iters < 1:
        fail(f"--eval_iters={args.eval_iters}: must be >= 1 (leave it out for the run's own)")
    problem = device_problem(args.device)
    if problem:
        fail(f"--device={args.device}: {problem}")
    for out_dir in args.out_dirs:  # before evaluating any: a typo should not wait for the others
        if not os.path.isfile(os.path.join(out_dir, "ckpt.pt")):
            fail(f"no checkpoint at {os.path.join(out_dir, 'ckpt.pt')}: give run directories "
                 f"that train.py wrote")
    header = ("| run | model (last FFN) | iter | groups of (a) with overlapping windows "
              "| (a) val loss, windows as train.py draws them "
              "| (b) no two windows of a group overlapping "
              "| (c) each window beside its one-token shift |\n" + "|---" * 7 + "|"
              if args.windows else
              "| run | model (last FFN) | iter | val loss, grouped as trained "
              "| one sequence at a time | one sequence at a time, with companions |\n"
              + "|---" * 6 + "|")
    for number, out_dir in enumerate(args.out_dirs):
        # the run's settings (config) too: its data, batches and seed are evaluated
        model, checkpoint = load_checkpoint(os.path.join(out_dir, "ckpt.pt"), args.device,
                                            needs=("config",))
        if number == 0:  # after the first checkpoint loads: a bad one is one line, no table
            print(header)
        # the run's settings as dataset.eval_batches reads them (attributes, as of a TrainConfig);
        # the optimizer's state, still on the disk, is let go with the rest
        saved, iter_num = checkpoint["config"], checkpoint["iter_num"]
        del checkpoint
        c = SimpleNamespace(**dict(saved, device=args.device,
                                   eval_iters=args.eval_iters or saved["eval_iters"]))
        splits = load(c.data_root, c.dataset, c.block_size)[0]
        group_size = max(block.ffn.group_size for block in model.transformer.h)
        ffn = model.transformer.h[-1].ffn
        row = f"| {out_dir} | {type(ffn).__name__}({ffn.extra_repr()}) | {iter_num} "
        if args.windows:
            w = window_losses(model, splits["val"], c, group_size)
            share = f"{100 * w['overlapping']:.1f}%" if group_size > 1 else "— (no groups)"
            print(row + f"| {share} " + "".join(
                f"| {mean:.4f} ± {error:.4f} "
                for mean, error in (w["as_trained"], w["disjoint"], w["paired"])) + "|")
            continue
        generator = torch.Generator().manual_seed(c.seed + 2)  # apart from train/eval batches
        companions = (get_batch(splits["train"], group_size - 1, c.block_size, generator,
                            args.device)[0] if group_size > 1
                      else torch.zeros(0, c.block_size, dtype=torch.long))  # no groups
        losses = [mean_loss(model, eval_batches(splits["val"], c), mode, companions)
                  for mode in ("grouped", "alone", "companions")]
        print(row + "".join(f"| {loss:.4f} " for loss in losses) + "|")
    if args.windows:
        print("\n± one standard error over the batches' mean losses (eval_iters batches each)")


if __name__ == "__main__":
    main()
