"""
Val loss of trained checkpoints under inference modes:

    python experiments/evaluate.py out-mot out-mot-discrete out-mot-token-choice [--eval_iters=20]

For each run directory: "grouped" evaluates batches as in training (a MoT model mixes the batch's
examples in groups of group_size), "one at a time" feeds each sequence alone (MoT pads it to a
group with zero rows), "with companions" feeds each sequence with group_size − 1 windows of
training text that fill its group (their own loss is not counted). The batches are those of
train.py's evaluations (same seed), so "grouped" reproduces the val_loss that train.py logged.
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # mot.py, train.py
from bookkeeping import load_checkpoint  # noqa: E402
from configurator import fail  # noqa: E402
from dataset import get_batch, load  # noqa: E402
from devices import device_problem  # noqa: E402
from train import eval_batches  # noqa: E402


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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dirs", nargs="+", help="run directories holding ckpt.pt")
    parser.add_argument("--eval_iters", type=int,
                        help="batches to evaluate (default: the run's eval_iters)")
    parser.add_argument("--device", default="cpu")
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
    print("| run | model (last FFN) | iter | val loss, grouped as trained "
          "| one sequence at a time | one sequence at a time, with companions |")
    print("|---|---|---|---|---|---|")
    for out_dir in args.out_dirs:
        model, checkpoint = load_checkpoint(os.path.join(out_dir, "ckpt.pt"), args.device)
        c = dict(checkpoint["config"], device=args.device,
                 eval_iters=args.eval_iters or checkpoint["config"]["eval_iters"])
        splits = load(c["data_root"], c["dataset"], c["block_size"])[0]
        group_size = max(block.ffn.group_size for block in model.transformer.h)
        generator = torch.Generator().manual_seed(c["seed"] + 2)  # apart from train/eval batches
        companions = (get_batch(splits["train"], group_size - 1, c["block_size"], generator,
                            args.device)[0] if group_size > 1
                      else torch.zeros(0, c["block_size"], dtype=torch.long))  # no groups
        losses = [mean_loss(model, eval_batches(splits["val"], c), mode, companions)
                  for mode in ("grouped", "alone", "companions")]
        ffn = model.transformer.h[-1].ffn
        print(f"| {out_dir} | {type(ffn).__name__}({ffn.extra_repr()}) | {checkpoint['iter_num']} "
              + "".join(f"| {loss:.4f} " for loss in losses) + "|")


if __name__ == "__main__":
    main()
