"""The GPU check (bash experiments/gpu_check.sh) on this CPU, on a few cheap tests: one JSON line
per test with its outcome, a summary, and a run that goes on after a test fails, runs past the
time limit, or ends the process. The faults are injected by a pytest plugin written here."""

import json
import os
import subprocess
import sys

import pytest
import torch

import gpu_check
from conftest import ROOT

PASSES = "test_mot.py::test_merge_entropy_before_any_forward_says_so"
FAILS = "test_mot.py::test_train_mode_rejects_a_partial_group"
SLEEPS = "test_mot.py::test_eval_pads_a_partial_group_with_zero_rows[1]"
HANGS = "test_mot.py::test_mot_matches_the_loop_reference"
AFTER = "test_mot.py::test_mot_matches_the_loop_reference_at_fixed_temperatures[1.0]"  # HANGS+
GPU_ONLY = "tests/test_device.py::test_the_native_dtype_is_one_the_gpu_computes_in"
LEARNER = "tests/test_device.py::test_the_learners_path_trains_resumes_and_samples"

# A plugin (pytest -p inject_faults) that makes the tests named in INJECT_FAULTS fail, sleep
# past the time limit, hang with SIGALRM blocked (as a test stuck in native code, which the
# alarm cannot interrupt), or see a device of 1 MiB, as the JSON of {test id: fault} says.
PLUGIN = """
import json, os, signal, time
import pytest

FAULTS = json.loads(os.environ["INJECT_FAULTS"])


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    fault = FAULTS.get(item.nodeid)
    if fault == "fail":
        raise AssertionError("injected failure")
    if fault == "hang":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    if fault in ("sleep", "hang"):
        time.sleep(600)
    if fault == "1 MiB":  # for the rest of this pytest process
        item.module.device_memory = lambda device: 2 ** 20
"""


def run_check(tmp_path, tests: list, faults: dict, *options):
    """bash experiments/gpu_check.sh --device=cpu on these tests, with sys.executable as PYTHON
    and the faults injected; (the process, the JSON lines)."""
    (tmp_path / "inject_faults.py").write_text(PLUGIN)
    env = dict(os.environ, PYTHON=sys.executable, INJECT_FAULTS=json.dumps(faults),
               PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path),
                                                        os.environ.get("PYTHONPATH")])))
    out = tmp_path / "check.jsonl"
    result = subprocess.run(["bash", "experiments/gpu_check.sh", "--device=cpu", f"--out={out}",
                             "-p", "inject_faults", *options, *tests], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    return result, [json.loads(line) for line in out.read_text().splitlines()]


def test_the_check_goes_on_after_a_failure_a_timeout_and_a_crash(tmp_path):
    """A failing test, one past the time limit (4 s) and one that hangs where the alarm cannot
    reach it (the process is stopped at twice the limit, and pytest starts again after it,
    leaving out only what ran: not AFTER, whose id HANGS's begins) are each one JSON line with
    their outcome; the tests after them still run; a GPU-only test is skipped on the CPU; the
    summary names each test that did not pass; the exit status is 1."""
    tests = [PASSES, FAILS, SLEEPS, HANGS, AFTER, GPU_ONLY]
    result, lines = run_check(tmp_path, tests, {FAILS: "fail", SLEEPS: "sleep", HANGS: "hang"},
                              "--time-limit=4")
    outcomes = {line["test"]: line["outcome"] for line in lines}
    assert len(lines) == len(outcomes) == len(tests), result.stdout[-3000:]
    assert outcomes == {PASSES: "passed", FAILS: "failed", SLEEPS: "timeout", HANGS: "crashed",
                        AFTER: "passed", GPU_ONLY: "skipped"}, result.stdout[-3000:]
    assert all(line["device"] == "cpu" for line in lines)
    assert result.returncode == 1
    for test in (FAILS, SLEEPS, HANGS):
        assert any(test in row for row in result.stdout.splitlines()), result.stdout[-3000:]


def test_the_check_exits_0_when_every_test_passes_or_skips(tmp_path):
    result, lines = run_check(tmp_path, [PASSES, GPU_ONLY], {})
    assert [(line["test"], line["outcome"]) for line in lines] == [
        (PASSES, "passed"), (GPU_ONLY, "skipped")], result.stdout[-3000:]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_a_recipe_too_large_for_the_device_is_reported_skipped(tmp_path):
    """The learner's path on a device of 1 MiB: skipped, never failed, with a line naming the
    recipe and the device's memory; the check exits 0."""
    result, lines = run_check(tmp_path, [LEARNER], {LEARNER: "1 MiB"})
    assert [(line["test"], line["outcome"]) for line in lines] == [(LEARNER, "skipped")], \
        result.stdout[-3000:]
    assert "shakespeare MoT recipe" in lines[0]["message"], lines[0]
    assert "0.0 GiB" in lines[0]["message"], lines[0]  # the device's 1 MiB
    assert f"skipped: {LEARNER}: {lines[0]['message']}" in result.stdout, result.stdout[-3000:]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.parametrize("argv, gpus, words", [
    ([], 0, ["no GPU", "--device=cpu"]),
    (["--device=cuda:7"], 1, ["--device=cuda:7", "cuda:0"]),
    (["--device=cpu", "--time-limit=0"], 0, ["--time-limit=0"]),
    (["--device=cpu", "--sections=layers"], 0, ["--sections", "-k"]),
])
def test_a_careless_command_is_one_line_and_writes_nothing(argv, gpus, words, tmp_path,
                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    with pytest.raises(SystemExit) as exit:
        gpu_check.main(argv)
    line = exit.value.code
    assert line.startswith("error: ") and "\n" not in line
    assert all(word in line for word in words), line
    assert os.listdir(tmp_path) == []


def test_pytest_refuses_a_device_this_machine_does_not_have():
    """--device is checked when pytest starts: a usage error naming it, no test run."""
    result = subprocess.run([sys.executable, "-m", "pytest", "--device=cuda:99", "-q",
                             "test_mot.py"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 4 and "--device=cuda:99" in result.stderr, result.stderr
