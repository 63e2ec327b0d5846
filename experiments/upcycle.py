"""
Issue 20's upcycling experiment as one resumable command: the CPU recipe's dense model after its
2,000 steps, continued for 1,000 more (a fresh warm-up and cosine schedule, a fresh optimizer) as
dense, as upcycled MoT (the recipe's E=128 G=32, slices of the dense FFN; and E=32 G=32 with
copies, H = 4C) and as upcycled top-1 MoE E=8; and MoT and MoE trained from scratch for the same
3,000 steps as a reference. Two seeds each.

    python experiments/upcycle.py              # every run not done yet, one at a time
    python experiments/upcycle.py --dry_run    # print the commands instead of running them
    python experiments/upcycle.py --table      # the markdown table from the results, no training
    python experiments/upcycle.py --step0 DIR  # how far each upcycled layer starts from DIR's FFN

A run is `python train.py <command> --out_dir=out-upcycle/<name>` (study.py's execute: an
interrupted run continues from its checkpoint). When it ends, one JSON line is appended to
results/upcycle.jsonl with its name, command, seed, eval curve, machine and the git commit; a
run named there is not run again. The table reports the val loss at the switch, 100 steps after
it and at the end.
"""

import argparse
import json
import os
import shlex
import sys

import numpy as np
import torch

from study import ROOT, execute, mean_std, path, read_results

sys.path.insert(0, ROOT)
import convert  # noqa: E402
from configurator import fail  # noqa: E402
import dataset  # noqa: E402

EXPERIMENT = dict(
    config="config/train_shakespeare_char_cpu.py", steps=2000, more=1000, seeds=[0, 1],
    flags=[],  # train.py arguments after the config files of every run (the test: a tiny model)
    after=100,  # the table's middle column: val loss this many steps after the switch
    mot=dict(n_experts=128, group_size=32, temperature=0.3),  # the CPU recipe's MoT
    moe=dict(n_experts=8, moe_top_k=1),
    results="results/upcycle.jsonl", runs_dir="out-upcycle",
)


def targets(S: dict) -> list:
    """(name, --upcycle or None, the new layers' settings) of each continuation; dense continues
    as it is. MoT: the recipe's (slices of the dense FFN), and E = G (copies, H = 4C)."""
    mot, moe = S["mot"], S["moe"]
    E, G = mot["n_experts"], mot["group_size"]
    return [("dense", None, {}), (f"mot-e{E}-g{G}", "mot", mot),
            (f"mot-e{G}-g{G}-copies", "mot", dict(mot, n_experts=G)),
            (f"moe-top{moe['moe_top_k']}-e{moe['n_experts']}", "moe", moe)]


def flags(settings: dict) -> list:
    return [f"--{key}={value}" for key, value in settings.items()]


def runs(S: dict) -> list:
    """Every run, seed by seed, each source before the runs started from it."""
    out = []
    for seed in S["seeds"]:
        base = [S["config"]] + S["flags"] + [f"--seed={seed}"]
        total = S["steps"] + S["more"]
        source = dict(name=f"dense-s{seed}", stage="source", seed=seed, max_iters=S["steps"],
                      command=base + [f"--max_iters={S['steps']}",
                                      f"--lr_decay_iters={S['steps']}"])
        out.append(source)
        source_dir = os.path.join(S["runs_dir"], source["name"])  # from the root, as train.py
        for name, upcycle, settings in targets(S):
            out.append(dict(name=f"{name}-from-dense-s{seed}", stage="upcycled", seed=seed,
                            max_iters=S["more"], command=base + [
                                f"--init_from={source_dir}", f"--max_iters={S['more']}",
                                f"--lr_decay_iters={S['more']}"]
                            + ([f"--upcycle={upcycle}"] if upcycle else []) + flags(settings)))
        for name, upcycle, settings in targets(S)[1:4:2]:  # the recipe's MoT, the MoE
            settings = dict(settings, ffn=upcycle)
            out.append(dict(name=f"{name}-scratch-s{seed}", stage="scratch", seed=seed,
                            max_iters=total, command=base + [f"--max_iters={total}",
                                                             f"--lr_decay_iters={total}"]
                            + flags(settings)))
    return out


def run_all(S: dict, dry_run: bool) -> None:
    results = read_results(S)
    for run in runs(S):
        if run["name"] in results:
            continue
        if dry_run:
            out_dir = os.path.join(S["runs_dir"], run["name"])
            print(f"python train.py {shlex.join(run['command'])} --out_dir={out_dir}")
            continue
        line = execute(S, run)  # with the commit it ran at
        os.makedirs(os.path.dirname(path(S, "results")), exist_ok=True)
        with open(path(S, "results"), "a") as f:
            f.write(json.dumps(line) + "\n")
        results[line["name"]] = line


def val_at(line: dict, step: int) -> float:
    curve = line["curve"]
    return curve["val_loss"][curve["iter"].index(step)]


def table(S: dict) -> str:
    """Val loss at the switch, S["after"] steps after it and at the end: mean ± std over seeds."""
    results = read_results(S)
    rows = ["| model | at the switch | +{} steps | end | seeds |".format(S["after"]),
            "|---|---|---|---|---|"]
    groups = {}
    for run in runs(S):
        if run["name"] in results and run["stage"] != "source":
            groups.setdefault(run["name"].rsplit("-s", 1)[0], []).append(
                (run, results[run["name"]]))
    for name, done in groups.items():
        offset = S["steps"] if done[0][0]["stage"] == "scratch" else 0
        values = [[val_at(line, offset + step) for _, line in done]
                  for step in (0, S["after"], S["more"])]
        rows.append(f"| {name} | " + " | ".join(mean_std(v) for v in values)
                    + f" | {len(done)} |")
    return "\n".join(rows)


def step0(S: dict, directory: str, batches: int = 4) -> None:
    """For each upcycled target: each layer's relative distance ‖upcycled − dense‖/‖dense‖ on
    the dense model's own inputs to that layer, and the whole model's val loss, at step 0."""
    try:
        dense, checkpoint = convert.from_checkpoint(os.path.join(directory, "ckpt.pt"),
                                                    needs=("config",))
    except ValueError as e:
        fail(f"--step0 {directory}: {e}")
    cfg = checkpoint["config"]
    T, B = cfg["block_size"], cfg["batch_size"] * batches
    val = os.path.join(cfg["data_root"], cfg["dataset"], "val.bin")
    size = os.path.getsize(val) if os.path.isfile(val) else None
    problem = ("not found" if size is None else "not whole uint16 tokens" if size % 2
               else f"fewer than block_size+1={T + 1} tokens" if size // 2 <= T else None)
    if problem:
        raise SystemExit(f"error: {val}: {problem}: run `python data/{cfg['dataset']}/prepare.py`")
    data = np.memmap(val, dtype=np.uint16, mode="r")
    x, y = dataset.get_batch(data, B, T, torch.Generator().manual_seed(0))
    if int(y.max()) >= dense.config.vocab_size:
        raise SystemExit(f"error: {val} holds token id {int(y.max())}, beyond the model's "
                         f"vocab_size={dense.config.vocab_size}: run "
                         f"`python data/{cfg['dataset']}/prepare.py` again")
    inputs = []
    hooks = [b.ffn.register_forward_hook(lambda m, a, o: inputs.append(a[0]))
             for b in dense.transformer.h]
    with torch.no_grad():
        print(f"dense: val loss {dense(x, y)[1].item():.4f}")
        for hook in hooks:
            hook.remove()
        for name, upcycle, settings in targets(S)[1:]:
            torch.manual_seed(0)
            try:
                model = convert.upcycle(dense, upcycle, **settings)
            except ValueError as e:  # not a dense model, or settings that do not fit it
                raise SystemExit(f"error: --step0 {directory}: {e}") from None
            distances = [((b.ffn(i) - d.ffn(i)).norm() / d.ffn(i).norm()).item()
                         for b, d, i in zip(model.transformer.h, dense.transformer.h, inputs)]
            loss = model(x, y)[1].item()
            print(f"{name}: relative distance per layer "
                  f"{', '.join(f'{v:.3f}' for v in distances)}; val loss {loss:.4f}")


def main(argv=None, S=EXPERIMENT) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--table", action="store_true", help="print the table, run nothing")
    parser.add_argument("--step0", metavar="DIR", help="the step-0 distances from DIR's model")
    parser.error = lambda message: sys.exit(f"error: {message} (see --help)")
    args = parser.parse_args(argv)
    if args.table:
        print(table(S))
    elif args.step0:
        step0(S, args.step0)
    else:
        run_all(S, args.dry_run)


if __name__ == "__main__":
    main()
