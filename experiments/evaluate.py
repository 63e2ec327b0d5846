"""
Val loss of trained checkpoints under inference modes:

    python experiments/evaluate.py out-mot out-mot-discrete out-mot-token-choice [--eval_iters=20]

For each run directory: "grouped" evaluates batches as in training (a MoT model mixes the batch's
examples in groups of group_size), "one at a time" feeds each sequence alone (MoT pads it to a
group with zero rows). The batches are those of train.py's evaluations (same seed), so "grouped"
reproduces the val_loss that train.py logged for the checkpoint.
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # mot.py, train.py
from train import eval_batches, fail, load_checkpoint, load_data  # noqa: E402


@torch.no_grad()
def mean_loss(model, batches, one_at_a_time: bool) -> float:
    losses = []
    for x, y in batches:
        if one_at_a_time:
            losses += [model(x[i:i + 1], y[i:i + 1])[1].item() for i in range(len(x))]
        else:
            losses += [model(x, y)[1].item()] * len(x)
    return sum(losses) / len(losses)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dirs", nargs="+", help="run directories holding ckpt.pt")
    parser.add_argument("--eval_iters", type=int,
                        help="batches to evaluate (default: the run's eval_iters)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    print("| run | model (last FFN) | iter | val loss, grouped as trained "
          "| val loss, one sequence at a time |")
    print("|---|---|---|---|---|")
    for out_dir in args.out_dirs:
        model, checkpoint = load_checkpoint(os.path.join(out_dir, "ckpt.pt"), args.device)
        c = dict(checkpoint["config"], device=args.device,
                 eval_iters=args.eval_iters or checkpoint["config"]["eval_iters"])
        if not c["eval_iters"] > 0:
            fail("--eval_iters must be positive")
        val = load_data(c["data_root"], c["dataset"], c["block_size"])[0]["val"]
        grouped = mean_loss(model, eval_batches(val, c), one_at_a_time=False)
        alone = mean_loss(model, eval_batches(val, c), one_at_a_time=True)
        ffn = model.transformer.h[-1].ffn
        print(f"| {out_dir} | {type(ffn).__name__}({ffn.extra_repr()}) | {checkpoint['iter_num']} "
              f"| {grouped:.4f} | {alone:.4f} |")


if __name__ == "__main__":
    main()
