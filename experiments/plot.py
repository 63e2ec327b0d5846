"""
Val loss against step and against training wall-clock seconds for several runs of train.py, from
their out_dir/log.jsonl, into one PNG; and a table of how fast each run reaches the first run's
final val loss.

    python experiments/plot.py out-cpu-dense out-cpu-mot out-cpu-moe --out=results.png

The first run is the baseline. A run "reaches" the baseline's final val loss at its first
evaluation with a val loss at or below it; the speed-ups are the baseline's final step (or seconds)
divided by that run's.
"""

import argparse
import json
import os
import sys


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
                wrong = [key for key, kind in fields.items()
                         if not isinstance(record, dict) or not isinstance(record.get(key), kind)]
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
    """The evaluations train.py logged in out_dir/log.jsonl."""
    path = os.path.join(out_dir, "log.jsonl")
    if not os.path.exists(path):
        raise SystemExit(f"error: {path} not found: train a run with --out_dir={out_dir} first")
    number = (int, float)
    records = read_records(path, dict(iter=int, val_loss=number, elapsed_s=number),
                           "it should hold train.py's JSON records, one per evaluation: remove "
                           "what is not one")
    if not records:
        raise SystemExit(f"error: {path} is empty: the run has not evaluated yet; wait for its "
                         f"first evaluation")
    # an --eval_only run appends an iteration already logged: keep the last record of each
    return list({r["iter"]: r for r in records}.values())


def speedups(baseline: list, run: list) -> dict:
    target = baseline[-1]["val_loss"]
    reached = next((r for r in run if r["val_loss"] <= target), None)
    result = dict(final_val_loss=run[-1]["val_loss"], final_iter=run[-1]["iter"], reached_iter=None,
                  step_speedup=None, time_speedup=None)
    if reached is not None and reached["iter"] > 0:
        result.update(reached_iter=reached["iter"],
                      step_speedup=baseline[-1]["iter"] / reached["iter"],
                      time_speedup=baseline[-1]["elapsed_s"] / reached["elapsed_s"])
    return result


def at(log: list, key: str, limit: float) -> float:
    """The val loss of the last evaluation at or before `limit` of `key` (iter or elapsed_s)."""
    return [r for r in log if r[key] <= limit][-1]["val_loss"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dirs", nargs="+", help="run directories; the first is the baseline")
    parser.add_argument("--labels", nargs="+", help="legend labels (default: the directory names)")
    parser.add_argument("--step_offsets", type=int, nargs="+",
                        help="shift each run's steps, e.g. to draw a transition run after the "
                             "run it started from")
    parser.add_argument("--out", default="results.png")
    parser.error = lambda message: sys.exit(f"error: {message} (see --help)")
    args = parser.parse_args(argv)
    labels = args.labels or [os.path.basename(os.path.normpath(d)) for d in args.out_dirs]
    if len(labels) != len(args.out_dirs):
        raise SystemExit(f"error: {len(labels)} labels for {len(args.out_dirs)} runs")
    logs = [read_log(d) for d in args.out_dirs]
    offsets = args.step_offsets or [0] * len(logs)
    if len(offsets) != len(logs):
        raise SystemExit(f"error: {len(offsets)} step offsets for {len(logs)} runs")

    print(f"| run | final val loss | Δ vs {labels[0]} | reaches {labels[0]}'s final loss at step "
          f"| step speed-up | wall-clock speed-up |")
    print("|---|---|---|---|---|---|")
    for label, log in zip(labels, logs):
        s = speedups(logs[0], log)
        reached = "—" if s["reached_iter"] is None else f"{s['reached_iter']}"
        step = "—" if s["step_speedup"] is None else f"{s['step_speedup']:.2f}×"
        time = "—" if s["time_speedup"] is None else f"{s['time_speedup']:.2f}×"
        print(f"| {label} | {s['final_val_loss']:.4f} "
              f"| {s['final_val_loss'] - logs[0][-1]['val_loss']:+.4f} "
              f"| {reached} | {step} | {time} |")
    # runs stopped early (a time limit) end at different steps: compare them where all have been
    steps = min(log[-1]["iter"] for log in logs)
    seconds = min(log[-1]["elapsed_s"] for log in logs)
    print(f"\n| run | val loss at step {steps} | val loss after {seconds:.0f} s of training |")
    print("|---|---|---|")
    for label, log in zip(labels, logs):
        print(f"| {label} | {at(log, 'iter', steps):.4f} | {at(log, 'elapsed_s', seconds):.4f} |")

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("error: plot.py needs matplotlib for the figure: pip install matplotlib")
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, log, offset in zip(labels, logs, offsets):
        by_step.plot([r["iter"] + offset for r in log], [r["val_loss"] for r in log], label=label)
        by_time.plot([r["elapsed_s"] for r in log], [r["val_loss"] for r in log], label=label)
    tops = [log[1]["val_loss"] for log in logs if len(log) > 1]  # above the untrained loss
    for ax, xlabel in ((by_step, "step"), (by_time, "training wall-clock seconds")):
        if tops:
            ax.set_ylim(top=max(tops))
        ax.axhline(logs[0][-1]["val_loss"], color="gray", linestyle=":", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("val loss")
        ax.grid(alpha=0.3)
    by_step.legend()
    fig.tight_layout()
    try:
        fig.savefig(args.out, dpi=120)
    except (OSError, ValueError) as e:  # no such folder, not writable, an unknown extension
        raise SystemExit(f"error: cannot write --out={args.out} ({e}): give a writable .png "
                         f"path") from None
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
