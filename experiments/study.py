"""
The CPU study of issue 9 as one resumable command: MoT settings screened, learning rates tuned,
seeded finals against dense and MoE, and a corpus that does not repeat.

    python experiments/study.py                   # every run not done yet, stage by stage
    python experiments/study.py --stage final     # one stage (the stages before it must be done)
    python experiments/study.py --only dense-s1   # the named runs
    python experiments/study.py --dry_run         # print the commands instead of running them
    python experiments/study.py --table           # markdown tables from the results, no training
    python experiments/study.py --at 400 1000     # val loss at these steps, per model, no training
    python experiments/study.py --plot            # assets/cpu_study.png, python_stdlib_study.png
    python experiments/study.py --docs            # the tables in README.md and RESULTS.md

A run is `python train.py <command> --out_dir=out-study/<name>`, one at a time (timings stay
honest on 2 cores). When it ends, one JSON line is appended to results/cpu_study.jsonl: name,
stage, command, seed, lr, max_iters, final and best losses, training seconds, the eval curve and
the machine: all that --table and --plot need. A run named in that file is not run again; an
interrupted run continues from its checkpoint (delete out-study/<name> to start it over). A name
is a function of the command, so a run that two stages need runs once: training is deterministic,
the same command gives the same losses.

Stages, each choosing its settings from the results of the stages before it, and starting only
when they are done ("best" = lowest final val loss; seed 0 in the first two):
  screening      MoT E=128 G=32 and E=32 G=8 × controller_init_std {0.02, 1/√128} × temperature
                 {1, 0.3, 0.1}; then the best two of these also with dropout 0.1, and with the
                 first half of the blocks dense (n_dense_layers=2, the paper's recipe). Each of the
                 two in its best variant: "the best two MoT".
  lr             dense, the best MoT and MoE top-1 E=8 at lr {5e-4, 1e-3, 2e-3}, min_lr = lr/10.
  final          seeds 0, 1, 2 of dense, the best two MoT, MoE top-1 E=8, and expert-choice MoE
                 E=8 (the same FLOPs; not causal: a training baseline only), each at the best lr of
                 its kind (the second MoT at the best MoT's).
  python_stdlib  seeds 0 and 1 of dense, the best MoT and MoE top-1 E=8 on Python's standard
                 library (data/python_stdlib), 6,000 steps, each at its best lr and without
                 dropout: that data does not repeat, there is no overfitting to prevent.
The last two stages go seed by seed (seed 0 of every model first): partial results stay balanced.
"""

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
from collections import Counter, namedtuple

import torch

from plot import read_log

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU_MOT = "config/train_shakespeare_char_cpu_mot.py"
CPU_MOE = "config/train_shakespeare_char_cpu_moe.py"
# The whole protocol. Relative paths are from the repository root. tests/test_study.py runs a tiny
# copy of it (a tiny model in `flags`, a few steps, small grids, temporary paths) through main().
STUDY = dict(
    config="config/train_shakespeare_char_cpu.py", steps=2000,
    stdlib_config="config/train_python_stdlib_cpu.py", stdlib_steps=6000,  # on top of config
    flags=[],  # train.py arguments put after the config files of every run, before its own
    lr=1e-3,  # the CPU recipe's learning rate, screening's
    mot_sizes=[(128, 32), (32, 8)],  # (n_experts, group_size)
    controller_init_stds=[0.02, 128 ** -0.5],  # GPT-2's init; the authors' 1/sqrt(n_embd)
    temperatures=[1.0, 0.3, 0.1],
    dropout=0.1, n_dense_layers=2,  # the two variants of the best two MoT
    lrs=[5e-4, 1e-3, 2e-3], seeds=[0, 1, 2],
    stdlib_seeds=[0, 1],  # a seed of its three models is 48 min on 2 cores: a third did not fit
    results="results/cpu_study.jsonl", runs_dir="out-study",
    plots=dict(final="assets/cpu_study.png", python_stdlib="assets/python_stdlib_study.png"),
    docs=["README.md", "RESULTS.md"],  # the documents whose tables --docs rewrites
)
STAGES = ("screening", "lr", "final", "python_stdlib")

# A model: a name, the config file put on top of the recipe's (None for dense), and train.py
# settings. Every setting the study varies is given explicitly, so that later edits of the
# config files do not change what a recorded command trains.
Model = namedtuple("Model", "name overlay flags")
DENSE = Model("dense", None, dict(dropout=0.0))
MOE = Model("moe-top1-e8", CPU_MOE, dict(dropout=0.0))
MOE_EC = Model("moe-ec-e8", CPU_MOE, dict(moe_routing="expert_choice", dropout=0.0))
LABELS = {"moe-ec-e8": "moe-ec-e8 (not causal)"}


def mot(n_experts, group_size, controller_init_std, temperature, dropout=0.0, n_dense_layers=0):
    name = f"mot-e{n_experts}-g{group_size}-init{controller_init_std:.2g}-tau{temperature:g}"
    name += f"-drop{dropout:g}" if dropout else ""
    name += f"-dense{n_dense_layers}" if n_dense_layers else ""
    return Model(name, CPU_MOT, dict(
        n_experts=n_experts, group_size=group_size, controller_init_std=controller_init_std,
        temperature=temperature, dropout=dropout, n_dense_layers=n_dense_layers))


def make_run(S: dict, stage: str, model: Model, lr: float, seed: int, stdlib=False) -> dict:
    """A run as recorded: its name and the train.py arguments that reproduce it."""
    configs = [S["config"], S["stdlib_config"]] if stdlib else [S["config"]]
    steps = S["stdlib_steps"] if stdlib else S["steps"]
    flags = dict(model.flags, learning_rate=lr, min_lr=lr / 10, max_iters=steps,
                 lr_decay_iters=steps, seed=seed)
    command = (configs + ([model.overlay] if model.overlay else []) + S["flags"]
               + [f"--{key}={value}" for key, value in flags.items()])
    name = (("stdlib-" if stdlib else "") + model.name + (f"-lr{lr:g}" if lr != S["lr"] else "")
            + f"-s{seed}")
    return dict(name=name, stage=stage, model=model.name, command=command, seed=seed, lr=lr,
                max_iters=steps)


def path(S: dict, key: str) -> str:
    return os.path.join(ROOT, S[key])  # S[key] itself when it is absolute


def read_results(S: dict) -> dict:
    """The recorded runs by name."""
    if not os.path.exists(path(S, "results")):
        return {}
    with open(path(S, "results")) as f:
        return {line["name"]: line for line in map(json.loads, f)}


def result(S: dict, results: dict, run: dict):
    """The recorded line of a run, None if it has not run."""
    line = results.get(run["name"])
    if line is not None and line["command"] != run["command"]:
        raise SystemExit(f"error: {S['results']} has a run {run['name']} made by another command "
                         f"than the study's\n  {shlex.join(line['command'])}\n  "
                         f"{shlex.join(run['command'])}\nwas the protocol changed?")
    return line


class Waiting(Exception):
    """A stage that cannot start: the stages before it are not done."""


def plan(S: dict, results: dict, stage: str) -> list:
    """The runs of a stage, chosen from the results of the stages before it."""
    for earlier in STAGES[:STAGES.index(stage)]:
        missing = [r["name"] for r in plan(S, results, earlier) if not result(S, results, r)]
        if missing:
            more = ", ..." if len(missing) > 3 else ""
            raise Waiting(f"{stage} waits for {earlier}: {len(missing)} runs to go "
                          f"({', '.join(missing[:3])}{more})")

    def loss(model, lr=S["lr"]) -> float:  # of its run at seed 0
        return results[make_run(S, stage, model, lr, 0)["name"]]["final_val_loss"]

    def variants(model):
        return [mot(**{**model.flags, key: S[key]}) for key in ("dropout", "n_dense_layers")]

    grid = [mot(E, G, std, tau) for E, G in S["mot_sizes"] for std in S["controller_init_stds"]
            for tau in S["temperatures"]]
    screened = [make_run(S, "screening", model, S["lr"], 0) for model in grid]
    if stage == "screening" and not all(result(S, results, r) for r in screened):
        return screened  # the variants come when the grid is done
    best_two = sorted(grid, key=loss)[:2]
    if stage == "screening":
        return screened + [make_run(S, stage, variant, S["lr"], 0) for model in best_two
                           for variant in variants(model)]
    best_mot, second_mot = sorted((min([model] + variants(model), key=loss) for model in best_two),
                                  key=loss)
    if stage == "lr":
        return [make_run(S, stage, model, lr, 0) for model in (DENSE, best_mot, MOE)
                for lr in S["lrs"]]

    def best_lr(model):
        return min(S["lrs"], key=lambda lr: loss(model, lr))

    if stage == "final":
        models = [(DENSE, best_lr(DENSE)), (best_mot, best_lr(best_mot)),
                  (second_mot, best_lr(best_mot)), (MOE, best_lr(MOE)), (MOE_EC, best_lr(MOE))]
        seeds = S["seeds"]
    else:  # python_stdlib
        models = [(DENSE, best_lr(DENSE)),
                  (mot(**{**best_mot.flags, "dropout": 0.0}), best_lr(best_mot)),
                  (MOE, best_lr(MOE))]
        seeds = S["stdlib_seeds"]
    return [make_run(S, stage, model, lr, seed, stdlib=stage == "python_stdlib")
            for seed in seeds for model, lr in models]


def machine() -> dict:
    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):  # Linux: platform.processor() is often empty there
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    return dict(cpu=cpu or platform.machine(), cores=os.cpu_count(),
                threads=torch.get_num_threads(), torch=torch.__version__)


def launch(args: list) -> None:
    """python train.py ARGS, from the repository root (the config paths are relative to it)."""
    code = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT).returncode
    if code:
        raise SystemExit(f"error: train.py exited with code {code}")


def execute(S: dict, run: dict) -> dict:
    """Train a run; its line for the results."""
    out_dir = os.path.join(S["runs_dir"], run["name"])
    # an interrupted run continues exactly where its last checkpoint left it
    resume = os.path.exists(os.path.join(ROOT, out_dir, "ckpt.pt"))
    args = run["command"] + [f"--out_dir={out_dir}"] + ["--init_from=resume"] * resume
    print(f"\n== {run['stage']}: {run['name']}\npython train.py {shlex.join(args)}", flush=True)
    launch(args)
    log = read_log(os.path.join(ROOT, out_dir))
    last = log[-1]
    if last["iter"] != run["max_iters"]:
        raise SystemExit(f"error: {out_dir}/log.jsonl ends at iter {last['iter']}, "
                         f"not {run['max_iters']}")
    return dict(run, final_val_loss=last["val_loss"], final_train_loss=last["train_loss"],
                best_val_loss=min(r["val_loss"] for r in log), elapsed_s=last["elapsed_s"],
                curve={key: [r[key] for r in log]
                       for key in ("iter", "train_loss", "val_loss", "elapsed_s")},
                machine=machine())


def run_stage(S: dict, results: dict, stage: str, only, dry_run: bool) -> set:
    """Run the stage's runs not done yet (only those named in `only`, if given), or print their
    commands; the names of the stage's runs."""
    while True:  # planned again after every run: the screening's variants need its grid
        runs = plan(S, results, stage)
        todo = [r for r in runs if not result(S, results, r) and (not only or r["name"] in only)]
        if dry_run:
            print(f"# {stage}: {len(todo)} of {len(runs)} runs to do")
            for r in todo:
                out_dir = os.path.join(S["runs_dir"], r["name"])
                print(f"python train.py {shlex.join(r['command'])} --out_dir={out_dir}")
        if dry_run or not todo:
            return {r["name"] for r in runs}
        line = execute(S, todo[0])
        os.makedirs(os.path.dirname(path(S, "results")), exist_ok=True)
        with open(path(S, "results"), "a") as f:
            f.write(json.dumps(line) + "\n")
        results[line["name"]] = line
        print(f"{line['name']}: final val loss {line['final_val_loss']:.4f}, train loss "
              f"{line['final_train_loss']:.4f}, {line['elapsed_s']:.0f} s")


def run_study(S: dict, stages, only, dry_run: bool) -> None:
    results, planned, waiting = read_results(S), set(), None
    try:
        for stage in stages:
            planned |= run_stage(S, results, stage, only, dry_run)
    except Waiting as e:
        waiting = str(e)
    unknown = set(only or ()) - planned
    if unknown:
        raise SystemExit(f"error: no run named {', '.join(sorted(unknown))} in the stages that can "
                         f"be planned now" + (f" ({waiting})" if waiting else ""))
    if waiting and dry_run:
        print(waiting)
    elif waiting and not only:
        raise SystemExit(f"error: {waiting}")


def by_model(S: dict, results: dict, runs: list) -> dict:
    """The recorded lines of these runs, by model, in the order of the runs."""
    lines = {}
    for run in runs:
        line = result(S, results, run)
        if line:
            lines.setdefault(run["model"], []).append(line)
    return lines


def mean_std(values: list, digits=4) -> str:
    """Mean ± sample standard deviation over seeds (the value alone for one seed)."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def delta(values: list, dense: list) -> str:
    """The difference of the means, in bold when it is larger than the spread of the seeds."""
    difference = statistics.mean(values) - statistics.mean(dense)
    spread = max(max(values) - min(values), max(dense) - min(dense))
    claimed = min(len(values), len(dense)) >= 2 and abs(difference) > spread
    return f"**{difference:+.4f}**" if claimed else f"{difference:+.4f}"


RULE = ("Δ: the model's mean minus dense's. **Bold**: a difference we claim, because it is larger "
        "than the spread of the seeds (max − min) of either model, both with 2 seeds or more; "
        "otherwise the seeds cannot tell the two apart.")


def runs_table(lines: list) -> str:
    rows = [f"| {line['name']} | {line['lr']:g} | {line['final_val_loss']:.4f} "
            f"| {line['final_train_loss']:.4f} | {line['best_val_loss']:.4f} "
            f"| {line['elapsed_s']:.0f} |" for line in lines]
    return "\n".join(["| run | lr | final val | final train | best val | seconds |",
                      "|---|---|---|---|---|---|", *rows])


def seeds_table(lines_by_model: dict) -> str:
    """Mean ± std over seeds per model; steps to reach dense's mean final val loss; Δ vs dense."""
    dense = lines_by_model.get("dense")
    target = statistics.mean(line["final_val_loss"] for line in dense) if dense else None
    reaches = f"reaches dense's {target:.4f} at step" if dense else "reaches dense at step"
    rows = [f"| model | lr | seeds | final val | final train | best val | {reaches} | seconds "
            f"| Δ val | Δ train |", "|---|---|---|---|---|---|---|---|---|---|"]
    for model, lines in lines_by_model.items():
        def values(key):
            return [line[key] for line in lines]
        steps = [next((i for i, loss in zip(line["curve"]["iter"], line["curve"]["val_loss"])
                       if loss <= target), None) for line in lines] if dense else []
        reached = [step for step in steps if step is not None]
        reach = f"{statistics.mean(reached):.0f}" if reached else "—"
        reach += f" ({len(reached)} of {len(steps)} seeds)" if 0 < len(reached) < len(steps) else ""
        deltas = ([delta(values(key), [line[key] for line in dense])
                   for key in ("final_val_loss", "final_train_loss")]
                  if dense and model != "dense" else ["—", "—"])
        rows.append(f"| {LABELS.get(model, model)} | {lines[0]['lr']:g} | {len(lines)} "
                    f"| {mean_std(values('final_val_loss'))} "
                    f"| {mean_std(values('final_train_loss'))} "
                    f"| {mean_std(values('best_val_loss'))} | {reach} "
                    f"| {mean_std(values('elapsed_s'), 0)} | {deltas[0]} | {deltas[1]} |")
    return "\n".join(rows + ["", RULE])


def curve_table(lines_by_model: dict, steps: list) -> str:
    """Val loss at these steps per model: the mean and [min–max] over seeds (evaluations are
    every eval_interval steps)."""
    rows = ["| model | " + " | ".join(f"val at {step}" for step in steps) + " |",
            "|---" * (len(steps) + 1) + "|"]
    for model, lines in lines_by_model.items():
        cells = []
        for step in steps:
            losses = [loss for line in lines
                      for i, loss in zip(line["curve"]["iter"], line["curve"]["val_loss"])
                      if i == step]
            cells.append(f"{statistics.mean(losses):.3f} [{min(losses):.3f}–{max(losses):.3f}]"
                         if losses else "—")  # a step this stage did not evaluate
        rows.append(f"| {LABELS.get(model, model)} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def tables(S: dict, results: dict, stages=STAGES, at=None) -> str:
    """Markdown: each stage's table, computed from the results, and the machines they ran on; with
    `at` (steps), the seeded stages' val loss at those steps instead."""
    parts = []
    for stage in stages:
        parts.append(f"**Stage {stage}.**")
        try:
            runs = plan(S, results, stage)
        except Waiting as e:
            parts.append(str(e))
            break
        lines_by_model = by_model(S, results, runs)
        lines = [line for lines in lines_by_model.values() for line in lines]
        parts.append(f"{len(lines)} of {len(runs)} runs done, {runs[0]['max_iters']} steps each.")
        if stage == "screening":
            parts.append(runs_table(sorted(lines, key=lambda line: line["final_val_loss"])))
        elif stage == "lr":
            parts.append(runs_table(lines))
        elif at:
            parts.append(curve_table(lines_by_model, at))
        else:
            parts.append(seeds_table(lines_by_model))
    machines = Counter("{cpu}, {cores} cores, torch {torch}, {threads} threads".format(
        **line["machine"]) for line in results.values())
    parts += [f"{count} runs on {description}." for description, count in machines.items()]
    return "\n\n".join(parts)


# In the documents of S["docs"], each block between a BEGIN line naming its stages and END is
# rewritten by --docs; a test checks that the blocks equal what the results give.
BEGIN, END = "<!-- tables by `python experiments/study.py --docs`, stages:", "<!-- end of tables -->"


def doc_blocks(text: str):
    """(start, end, stages) of each block of tables in a document's text: text[start:end] is
    the block's content."""
    position = 0
    while (begin := text.find(BEGIN, position)) >= 0:
        start = text.index("-->\n", begin) + 4
        end = text.index(END, start)
        yield start, end, text[begin + len(BEGIN):start - 4].split()
        position = end


def update_docs(S: dict, results: dict) -> None:
    for doc in S["docs"]:
        doc_path = os.path.join(ROOT, doc)  # doc itself when absolute
        with open(doc_path, encoding="utf-8") as f:
            text = f.read()
        for start, end, stages in reversed(list(doc_blocks(text))):  # later blocks first
            text = text[:start] + tables(S, results, stages) + "\n" + text[end:]
        with open(doc_path, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"updated the tables of {doc}")


def plot(S: dict, results: dict) -> None:
    """Val and train loss against step, per model a band (min to max over seeds) and the mean."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("error: --plot needs matplotlib: pip install matplotlib")
    for stage, out in S["plots"].items():
        try:
            lines_by_model = by_model(S, results, plan(S, results, stage))
        except Waiting as e:
            print(f"{out} not written: {e}")
            continue
        if not lines_by_model:
            print(f"{out} not written: no {stage} run is done yet")
            continue
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for ax, key in zip(axes, ("val_loss", "train_loss")):
            tops = []
            for model, lines in lines_by_model.items():
                steps = lines[0]["curve"]["iter"]
                per_step = list(zip(*(line["curve"][key] for line in lines)))  # seeds at a step
                mean = [statistics.mean(seeds) for seeds in per_step]
                drawn, = ax.plot(steps, mean, label=f"{LABELS.get(model, model)} "
                                                    f"({len(lines)} seeds)")
                ax.fill_between(steps, [min(s) for s in per_step], [max(s) for s in per_step],
                                color=drawn.get_color(), alpha=0.2, linewidth=0)
                tops.append(mean[len(mean) // 5])
            ax.set_ylim(top=max(tops))  # from a fifth of the run on: the steep start hides the rest
            ax.set_xlabel("step")
            ax.set_ylabel(key.replace("_", " "))
            ax.set_title(f"{stage}: {key.replace('_', ' ')}, mean and min–max over seeds")
            ax.grid(alpha=0.3)
        axes[0].legend()
        fig.tight_layout()
        os.makedirs(os.path.dirname(os.path.join(ROOT, out)), exist_ok=True)
        fig.savefig(os.path.join(ROOT, out), dpi=120)
        plt.close(fig)
        print(f"wrote {out}")


def main(argv=None, S=STUDY) -> None:
    """S: the protocol (the tests pass a tiny one)."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--stage", choices=STAGES, help="run this stage only")
    which.add_argument("--only", nargs="+", metavar="NAME", help="run only these runs")
    parser.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--table", action="store_true", help="print the tables, run nothing")
    parser.add_argument("--at", nargs="+", type=int, metavar="STEP",
                        help="print the val loss of the seeded stages at these steps, run nothing")
    parser.add_argument("--plot", action="store_true", help="write the plots, run nothing")
    parser.add_argument("--docs", action="store_true",
                        help="rewrite the tables in README.md and RESULTS.md, run nothing")
    args = parser.parse_args(argv)
    if args.table or args.at or args.plot or args.docs:
        results = read_results(S)
        if args.table:
            print(tables(S, results))
        if args.at:
            print(tables(S, results, ("final", "python_stdlib"), at=args.at))
        if args.plot:
            plot(S, results)
        if args.docs:
            update_docs(S, results)
        return
    run_study(S, [args.stage] if args.stage else STAGES, args.only, args.dry_run)


if __name__ == "__main__":
    main()
