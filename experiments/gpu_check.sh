#!/usr/bin/env bash
# The GPU check, experiments/gpu_check.py (its docstring lists the sections and options), with
# the python of $PYTHON, e.g. a virtual environment that is not activated:
#
#   bash experiments/gpu_check.sh                              # on the GPU: gpu_check.jsonl
#   PYTHON=.venv/bin/python bash experiments/gpu_check.sh --device=cpu --tiny --out=x.jsonl
exec "${PYTHON:-python}" "$(dirname "$0")/gpu_check.py" "$@"
