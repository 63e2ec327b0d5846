"""
Val loss of several runs of train.py, from their out_dir/log.jsonl, against a measure of cost
(--x) and against training wall-clock seconds, into one PNG; and a table of how fast each run
reaches the first run's final val loss.

    python experiments/plot.py out-cpu-dense out-cpu-mot out-cpu-moe --out=results.png
    python experiments/plot.py out-dense out-mot --x=flops --out=by_flops.png

--x: steps (the default), flops or seconds, the x axis of the left panel (the right one is always
seconds; --x=seconds draws that panel alone).
- steps: optimizer steps (log.jsonl's iter).
- flops: training FLOPs, the whole model's forward+backward FLOPs per token (mot.GPT's
  flops_per_token: active parameters, MoT's mixing and attention; built from ckpt.pt's
  model_args) × the tokens read (iter × gradient_accumulation_steps × batch_size × block_size,
  ckpt.pt's config). Models that spend equal FLOPs in their experts differ here by what they
  spend elsewhere (MoT's controller, merge and emit).
- seconds: log.jsonl's elapsed_s, the seconds of the training steps (no evaluations).

The first run is the baseline. A run "reaches" the baseline's final val loss at its first
evaluation with a val loss at or below it; the speed-ups are the baseline's final step (seconds,
FLOPs) divided by that run's. A run that diverged has a line with "val_loss": null (train.py
writes it, then stops): that evaluation is left out, with a note.
"""

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the x axes: log.jsonl's key (flops: added by read_flops), and the axis label
AXES = dict(steps=("iter", "step"),
            flops=("flops", "training FLOPs (whole model, forward+backward)"),
            seconds=("elapsed_s", "training wall-clock seconds"))


def read_records(path: str, fields: dict, fix: str) -> list:
    """The lines of a JSON-lines file, each an object with `fields` (name: type); a file that
    cannot be read, or a line that is not such a record, is one line naming it and `fix` (what
    the file should hold, and what to do)."""
    records = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                try:
                    record = json.loads(line)
                except ValueError:
                    problem = "a blank line" if not line.strip() else "not JSON"
                    raise SystemExit(f"error: {path}, line {number}: {problem}; {fix}") from None
                wrong = [key for key, kind in fields.items() if not isinstance(record, dict)
                         or key not in record or not isinstance(record[key], kind)]
                if wrong:
                    raise SystemExit(f"error: {path}, line {number}: not a record with "
                                     f"{', '.join(wrong)}; {fix}")
                records.append(record)
    except UnicodeDecodeError:
        raise SystemExit(f"error: {path} is not UTF-8 text; {fix}") from None
    except OSError as e:
        raise SystemExit(f"error: cannot read {path} ({e.strerror}); {fix}") from None
    return records


def read_log(out_dir: str) -> list:
    """The evaluations train.py logged in out_dir/log.jsonl, those with a val loss: a diverged
    run's last line has "val_loss": null (strict JSON for NaN), left out with a note."""
    path = os.path.join(out_dir, "log.jsonl")
    if not os.path.exists(path):
        raise SystemExit(f"error: {path} not found: train a run with --out_dir={out_dir} first")
    number = (int, float)
    records = read_records(path, dict(iter=int, val_loss=number + (type(None),),
                                      elapsed_s=number),
                           "it should hold train.py's JSON records, one per evaluation: remove "
                           "what is not one")
    if not records:
        raise SystemExit(f"error: {path} is empty: the run has not evaluated yet; wait for its "
                         f"first evaluation")
    # an --eval_only run appends an iteration already logged: keep the last record of each
    records = list({r["iter"]: r for r in records}.values())
    diverged = [r["iter"] for r in records if r["val_loss"] is None]
    if diverged:
        print(f"note: {path}: val_loss null (the run diverged) at iter "
              f"{', '.join(map(str, diverged))}: left out", file=sys.stderr)
    records = [r for r in records if r["val_loss"] is not None]
    if not records:
        raise SystemExit(f"error: {path} has no finite val loss: the run diverged at its first "
                         f"evaluation; train it again with a lower learning_rate")
    return records


def read_flops(out_dir: str, log: list) -> None:
    """Adds to each record of the run's log its training FLOPs so far (see the docstring), from
    out_dir/ckpt.pt: the model built from its model_args without weights (on the meta device), the
    batch from its config (settings a resume cannot change)."""
    import torch
    sys.path.insert(0, ROOT)
    from mot import GPT, GPTConfig
    path = os.path.join(out_dir, "ckpt.pt")
    if not os.path.isfile(path):
        raise SystemExit(f"error: {path} not found: --x=flops builds the model from the run's "
                         f"checkpoint; give run directories that train.py saved one in, or use "
                         f"--x=steps")
    try:  # memory-mapped: only model_args and config are read, not the weights
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        c = checkpoint["config"]
        with torch.device("meta"):
            model = GPT(GPTConfig(**checkpoint["model_args"]))
        tokens_per_iter = c["gradient_accumulation_steps"] * c["batch_size"] * c["block_size"]
    except Exception as e:  # a damaged file can fail anywhere inside the unpickler
        why = (str(e).splitlines() or [""])[0]
        raise SystemExit(f"error: cannot read the model and batch of {path} ({type(e).__name__}: "
                         f"{why}): give a checkpoint that this train.py wrote, or use "
                         f"--x=steps") from None
    flops_per_token = model.flops_per_token(c["block_size"])
    for r in log:
        r["flops"] = flops_per_token * tokens_per_iter * r["iter"]


def speedups(baseline: list, run: list) -> dict:
    target = baseline[-1]["val_loss"]
    reached = next((r for r in run if r["val_loss"] <= target), None)
    result = dict(final_val_loss=run[-1]["val_loss"], final_iter=run[-1]["iter"], reached_iter=None,
                  step_speedup=None, time_speedup=None, flops_speedup=None)
    if reached is not None and reached["iter"] > 0:
        result.update(reached_iter=reached["iter"],
                      step_speedup=baseline[-1]["iter"] / reached["iter"],
                      time_speedup=baseline[-1]["elapsed_s"] / reached["elapsed_s"])
        if "flops" in reached:
            result["flops_speedup"] = baseline[-1]["flops"] / reached["flops"]
    return result


def at(log: list, key: str, limit: float) -> float:
    """The val loss of the last evaluation at or before `limit` of `key` (iter, elapsed_s,
    flops)."""
    return [r for r in log if r[key] <= limit][-1]["val_loss"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dirs", nargs="+", help="run directories; the first is the baseline")
    parser.add_argument("--labels", nargs="+", help="legend labels (default: the directory names)")
    parser.add_argument("--x", choices=list(AXES), default="steps",
                        help="the left panel's x axis (default steps; see above)")
    parser.add_argument("--step_offsets", type=int, nargs="+",
                        help="shift each run's steps (--x=steps), e.g. to draw a transition run "
                             "after the run it started from")
    parser.add_argument("--out", default="results.png")
    parser.error = lambda message: sys.exit(f"error: {message} (see --help)")
    args = parser.parse_args(argv)
    labels = args.labels or [os.path.basename(os.path.normpath(d)) for d in args.out_dirs]
    if len(labels) != len(args.out_dirs):
        raise SystemExit(f"error: {len(labels)} labels for {len(args.out_dirs)} runs")
    if args.step_offsets and args.x != "steps":
        # a transition run's FLOPs and seconds before it started are another model's
        raise SystemExit(f"error: --step_offsets shift steps only: leave them out with "
                         f"--x={args.x}, or use --x=steps")
    logs = [read_log(d) for d in args.out_dirs]
    offsets = args.step_offsets or [0] * len(logs)
    if len(offsets) != len(logs):
        raise SystemExit(f"error: {len(offsets)} step offsets for {len(logs)} runs")
    if args.x == "flops":
        for out_dir, log in zip(args.out_dirs, logs):
            read_flops(out_dir, log)

    flops = args.x == "flops"
    print(f"| run | final val loss | Δ vs {labels[0]} | reaches {labels[0]}'s final loss at step "
          f"| step speed-up | wall-clock speed-up |" + (" FLOP speed-up |" if flops else ""))
    print("|---|---|---|---|---|---|" + ("---|" if flops else ""))
    for label, log in zip(labels, logs):
        s = speedups(logs[0], log)
        reached = "—" if s["reached_iter"] is None else f"{s['reached_iter']}"
        step = "—" if s["step_speedup"] is None else f"{s['step_speedup']:.2f}×"
        time = "—" if s["time_speedup"] is None else f"{s['time_speedup']:.2f}×"
        flop = "—" if s["flops_speedup"] is None else f"{s['flops_speedup']:.2f}×"
        print(f"| {label} | {s['final_val_loss']:.4f} "
              f"| {s['final_val_loss'] - logs[0][-1]['val_loss']:+.4f} "
              f"| {reached} | {step} | {time} |" + (f" {flop} |" if flops else ""))
    # runs stopped early (a time limit) end at different steps: compare them where all have been
    steps = min(log[-1]["iter"] for log in logs)
    seconds = min(log[-1]["elapsed_s"] for log in logs)
    most = min(log[-1]["flops"] for log in logs) if flops else None
    print(f"\n| run | val loss at step {steps} | val loss after {seconds:.0f} s of training |"
          + (f" val loss after {most:.3g} training FLOPs |" if flops else ""))
    print("|---|---|---|" + ("---|" if flops else ""))
    for label, log in zip(labels, logs):
        print(f"| {label} | {at(log, 'iter', steps):.4f} | {at(log, 'elapsed_s', seconds):.4f} |"
              + (f" {at(log, 'flops', most):.4f} |" if flops else ""))

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("error: plot.py needs matplotlib for the figure: pip install matplotlib")
    axes = [args.x] + (["seconds"] if args.x != "seconds" else [])
    fig, panels = plt.subplots(1, len(axes), figsize=(6 * len(axes), 4.5), squeeze=False)
    tops = [log[1]["val_loss"] for log in logs if len(log) > 1]  # above the untrained loss
    for ax, x in zip(panels[0], axes):
        key, xlabel = AXES[x]
        for label, log, offset in zip(labels, logs, offsets):
            shift = offset if x == "steps" else 0
            ax.plot([r[key] + shift for r in log], [r["val_loss"] for r in log], label=label)
        if tops:
            ax.set_ylim(top=max(tops))
        ax.axhline(logs[0][-1]["val_loss"], color="gray", linestyle=":", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("val loss")
        ax.grid(alpha=0.3)
    panels[0][0].legend()
    fig.tight_layout()
    try:
        fig.savefig(args.out, dpi=120)
    except (OSError, ValueError) as e:  # no such folder, not writable, an unknown extension
        raise SystemExit(f"error: cannot write --out={args.out} ({e}): give a writable .png "
                         f"path") from None
    print(f"wrote {args.out}")

if __name__ == "__main__":
    main()
