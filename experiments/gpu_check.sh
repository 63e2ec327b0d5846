#!/usr/bin/env bash
# The GPU check: the tests on the GPU, pytest under experiments/gpu_check.py (which picks the
# device, goes on after a test that crashes, and sums up; its docstring has the options), with
# the python of $PYTHON, e.g. a virtual environment that is not activated:
#
#   bash experiments/gpu_check.sh                         # on the GPU: gpu_check.jsonl
#   bash experiments/gpu_check.sh --device=cpu            # the same tests on this CPU
#   PYTHON=.venv/bin/python bash experiments/gpu_check.sh --device=cuda:1 -k "kv_cache or learner"
exec "${PYTHON:-python}" "$(dirname "$0")/gpu_check.py" "$@"
