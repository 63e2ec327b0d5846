"""
Pictures of what a MoT controller does:

    python experiments/visualize.py --out_dir=out-shakespeare-char-cpu [--layer=0] [--position=-1]

1. out_dir/merge_weights.png: for one group of validation sequences, at one position, the merge
   weights of one MoT layer as a heatmap: rows are the group's G tokens (labelled with the text just
   before them), columns the experts. Each column sums to 1 (the softmax is over the group).
   A column spread evenly means that expert takes the average of the group; a single bright cell
   means the expert picked one token (the τ → 0 / expert-choice regime).
2. out_dir/merge_entropy.png: the mean entropy of the merge weights, divided by log(G), of each MoT
   layer over training, from the merge_entropy field of log.jsonl (1 = plain averaging, 0 = one
   token per expert).
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # mot.py, train.py
from devices import device_problem  # noqa: E402
from mot import MixtureOfTokens  # noqa: E402
from plot import read_log  # noqa: E402
from sample import load_tokenizer  # noqa: E402
from checkpoints import load_checkpoint  # noqa: E402
from configurator import fail  # noqa: E402
from dataset import load, windows  # noqa: E402


def save(fig, path: str) -> None:
    try:
        fig.savefig(path, dpi=120)
    except OSError as e:
        fail(f"cannot write {path} ({e.strerror}): make the run's folder writable")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", required=True, help="a MoT run: ckpt.pt and log.jsonl")
    parser.add_argument("--layer", type=int, default=0,
                        help="which MoT layer, counting MoT layers from 0")
    parser.add_argument("--position", type=int, default=-1,
                        help="sequence position to show (-1: the last)")
    parser.add_argument("--label_chars", type=int, default=12,
                        help="characters of context in each row label")
    parser.add_argument("--device", default="cpu")
    parser.error = lambda message: fail(f"{message} (see --help)")
    args = parser.parse_args(argv)
    if args.label_chars < 1:
        fail(f"--label_chars={args.label_chars}: must be >= 1")
    problem = device_problem(args.device)
    if problem:
        fail(f"--device={args.device}: {problem}")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        fail("visualize.py needs matplotlib: pip install matplotlib")

    model, checkpoint = load_checkpoint(os.path.join(args.out_dir, "ckpt.pt"), args.device,
                                        needs=("config",))
    records = [r for r in read_log(args.out_dir) if r.get("merge_entropy")]
    layers = model.ffns(MixtureOfTokens)
    if not layers:
        fail(f"{args.out_dir}/ckpt.pt holds a {model.config.ffn} model: there are no merge "
             f"weights to show")
    if not -len(layers) <= args.layer < len(layers):
        fail(f"--layer={args.layer}: the model has {len(layers)} MoT layers")
    layer, c = layers[args.layer], checkpoint["config"]
    G, T = model.config.group_size, model.config.block_size
    if not -T <= args.position < T:
        fail(f"--position={args.position}: block_size is {T}")

    # one group: G windows of validation text, evenly spaced through the split
    val = load(c["data_root"], c["dataset"], T)[0]["val"]
    starts = torch.linspace(0, len(val) - T - 1, G).long().tolist()
    x = windows(val, starts, T, args.device)[0]
    with torch.no_grad():
        model(x)
    position = args.position % T
    weights = layer.merge_weights[:, position, :].float().cpu()  # (G, E)
    decode = load_tokenizer(checkpoint["meta"], os.path.join(args.out_dir, "ckpt.pt"))[1]
    labels = [repr(decode(row[max(0, position - args.label_chars + 1):position + 1].tolist()))
              for row in x.cpu()]

    fig, ax = plt.subplots(figsize=(min(16.0, max(6.0, 0.12 * weights.shape[1] + 3)),
                                    max(3.0, 0.25 * G + 1.5)))
    image = ax.imshow(weights.numpy(), aspect="auto", cmap="viridis", vmin=0.0)
    ax.set_yticks(range(G), labels, fontsize=7, family="monospace")
    ax.set_xlabel("expert")
    ax.set_ylabel("token of the group (text up to it)")
    ax.set_title(f"merge weights, MoT layer {args.layer}, position {position} (columns sum to 1)")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    save(fig, os.path.join(args.out_dir, "merge_weights.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    for i in range(len(layers)):
        ax.plot([r["iter"] for r in records], [r["merge_entropy"][i] for r in records],
                label=f"MoT layer {i}")
    ax.set_xlabel("step")
    ax.set_ylabel("merge-weight entropy / log(G)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save(fig, os.path.join(args.out_dir, "merge_entropy.png"))
    print(f"wrote {args.out_dir}/merge_weights.png and {args.out_dir}/merge_entropy.png")


if __name__ == "__main__":
    main()
