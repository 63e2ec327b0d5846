"""pytest's options for every test, here at the repository's root so that they hold for
test_mot.py and tests/ alike (pytest takes a conftest.py's options only from the folders of the
paths it is given and above them; pytest.ini keeps this folder the root wherever it starts).

--device=cpu|cuda|cuda:N (default cpu): the device of the `device` fixture, on which
test_mot.py's model and layer tests and tests/test_device.py run; a test that does not take it
runs on the CPU. Tests marked `gpu` need CUDA and are skipped elsewhere, with the reason.
For the GPU check (experiments/gpu_check.py), which sets both:
--time-limit=S: a test still running after S seconds fails as a timeout (SIGALRM); one stuck in
native code, where the alarm cannot interrupt it, stops the process at 2·S (faulthandler prints
where it was) and the check goes on after it;
--jsonl=FILE: one JSON line per test appended to FILE, while FILE.running names the test that
runs; with --jsonl-resume, the tests FILE has a line for are left out (the check goes on after a
crash so).
"""

import faulthandler
import json
import os
import signal

import pytest
import torch

from devices import device_problem


class TimeLimitExceeded(BaseException):
    """Raised in a test that runs past --time-limit. A BaseException, as pytest's own outcomes
    are, so that neither the test's `except Exception` nor hypothesis takes it for a failure to
    shrink."""


def pytest_addoption(parser):
    group = parser.getgroup("mot")
    group.addoption("--device", default="cpu",
                    help="cpu, cuda or cuda:N: where the tests that take `device` run")
    group.addoption("--time-limit", type=float, default=0.0,
                    help="seconds a test may run (0: no limit)")
    group.addoption("--jsonl", default=None, help="append one JSON line per test to this file")
    group.addoption("--jsonl-resume", action="store_true",
                    help="deselect the tests that --jsonl's file has a line for already")


def pytest_configure(config):
    device = config.getoption("device")
    problem = device_problem(device)
    if problem:
        raise pytest.UsageError(f"--device={device}: {problem}")
    if config.getoption("time_limit") or config.getoption("jsonl"):
        config.pluginmanager.register(Check(config), "mot_check")


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    device = torch.device(request.config.getoption("device"))
    if device.type == "cuda":  # cuda:N is then "cuda" too; an index compares with tensors'
        torch.cuda.set_device(device)
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def pytest_runtest_setup(item):
    device = item.config.getoption("device")
    if item.get_closest_marker("gpu") and torch.device(device).type != "cuda":
        pytest.skip(f"what it checks exists only on a CUDA GPU: run with --device=cuda (this run "
                    f"has --device={device})")


class Check:
    """The GPU check's per-test time limit and JSON lines (pytest_configure registers it when
    --time-limit or --jsonl is given)."""

    def __init__(self, config):
        self.device, self.limit = config.getoption("device"), config.getoption("time_limit")
        self.path, self.resume = config.getoption("jsonl"), config.getoption("jsonl_resume")
        self.lines, self.timed_out = {}, set()  # node id -> its JSON line in the making
        self.stderr = os.dup(2)  # the terminal's (a test's own stderr is captured, then lost)

    def pytest_collection_modifyitems(self, config, items):
        """After a crash: the tests already done (exactly those: --deselect takes prefixes)."""
        if not (self.resume and self.path and os.path.exists(self.path)):
            return
        with open(self.path) as f:
            done = {json.loads(line)["test"] for line in f if line.strip()}
        config.hook.pytest_deselected(items=[item for item in items if item.nodeid in done])
        items[:] = [item for item in items if item.nodeid not in done]

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item):
        if not self.limit:
            yield
            return

        def expire(signum, frame):
            self.timed_out.add(item.nodeid)
            raise TimeLimitExceeded(f"over the time limit of {self.limit:g} s per test")

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, self.limit)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    def pytest_runtest_logstart(self, nodeid, location):
        if self.limit:  # the backstop, for a test stuck where the alarm cannot reach it
            faulthandler.dump_traceback_later(2 * self.limit, exit=True, file=self.stderr)
        if self.path:
            with open(self.path + ".running", "w") as f:
                f.write(nodeid)

    def pytest_runtest_logreport(self, report):
        line = self.lines.setdefault(report.nodeid, dict(
            test=report.nodeid, outcome="passed", seconds=0.0, device=self.device, message=None,
            figures={}))
        line["seconds"] += report.duration
        line["figures"].update(report.user_properties)  # a test's record_property(name, value)
        if report.passed or line["outcome"] != "passed":  # the first problem is the outcome
            return
        if report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
            line["outcome"], line["message"] = "skipped", reason.removeprefix("Skipped: ")
            return
        crash = getattr(report.longrepr, "reprcrash", None)
        line["outcome"] = ("timeout" if report.nodeid in self.timed_out else
                           "failed" if report.when == "call" else "error")
        message = (crash.message if crash else str(report.longrepr)).strip().splitlines()
        line["message"] = message[0] if message else None

    def pytest_runtest_logfinish(self, nodeid, location):
        faulthandler.cancel_dump_traceback_later()
        line = self.lines.pop(nodeid, None)
        if self.path and line:
            line["seconds"] = round(line["seconds"], 3)
            with open(self.path, "a") as f:
                f.write(json.dumps(line, default=str) + "\n")
        if self.path and os.path.exists(self.path + ".running"):
            os.remove(self.path + ".running")
