"""
The GPU check: the tests on a device, as one command that never stops at the first failure.

    bash experiments/gpu_check.sh [--device=cuda|cuda:N|cpu] [--out=gpu_check.jsonl]
                                  [--time-limit=SECONDS] [pytest's options and test paths]

It runs `python -m pytest --device=...` on test_mot.py (the model's properties and layers, on the
device) and tests/test_device.py (what only a GPU shows, the learner's path); test paths given
(relative to the repository) replace those two, and -k or any other option of pytest narrows
them. conftest.py writes one JSON line per test to --out (test, outcome, seconds, device,
message, figures) and fails a test that runs past --time-limit. This script does what pytest
cannot: it picks the GPU (--device defaults to cuda where torch sees one, and must be given
elsewhere), goes on after a test that ends the process (a crash, or a hang in native code that
the time limit stops: recorded as "crashed", then pytest starts again after it), and sums up.
Exit status 0 when no test failed, errored, timed out or crashed.
"""

import importlib.util
import json
import os
import subprocess
import sys
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from configurator import fail  # noqa: E402
from devices import device_problem, unusable_gpu  # noqa: E402

TESTS = ["test_mot.py", "tests/test_device.py"]
# per test: the learner's path runs train.py twice, each with the recipe's compile
TIME_LIMIT_S = 600.0
PROBLEMS = ("failed", "error", "timeout", "crashed")


def parse(argv: list) -> tuple:
    """(device, out, time limit, the arguments for pytest)."""
    device, out, limit, rest = None, "gpu_check.jsonl", TIME_LIMIT_S, []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key == "--device":
            device = value
        elif sep and key == "--out":
            out = value
        elif sep and key == "--time-limit":
            try:
                limit = float(value)
            except ValueError:
                limit = -1.0
            if not limit > 0:
                fail(f"--time-limit={value}: give the seconds a test may run, e.g. 600")
        elif key in ("--sections", "--section", "--tiny", "--result"):
            fail(f"{key}: the check's sections are tests now; select them with pytest's -k "
                 f"or test paths, e.g. -k kv_cache (see docs/gpus.md)")
        else:
            rest.append(arg)
    if device is None:
        if not torch.cuda.is_available():  # a GPU this torch cannot use: say why
            fail(unusable_gpu() or "torch sees no GPU here: give --device=cpu to run the check "
                                   "on this CPU")
        device = "cuda"
    problem = device_problem(device)
    if problem:
        fail(f"--device={device}: {problem}")
    for module in ("pytest", "hypothesis"):
        if importlib.util.find_spec(module) is None:
            fail(f"the check runs the tests with {module}: pip install -r requirements.txt")
    return device, os.path.abspath(out), limit, rest


def read(path: str) -> list:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def summary(lines: list, device: str) -> str:
    """A table per test file (outcomes and seconds), then each test that did not pass, each
    reason a test was skipped for (with the test, or how many), then the figures the tests
    recorded."""
    files = {}
    for line in lines:
        files.setdefault(line["test"].split("::")[0], []).append(line)
    rows = ["| tests | " + " | ".join(("passed", "skipped") + PROBLEMS) + " | seconds |",
            "|---" * 8 + "|"]
    for name, group in files.items():
        counts = Counter(line["outcome"] for line in group)
        seconds = sum(line["seconds"] or 0 for line in group)
        rows.append(f"| {name} | " + " | ".join(str(counts[o]) for o in ("passed", "skipped")
                                                 + PROBLEMS) + f" | {seconds:.1f} |")
    notes = [f"{line['outcome']}: {line['test']}: {line['message']}" for line in lines
             if line["outcome"] in PROBLEMS]
    skipped = {}
    for line in lines:
        if line["outcome"] == "skipped":
            skipped.setdefault(line["message"], []).append(line["test"])
    notes += [f"skipped: {tests[0]}: {reason}" if len(tests) == 1 else
              f"skipped: {len(tests)} tests: {reason}" for reason, tests in skipped.items()]
    figures = [f"{line['test']}: {json.dumps(line['figures'])}" for line in lines
               if line["figures"]]
    counts = Counter(line["outcome"] for line in lines)
    total = ", ".join(f"{counts[o]} {o}" for o in ("passed", "skipped") + PROBLEMS if counts[o])
    return "\n".join(rows + [""] + notes + [""] * bool(notes) + ["figures:"] * bool(figures)
                     + figures + [""] * bool(figures) + [f"{len(lines)} tests on {device}: {total}"])


def main(argv: list) -> int:
    device, out, limit, rest = parse(argv)
    given = [a for a in rest if not a.startswith("-") and os.path.exists(
        os.path.join(ROOT, a.split("::")[0]))]
    tests = [] if given else TESTS
    try:
        open(out, "w").close()
    except OSError as e:
        fail(f"cannot write --out={out} ({e.strerror}): give a writable path")
    running = out + ".running"  # conftest.py names the test that runs there
    if os.path.exists(running):  # left by an interrupted check
        os.remove(running)
    print(f"GPU check on {device}: one JSON line per test in {out}", flush=True)
    while True:  # each time round, a test that crashed is recorded, and left out of the next
        status = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfE",
                                 f"--device={device}", f"--jsonl={out}", "--jsonl-resume",
                                 f"--time-limit={limit:g}", *tests, *rest], cwd=ROOT).returncode
        if not os.path.exists(running):
            break
        with open(running) as f:
            test = f.read().strip()
        os.remove(running)
        with open(out, "a") as f:  # then pytest again, after it
            f.write(json.dumps(dict(
                test=test, outcome="crashed", seconds=None, device=device, figures={},
                message=f"the test process ended in this test (exit status {status}): a crash, "
                        f"or stuck past twice the time limit")) + "\n")
    lines = read(out)
    if not lines:
        os.remove(out)
        fail(f"pytest ran no test (exit status {status}): see its message above")
    print("\n" + summary(lines, device))
    bad = status not in (0, 1) or any(line["outcome"] in PROBLEMS for line in lines)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
