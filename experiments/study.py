"""
The CPU study as one resumable command: MoT settings screened, learning rates tuned, seeded
finals against dense and MoE, a corpus that does not repeat, and the regime (tokens per parameter)
in which MoT pays.

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
                 E=8 (the same expert FLOPs; not causal: a training baseline only), each at the
                 best lr of its kind (the second MoT at the best MoT's).
  python_stdlib  seeds 0 and 1 of dense, the best MoT and MoE top-1 E=8 on Python's standard
                 library (data/python_stdlib), 6,000 steps, each at its best lr and without
                 dropout: that data does not repeat, there is no overfitting to prevent.
  regime_lr      a tiny model (2 layers, 64 wide) on the Python corpus, 10,000 steps: dense, MoT
                 E=64 G=16 τ 0.3 and MoE top-1 E=8 at lr {1e-3, 2e-3, 4e-3}.
  regime_seeds   seeds 0, 1, 2 of the three at their best lr.
  regime_knobs   the tiny MoT with one setting changed (E/G, G, τ, τ annealed, controller init,
                 the first block dense, half and twice its lr), seed 0; then seeds 1 and 2 of every
                 knob that closes at least half of the tiny MoT's gap to MoE.
  regime_lengths the three tiny models at 2,500 and 40,000 steps, seeds 0 and 1.
  regime_long    the recipe's model (4 layers, 128 wide) at 24,000 steps, seed 0.
  regime_baselines  the paper's baselines against the tiny model's 10,000 steps, each at its best
                 lr of {1e-3, 2e-3, 4e-3} (seed 0), then seeds 1 and 2 at it: token choice top-1
                 E=8 with capacity factor 1.25 (tokens dropped: not causal), expert choice E=8
                 (not causal), fine-grained dropless token choice E=32 top-4 and E=64 top-8, and
                 MoT E=256 G=16 (16 mixtures per expert).
  equal_flops    the tiny dense given the tiny MoT's whole-model training FLOPs where MoT leads
                 (10,000 steps, 3 seeds; 40,000, 2 seeds): max_iters, lr_decay_iters and warm-up
                 times MoT's FLOPs per token over dense's (max_iters rounded to an evaluation),
                 at dense's best lr. Expert FLOPs are matched everywhere else; the mixing
                 (controller, merge, emit) comes on top of them.
The final and python_stdlib stages go seed by seed (seed 0 of every model first): partial results
stay balanced.
"""

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter, namedtuple

import torch

from plot import read_log, read_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import checkpoints  # noqa: E402
import configurator  # noqa: E402
import dataset  # noqa: E402
import train  # noqa: E402
from mot import GPT, GPTConfig  # noqa: E402

SHARED = 0.9  # a run whose threads had less of the CPU than this ran beside other work
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
    # the regime stages: many more tokens per parameter (a tiny model) on the Python corpus
    sizes=dict(tiny=["--n_layer=2", "--n_head=2", "--n_embd=64"]),  # train.py flags of a size
    regime_steps=10000, regime_lrs=[1e-3, 2e-3, 4e-3], regime_seeds=[0, 1, 2],
    regime_mot=dict(n_experts=64, group_size=16, controller_init_std=64 ** -0.5,
                    temperature=0.3),  # the tiny MoT that the knobs vary one setting of
    regime_knobs=[dict(n_experts=32), dict(n_experts=128),  # E/G = 2, 8 at G = 16
                  dict(n_experts=32, group_size=8), dict(n_experts=128, group_size=32),  # E/G = 4
                  dict(temperature=1.0), dict(temperature=1.0, temperature_final=0.1),
                  dict(controller_init_std=0.02), dict(n_dense_layers=1)],
    regime_lr_factors=[0.5, 2.0],  # the MoT knob runs at these multiples of its best lr too
    regime_lengths=[2500, 40000], regime_length_seeds=[0, 1],  # the tiny model, other lengths
    regime_long_steps=24000,  # the CPU recipe's model, one seed
    # the paper's baselines, as settings on top of the tiny MoE (the four MoE) and MoT (the last)
    regime_baselines=[dict(capacity_factor=1.25), dict(moe_routing="expert_choice"),
                      dict(n_experts=32, moe_top_k=4), dict(n_experts=64, moe_top_k=8)],
    regime_baseline_mot=dict(n_experts=256),
    regime_baseline_knob=dict(n_experts=128),  # the seeded MoT knob the baselines table shows
    regime_evals=25,  # evaluations in a regime run: eval_interval = max_iters / regime_evals
    # the regime rows where MoT leads dense, (steps, seeds): dense again at MoT's training FLOPs
    equal_flops=[(10000, [0, 1, 2]), (40000, [0, 1])],
    results="results/cpu_study.jsonl", runs_dir="out-study",
    timings="results/cpu_timing.jsonl",  # --retime's: runs trained again with the CPU to itself
    plots=dict(final="assets/cpu_study.png", python_stdlib="assets/python_stdlib_study.png"),
    regime_plot="assets/regime.png",
    docs=["README.md", "RESULTS.md"],  # the documents whose tables --docs rewrites
)
STAGES = ("screening", "lr", "final", "python_stdlib", "regime_lr", "regime_seeds",
          "regime_knobs", "regime_lengths", "regime_long", "regime_baselines", "equal_flops")

# A model: a name, the config file put on top of the recipe's (None for dense), and train.py
# settings. Every setting the study varies is given explicitly, so that later edits of the
# config files do not change what a recorded command trains.
Model = namedtuple("Model", "name overlay flags")
DENSE = Model("dense", None, dict(dropout=0.0))


def moe(n_experts=8, moe_top_k=1, moe_routing="token_choice", capacity_factor=None):
    """The MoE on top of CPU_MOE: token choice dropless unless a capacity factor is given."""
    expert_choice = moe_routing == "expert_choice"
    name = f"moe-ec-e{n_experts}" if expert_choice else f"moe-top{moe_top_k}-e{n_experts}"
    name += f"-cf{capacity_factor:g}" if capacity_factor else ""
    # only the settings that differ from CPU_MOE's: the commands recorded before these existed
    flags = dict(n_experts=n_experts, moe_top_k=moe_top_k, moe_routing=moe_routing,
                 capacity_factor=capacity_factor)
    defaults = dict(n_experts=8, moe_top_k=1, moe_routing="token_choice", capacity_factor=None)
    return Model(name, CPU_MOE, {**{key: value for key, value in flags.items()
                                    if value != defaults[key]}, "dropout": 0.0})


MOE = moe()
MOE_EC = moe(moe_routing="expert_choice")


def causal(model_name: str) -> bool:
    """Expert choice and a capacity make a token's output depend on later positions."""
    return not ("-ec-" in model_name or "-cf" in model_name)


def label(model_name: str) -> str:
    return model_name + ("" if causal(model_name) else " (not causal)")


def mot(n_experts, group_size, controller_init_std, temperature, dropout=0.0, n_dense_layers=0,
        temperature_final=None):
    name = f"mot-e{n_experts}-g{group_size}-init{controller_init_std:.2g}-tau{temperature:g}"
    name += f"-to{temperature_final:g}" if temperature_final else ""
    name += f"-drop{dropout:g}" if dropout else ""
    name += f"-dense{n_dense_layers}" if n_dense_layers else ""
    return Model(name, CPU_MOT, dict(
        n_experts=n_experts, group_size=group_size, controller_init_std=controller_init_std,
        temperature=temperature, dropout=dropout, n_dense_layers=n_dense_layers,
        **(dict(temperature_final=temperature_final) if temperature_final else {})))


def make_run(S: dict, stage: str, model: Model, lr: float, seed: int, stdlib=False, size=None,
             steps=None) -> dict:
    """A run as recorded: its name and the train.py arguments that reproduce it. size: a key of
    S["sizes"] (None: the recipe's model); steps: None for the corpus' usual length."""
    configs = [S["config"], S["stdlib_config"]] if stdlib else [S["config"]]
    usual_steps = S["stdlib_steps"] if stdlib else S["steps"]
    steps = steps or usual_steps
    flags = dict(model.flags, learning_rate=lr, min_lr=lr / 10, max_iters=steps,
                 lr_decay_iters=steps, seed=seed)
    if size or steps != usual_steps:  # the regime's runs: a fixed number of evaluations
        flags.setdefault("eval_interval", max(1, steps // S["regime_evals"]))
    command = (configs + ([model.overlay] if model.overlay else []) + S["sizes"].get(size, [])
               + S["flags"] + [f"--{key}={value}" for key, value in flags.items()])
    name = (("stdlib-" if stdlib else "") + (f"{size}-" if size else "") + model.name
            + (f"-lr{lr:g}" if lr != S["lr"] else "")
            + (f"-{steps}" if steps != usual_steps else "") + f"-s{seed}")
    return dict(name=name, stage=stage, model=model.name, command=command, seed=seed, lr=lr,
                max_iters=steps, size=size or "recipe")


def path(S: dict, key: str) -> str:
    return os.path.join(ROOT, S[key])  # S[key] itself when it is absolute


def read_results(S: dict) -> dict:
    """The recorded runs by name; a run that shared the CPU and was re-timed alone (--retime)
    has those seconds as retimed_s."""
    if not os.path.exists(path(S, "results")):
        return {}
    lines = read_records(path(S, "results"), dict(name=str, command=list),
                         "it should hold a JSON line per finished run: remove what is not one "
                         "(that run then runs again)")
    results = {line["name"]: line for line in lines}
    if "timings" in S and os.path.exists(path(S, "timings")):
        timings = read_records(path(S, "timings"), dict(name=str, elapsed_s=float,
                                                        cpu_share=float),
                               "it should hold a JSON line per re-timed run (--retime)")
        for timing in timings:
            if timing["name"] in results and timing["cpu_share"] >= SHARED:
                results[timing["name"]]["retimed_s"] = timing["elapsed_s"]
    return results


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

    stdlib_models = [(DENSE, best_lr(DENSE)),
                     (mot(**{**best_mot.flags, "dropout": 0.0}), best_lr(best_mot)),
                     (MOE, best_lr(MOE))]
    if stage.startswith("regime") or stage == "equal_flops":
        return plan_regime(S, results, stage, stdlib_models)
    if stage == "final":
        models = [(DENSE, best_lr(DENSE)), (best_mot, best_lr(best_mot)),
                  (second_mot, best_lr(best_mot)), (MOE, best_lr(MOE)), (MOE_EC, best_lr(MOE))]
        seeds = S["seeds"]
    else:  # python_stdlib
        models, seeds = stdlib_models, S["stdlib_seeds"]
    return [make_run(S, stage, model, lr, seed, stdlib=stage == "python_stdlib")
            for seed in seeds for model, lr in models]


def plan_regime(S: dict, results: dict, stage: str, stdlib_models: list) -> list:
    """The runs of a regime stage (the stages before it are done): the tiny model's dense, MoT
    and MoE at its usual length, then its knobs and other lengths, then the recipe's model long."""
    def run(stage, model, lr, seed, steps=S["regime_steps"], size="tiny"):
        return make_run(S, stage, model, lr, seed, stdlib=True, size=size, steps=steps)

    def loss(model, lr, seed=0) -> float:  # of its tiny run at the usual length
        return results[run(stage, model, lr, seed)["name"]]["final_val_loss"]

    tiny_mot = mot(**S["regime_mot"])
    models = (DENSE, tiny_mot, MOE)
    if stage == "regime_lr":
        return [run(stage, model, lr, 0) for model in models for lr in S["regime_lrs"]]
    best = [(model, min(S["regime_lrs"], key=lambda lr: loss(model, lr))) for model in models]
    if stage == "regime_seeds":
        return [run(stage, model, lr, seed) for seed in S["regime_seeds"] for model, lr in best]
    if stage == "regime_knobs":
        mot_lr = best[1][1]
        knobs = ([(mot(**{**S["regime_mot"], **knob}), mot_lr) for knob in S["regime_knobs"]]
                 + [(tiny_mot, mot_lr * factor) for factor in S["regime_lr_factors"]])
        runs = [run(stage, model, lr, 0) for model, lr in knobs]
        if not all(result(S, results, r) for r in runs):
            return runs  # the seeds come when every knob has run once
        mean_mot, mean_moe = (statistics.mean(loss(model, lr, seed) for seed in S["regime_seeds"])
                              for model, lr in best[1:])
        closing = [(model, lr) for (model, lr), r in zip(knobs, runs)
                   if mean_mot - results[r["name"]]["final_val_loss"] >= (mean_mot - mean_moe) / 2]
        return runs + [run(stage, model, lr, seed) for seed in S["regime_seeds"][1:]
                       for model, lr in closing]
    if stage == "regime_lengths":
        return [run(stage, model, lr, seed, steps) for steps in S["regime_lengths"]
                for seed in S["regime_length_seeds"] for model, lr in best]
    if stage == "regime_long":
        return [run(stage, model, lr, 0, S["regime_long_steps"], size=None)
                for model, lr in stdlib_models]
    if stage == "equal_flops":
        return equal_flops_runs(S, results, run, best)
    baselines = ([moe(**flags) for flags in S["regime_baselines"]]  # regime_baselines
                 + [mot(**{**S["regime_mot"], **S["regime_baseline_mot"]})])
    runs = [run(stage, model, lr, 0) for model in baselines for lr in S["regime_lrs"]]
    if not all(result(S, results, r) for r in runs):
        return runs  # the seeds come when every baseline has its best lr
    best = [(model, min(S["regime_lrs"], key=lambda lr: loss(model, lr))) for model in baselines]
    return runs + [run(stage, model, lr, seed) for seed in S["regime_seeds"][1:]
                   for model, lr in best]


def equal_flops_runs(S: dict, results: dict, run, best: list) -> list:
    """Dense trained for the tiny MoT's whole-model FLOPs at the rows of S["equal_flops"]: its
    steps and warm-up times MoT's FLOPs per token over dense's, the steps rounded to the row's
    evaluation interval (so that its curve is evaluated where the row's runs are)."""
    (dense, dense_lr), (tiny_mot, mot_lr) = best[:2]
    (mot_gpt, _), (dense_gpt, settings) = (built(results[run("regime_seeds", model, lr, 0)["name"]])
                                           for model, lr in ((tiny_mot, mot_lr), (dense, dense_lr)))
    ratio = mot_gpt.flops_per_token() / dense_gpt.flops_per_token()
    runs = []
    for steps, seeds in S["equal_flops"]:
        interval = max(1, steps // S["regime_evals"])
        model = Model(f"dense-flops{ratio:.2f}x", None, dict(
            dense.flags, warmup_iters=round(settings.warmup_iters * ratio),
            eval_interval=interval))
        runs += [dict(run("equal_flops", model, dense_lr, seed,
                          interval * round(steps * ratio / interval)), mot_steps=steps)
                 for seed in seeds]
    return runs


def machine() -> dict:
    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):  # Linux: platform.processor() is often empty there
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    return dict(cpu=cpu or platform.machine(), cores=os.cpu_count(),
                threads=torch.get_num_threads(), torch=torch.__version__)


def commit() -> str:
    """The git commit the code ran at, "+dirty" when tracked files other than the results
    (which the study itself appends to) differ from it."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout
    return git("rev-parse", "HEAD").strip() + ("+dirty" if git(
        "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results") else "")


def cpu_seconds() -> float:
    return sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


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
    wall, cpu = time.time(), cpu_seconds()
    launch(args)
    wall, cpu = time.time() - wall, cpu_seconds() - cpu
    log = read_log(os.path.join(ROOT, out_dir))
    settings = settings_of(run["command"])
    _, meta = dataset.load(settings.data_root, settings.dataset, settings.block_size)
    last = log[-1]
    if last["iter"] != run["max_iters"]:
        raise SystemExit(f"error: {out_dir}/log.jsonl ends at iter {last['iter']}, "
                         f"not {run['max_iters']}")
    return dict(run, final_val_loss=last["val_loss"], final_train_loss=last["train_loss"],
                best_val_loss=min(r["val_loss"] for r in log), elapsed_s=last["elapsed_s"],
                curve={key: [r[key] for r in log]
                       for key in ("iter", "train_loss", "val_loss", "elapsed_s")},
                vocab_size=meta["vocab_size"],  # recorded: the tables' counts need it
                machine=machine(), commit=commit(),
                cpu_share=cpu / (wall * torch.get_num_threads()))


def retime(S: dict, results: dict, names: list) -> None:
    """Train recorded runs again from scratch, one at a time (run it with the CPU to itself):
    their seconds for the tables where the first run shared the CPU, and a check that the same
    command gives the same final val loss. A JSON line each in S["timings"]."""
    unknown = [name for name in names if name not in results]
    if unknown:
        raise SystemExit(f"error: no recorded run named {', '.join(unknown)} in {S['results']}")
    for name in names:
        recorded = results[name]
        run = dict(recorded, name=f"retime-{name}")
        shutil.rmtree(os.path.join(ROOT, S["runs_dir"], run["name"]), ignore_errors=True)
        line = execute(S, run)
        timing = dict(name=name, elapsed_s=line["elapsed_s"], cpu_share=line["cpu_share"],
                      final_val_loss=line["final_val_loss"],
                      reproduced=line["final_val_loss"] == recorded["final_val_loss"],
                      commit=line["commit"], machine=line["machine"])
        with open(path(S, "timings"), "a") as f:
            f.write(json.dumps(timing) + "\n")
        print(f"{name}: {timing['elapsed_s']:.0f} s (cpu_share {timing['cpu_share']:.2f}), final "
              f"val loss {timing['final_val_loss']!r}, recorded {recorded['final_val_loss']!r}: "
              f"{'the same' if timing['reproduced'] else 'DIFFERENT'}")


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


RULE = ("Δ: the model's mean minus dense's. **Bold**: a difference we claim, larger than the "
        "spread (max − min) of either model's seeds, both with 2 or more.")


def seconds(lines: list) -> str:
    """Mean ± std of the training seconds, marked when a run shared the CPU with other work;
    a run re-timed alone (--retime) counts with those seconds instead, marked so."""
    def alone(line) -> bool:
        return line.get("cpu_share", 1.0) >= SHARED

    values = [line["elapsed_s"] if alone(line) else line.get("retimed_s", line["elapsed_s"])
              for line in lines]
    retimed = any(not alone(line) and "retimed_s" in line for line in lines)
    shared = any(not alone(line) and "retimed_s" not in line for line in lines)
    return (mean_std(values, 0) + (" (re-timed alone)" if retimed else "")
            + (" (shared)" if shared else ""))


def runs_table(lines: list) -> str:
    rows = [f"| {line['name']} | {line['lr']:g} | {line['final_val_loss']:.4f} "
            f"| {line['final_train_loss']:.4f} | {line['best_val_loss']:.4f} "
            f"| {seconds([line])} |" for line in lines]
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
        rows.append(f"| {label(model)} | {lines[0]['lr']:g} | {len(lines)} "
                    f"| {mean_std(values('final_val_loss'))} "
                    f"| {mean_std(values('final_train_loss'))} "
                    f"| {mean_std(values('best_val_loss'))} | {reach} "
                    f"| {seconds(lines)} | {deltas[0]} | {deltas[1]} |")
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
        rows.append(f"| {label(model)} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def settings_of(command: list):
    """train.py's settings (a TrainConfig) for a recorded command (its config paths relative to
    the root)."""
    return configurator.configure(train.TrainConfig, [
        arg if arg.startswith("--") else os.path.join(ROOT, arg) for arg in command])[0]


def built(line: dict):
    """The untrained GPT of a recorded run, and its settings, from its command and the vocabulary
    size it trained with: for parameter, token and FLOP counts."""
    settings = settings_of(line["command"])
    config = GPTConfig(**{key: getattr(settings, key) for key in checkpoints.MODEL_FIELDS},
                       vocab_size=line["vocab_size"])
    return GPT(config), settings


def reached(lines: list, target: float) -> str:
    """The mean step (and training seconds) at which the runs' val loss first reaches target."""
    hits = [next(((i, s) for i, s, loss in zip(line["curve"]["iter"], line["curve"]["elapsed_s"],
                                                line["curve"]["val_loss"]) if loss <= target),
                 None) for line in lines]
    hits = [hit for hit in hits if hit]
    if not hits:
        return "—"
    text = (f"{statistics.mean(i for i, _ in hits):.0f} "
            f"({statistics.mean(s for _, s in hits):.0f} s)")
    return text + (f", {len(hits)} of {len(lines)} seeds" if len(hits) < len(lines) else "")


def regime_points(S: dict, results: dict) -> list:
    """(size, steps, tokens per dense parameter, lines by model) of every seeded run of dense,
    MoT and MoE on the Python corpus, shortest first; sizes with no finished dense run left out."""
    groups = {}
    for stage in ("python_stdlib", "regime_seeds", "regime_lengths", "regime_long"):
        try:
            runs = plan(S, results, stage)
        except Waiting:
            break
        for run in runs:
            line = result(S, results, run)
            if line:
                key = (line.get("size", "recipe"), line["max_iters"])
                groups.setdefault(key, {}).setdefault(run["model"], []).append(line)
    points = []
    for (size, steps), lines_by_model in groups.items():
        if "dense" in lines_by_model:
            model, settings = built(lines_by_model["dense"][0])
            tokens = (steps * settings.batch_size * settings.block_size
                      * settings.gradient_accumulation_steps)
            points.append((size, steps, tokens / model.get_num_params(), lines_by_model))
    return sorted(points, key=lambda point: point[2])


def equal_flops_lines(S: dict, results: dict) -> dict:
    """The recorded runs of stage equal_flops by the steps of the tiny MoT row they match."""
    try:
        runs = plan(S, results, "equal_flops")
    except Waiting:
        return {}
    lines = {}
    for run in runs:
        if result(S, results, run):
            lines.setdefault(run["mot_steps"], []).append(results[run["name"]])
    return lines


def regime_table(S: dict, results: dict) -> str:
    rows = ["| size | steps | tokens per dense parameter | dense val | Δ MoT − dense "
            "| Δ MoT − dense at equal FLOPs (dense's val) | Δ MoE − dense | Δ MoE − MoT "
            "| MoT reaches dense's final at step | MoE reaches it at |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    equal = equal_flops_lines(S, results)
    for size, steps, tokens_per_param, by_model in regime_points(S, results):
        dense = by_model["dense"]
        losses = {model: [line["final_val_loss"] for line in lines]
                  for model, lines in by_model.items()}
        mot_model = next((m for m in by_model if m.startswith("mot")), None)
        moe_model = next((m for m in by_model if m.startswith("moe")), None)
        target = statistics.mean(losses["dense"])

        def cell(model, base="dense"):
            return delta(losses[model], losses[base]) if model and base else "—"
        matched = [line["final_val_loss"] for line in equal.get(steps, [])] if size == "tiny" else []
        at_equal = (f"{delta(losses[mot_model], matched)} ({mean_std(matched)}, {len(matched)} "
                    f"seed{'s' * (len(matched) > 1)})" if matched and mot_model else "—")
        rows.append(f"| {size} | {steps} | {tokens_per_param:.0f} "
                    f"| {mean_std(losses['dense'])} ({len(dense)} seed{'s' * (len(dense) > 1)}) "
                    f"| {cell(mot_model)} | {at_equal} "
                    f"| {cell(moe_model)} | {cell(moe_model, mot_model)} "
                    f"| {reached(by_model[mot_model], target) if mot_model else '—'} "
                    f"| {reached(by_model[moe_model], target) if moe_model else '—'} |")
    return "\n".join(rows + ["", RULE + " Equal FLOPs: dense trained for MoT's whole-model "
                              "FLOPs (stage equal_flops)."])


def knob_table(S: dict, results: dict, lines: list) -> str:
    """Each knob's MoT against the tiny MoT and MoE (their seed means at the usual length)."""
    seeded = {}
    for run in plan(S, results, "regime_seeds"):
        seeded.setdefault(run["model"], []).append(result(S, results, run)["final_val_loss"])
    mot_name = mot(**S["regime_mot"]).name
    mean_mot, mean_moe = statistics.mean(seeded[mot_name]), statistics.mean(seeded[MOE.name])
    rows = [f"MoT {mot_name}: {mean_mot:.4f}, MoE {MOE.name}: {mean_moe:.4f} "
            f"(means of {len(seeded[mot_name])} seeds); gap {mean_mot - mean_moe:+.4f}.", "",
            "| run | lr | final val | Δ vs MoT | gap closed | MFLOPs per token | parameters "
            "| seconds |", "|---|---|---|---|---|---|---|---|"]

    def closed(loss: float) -> str:  # the share of MoT's gap to MoE that a loss removes
        return f"{(mean_mot - loss) / (mean_mot - mean_moe):.0%}"
    seeded_knobs = {}
    for line in lines:
        model, _ = built(line)
        loss = line["final_val_loss"]
        seeded_knobs.setdefault((line["model"], line["lr"]), []).append(loss)
        rows.append(f"| {line['name']} | {line['lr']:g} | {loss:.4f} | {loss - mean_mot:+.4f} "
                    f"| {closed(loss)} | {model.flops_per_token() / 1e6:.2f} "
                    f"| {model.get_num_params() / 1e6:.2f} M | {seconds([line])} |")
    seeded_rows = [f"| {model} | {lr:g} | {len(losses)} | {mean_std(losses)} "
                   f"| {delta(losses, seeded[mot_name])} | {delta(losses, seeded[MOE.name])} "
                   f"| {closed(statistics.mean(losses))} |"
                   for (model, lr), losses in seeded_knobs.items() if len(losses) >= 2]
    if seeded_rows:
        rows += ["", "The knobs with seeds (Δ: the knob's mean minus the other model's; bold as "
                 "in the other tables):", "",
                 "| model | lr | seeds | final val | Δ vs MoT | Δ vs MoE | gap closed |",
                 "|---|---|---|---|---|---|---|"] + seeded_rows
    return "\n".join(rows)


def baselines_table(S: dict, results: dict, runs: list) -> str:
    """The tiny model at its usual length, every model at its best lr: dense, MoT, the MoT knob
    S["regime_baseline_knob"], top-1 MoE (seeded in earlier stages) and this stage's baselines
    (once their seeds are planned): mean ± std, Δ against dense and MoT, cost, causality."""
    seeded = plan(S, results, "regime_seeds")
    mot_name = mot(**S["regime_mot"]).name
    mot_lr = next(run["lr"] for run in seeded if run["model"] == mot_name)
    knob = mot(**{**S["regime_mot"], **S["regime_baseline_knob"]}).name
    knobs = [run for run in plan(S, results, "regime_knobs")
             if run["model"] == knob and run["lr"] == mot_lr]
    best = {(run["model"], run["lr"]) for run in seeded + knobs
            + [run for run in runs if run["seed"] != runs[0]["seed"]]}
    groups = {}
    for run in seeded + knobs + runs:
        line = result(S, results, run)
        if line and (run["model"], run["lr"]) in best:
            groups.setdefault((run["model"], run["lr"]), []).append(line)
    losses = {model: [line["final_val_loss"] for line in lines]
              for (model, _), lines in groups.items()}
    paper_mot = mot(**{**S["regime_mot"], **S["regime_baseline_mot"]}).name

    def versus(model, other):
        return delta(losses[model], losses[other]) if model != other and other in losses else "—"
    rows = ["| model | lr | seeds | final val | Δ vs dense | Δ vs MoT | Δ vs the paper's MoT "
            "| MFLOPs per token | parameters | seconds (seed 0) | causal |", "|---" * 11 + "|"]
    for (model, lr), lines in sorted(groups.items(), key=lambda g: statistics.mean(
            losses[g[0][0]]), reverse=True):
        gpt, _ = built(lines[0])
        first = min(lines, key=lambda line: line["seed"])
        rows.append(f"| {model} | {lr:g} | {len(lines)} | {mean_std(losses[model])} "
                    f"| {versus(model, 'dense')} | {versus(model, mot_name)} "
                    f"| {versus(model, paper_mot)} "
                    f"| {gpt.flops_per_token() / 1e6:.2f} | {gpt.get_num_params() / 1e6:.2f} M "
                    f"| {seconds([first])} | {'yes' if causal(model) else 'no'} |")
    return "\n".join(rows + ["", f"Δ: the model's mean minus dense's, MoT's ({mot_name}) or "
                              f"the paper's MoT's ({paper_mot}). " + RULE.split(". ", 1)[1],
                              "Seconds: the seed-0 run's training time; (shared): it ran beside "
                              f"other work (cpu_share < {SHARED}); (re-timed alone): the same "
                              f"run trained again with the CPU to itself (--retime)."])


def tables(S: dict, results: dict, stages=STAGES, at=None) -> str:
    """Markdown: each stage's table, computed from the results, and the machines they ran on; with
    `at` (steps), the seeded stages' val loss at those steps instead."""
    parts = []
    for stage in stages:
        if stage == "regime":  # not a stage: the summary of every length of the regime stages
            parts += ["**The regime: Δ against tokens per parameter.**", regime_table(S, results)]
            continue
        parts.append(f"**Stage {stage}.**")
        try:
            runs = plan(S, results, stage)
        except Waiting as e:
            parts.append(str(e))
            break
        lines_by_model = by_model(S, results, runs)
        lines = [line for lines in lines_by_model.values() for line in lines]
        lengths = " and ".join(str(n) for n in sorted({run["max_iters"] for run in runs}))
        parts.append(f"{len(lines)} of {len(runs)} runs done, {lengths} steps each.")
        if stage == "screening":
            parts.append(runs_table(sorted(lines, key=lambda line: line["final_val_loss"])))
        elif stage in ("lr", "regime_lr"):
            parts.append(runs_table(lines))
        elif stage == "regime_knobs":
            parts.append(knob_table(S, results, lines))
        elif stage == "regime_baselines" and not at:
            parts.append(baselines_table(S, results, runs))
        elif at:
            parts.append(curve_table(lines_by_model, at))
        elif stage.startswith("regime") or stage == "equal_flops":  # a table per length
            for steps in sorted({line["max_iters"] for line in lines}):
                at_steps = {model: [ln for ln in group if ln["max_iters"] == steps]
                            for model, group in lines_by_model.items()}
                parts.append(seeds_table({model: group for model, group in at_steps.items()
                                          if group}))
        else:
            parts.append(seeds_table(lines_by_model))
    machines = Counter("{cpu}, {cores} cores, torch {torch}, {threads} threads".format(
        **line["machine"]) for line in results.values())
    parts += [f"{count} runs on {description}." for description, count in machines.items()]
    return "\n\n".join(parts)


# In the documents of S["docs"], each block between a BEGIN line naming its stages and END is
# rewritten by --docs; a test checks that the blocks equal what the results give.
BEGIN = "<!-- tables by `python experiments/study.py --docs`, stages:"
END = "<!-- end of tables -->"


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
        try:
            with open(doc_path, encoding="utf-8") as f:
                text = f.read()
            blocks = list(doc_blocks(text))
        except UnicodeDecodeError:
            raise SystemExit(f"error: {doc_path} is not UTF-8 text: save it as UTF-8") from None
        except OSError as e:
            raise SystemExit(f"error: cannot read {doc_path} ({e.strerror})") from None
        except ValueError:  # a BEGIN line without its END line
            raise SystemExit(f"error: {doc_path} has a block of tables without its end line "
                             f"{END!r}: add it") from None
        for start, end, stages in reversed(blocks):  # later blocks first
            text = text[:start] + tables(S, results, stages) + "\n" + text[end:]
        try:  # a failed write leaves the document as it was
            with open(doc_path + ".tmp", "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(doc_path + ".tmp", doc_path)
        except OSError as e:
            raise SystemExit(f"error: cannot write {doc_path} ({e.strerror}): it is unchanged; "
                             f"free some disk space or make its folder writable") from None
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
                drawn, = ax.plot(steps, mean, label=f"{label(model)} "
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
    regime_plot(S, results, plt)


def regime_plot(S: dict, results: dict, plt) -> None:
    """Δ val (MoT − dense, MoE − dense) against tokens per dense parameter: the mean over seeds,
    bars from the lowest to the highest seed's difference to dense's mean."""
    points = regime_points(S, results)
    if not points:
        print(f"{S['regime_plot']} not written: no regime run is done yet")
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for prefix, text in (("mot", "MoT − dense"), ("moe", "MoE top-1 − dense")):
        for size, marker in (("tiny", "o"), ("recipe", "s")):
            xs, ys, low, high = [], [], [], []
            for point_size, _, tokens_per_param, by_model in points:
                model = next((m for m in by_model if m.startswith(prefix)), None)
                if point_size != size or model is None:
                    continue
                dense = statistics.mean(line["final_val_loss"] for line in by_model["dense"])
                diffs = [line["final_val_loss"] - dense for line in by_model[model]]
                xs.append(tokens_per_param)
                ys.append(statistics.mean(diffs))
                low.append(ys[-1] - min(diffs))
                high.append(max(diffs) - ys[-1])
            if xs:
                ax.errorbar(xs, ys, yerr=[low, high], marker=marker, capsize=3,
                            color="C0" if prefix == "mot" else "C1",
                            linestyle="-" if size == "tiny" else ":",
                            label=f"{text} ({'2×64' if size == 'tiny' else '4×128'} model)")
    ax.axhline(0.0, color="gray", linewidth=0.8)
    ax.set_xscale("log")
    ticks = sorted({tokens_per_param for _, _, tokens_per_param, _ in points})
    ax.set_xticks(ticks, [f"{tick:.0f}" for tick in ticks])  # the measured points, no 10^x clutter
    ax.minorticks_off()
    ax.set_xlabel("training tokens per dense parameter")
    ax.set_ylabel("final val loss minus dense's (lower: better than dense)")
    ax.set_title("Python corpus, matched expert FLOPs: where sparse layers pay")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(ROOT, S["regime_plot"]), dpi=120)
    plt.close(fig)
    print(f"wrote {S['regime_plot']}")


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
    parser.add_argument("--retime", nargs="+", metavar="NAME",
                        help="train these recorded runs again (with the CPU to itself): their "
                             "seconds for the tables, and whether the final val loss is the same")
    parser.error = lambda message: sys.exit(f"error: {message} (see --help)")
    args = parser.parse_args(argv)
    if args.table or args.at or args.plot or args.docs:
        results = read_results(S)
        if args.table:
            print(tables(S, results, STAGES + ("regime",)))
        if args.at:
            print(tables(S, results, ("final", "python_stdlib"), at=args.at))
        if args.plot:
            plot(S, results)
        if args.docs:
            update_docs(S, results)
        return
    if args.retime:
        retime(S, read_results(S), args.retime)
        return
    run_study(S, [args.stage] if args.stage else STAGES, args.only, args.dry_run)


if __name__ == "__main__":
    main()
