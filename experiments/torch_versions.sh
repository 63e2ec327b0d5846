#!/usr/bin/env bash
# The tests under older torch releases: for each version given, a virtual environment outside the
# repository (torch from the package registry, the default wheel, which runs on a CPU, and
# requirements-dev.txt's other packages), then the README's test command with its python, then
# the counts and the wall time. Not run by CI (CI keeps one torch). Each environment is about
# 5 GB; the tests took 6-7 minutes per version on 2 CPU cores (docs/gpus.md#which-torch).
#
#   bash experiments/torch_versions.sh 2.11.0 2.10.0          # venvs in ../venv-torch-VERSION
#   PYTHON=python3.12 VENVS=/tmp KEEP=0 bash experiments/torch_versions.sh 2.11.0
#
# $PYTHON: the interpreter the environments are made from (python); $VENVS: where they go (the
# repository's parent folder); KEEP=0 deletes each one once its tests have run. Extra pytest
# options after `--`: bash experiments/torch_versions.sh 2.11.0 -- test_mot.py -x
# Exit status: 0 when every version's tests passed. A summary line per version goes to stdout.
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
venvs=${VENVS:-$(dirname "$repo")}
versions=()
while (($#)) && [[ $1 != -- ]]; do versions+=("$1"); shift; done
[[ ${1:-} == -- ]] && shift
if ((${#versions[@]} == 0)); then
    echo "usage: bash experiments/torch_versions.sh VERSION... [-- PYTEST_ARGS...]" >&2
    exit 2
fi

# requirements-dev.txt without its "-r requirements.txt" and requirements.txt without torch
mapfile -t deps < <(cat "$repo/requirements.txt" "$repo/requirements-dev.txt" |
                    sed 's/#.*//; s/[[:space:]]//g' | grep -v '^$\|^-r\|^torch\b')

status=0
summary=()
for version in "${versions[@]}"; do
    venv="$venvs/venv-torch-$version"
    log="$venv.log"
    echo "== torch $version: $venv" >&2
    if [[ ! -x $venv/bin/python ]] && ! "${PYTHON:-python}" -m venv "$venv"; then
        summary+=("torch $version: no venv made with ${PYTHON:-python}")
        status=1
        continue
    fi
    # pip's notes on configured package indexes it cannot read are noise: the rest goes to stderr
    "$venv/bin/python" -m pip install -q "torch==$version" "${deps[@]}" 2>&1 |
        grep -v "^WARNING: Location .* is ignored" >&2
    installed=$("$venv/bin/python" -c "import torch; print(torch.__version__)" 2>/dev/null)
    if [[ $installed != "$version" && $installed != "$version+"* ]]; then
        summary+=("torch $version: not installed (pip's messages above)")
        status=1
        continue
    fi
    start=$SECONDS
    # the README's test command, with this environment's python (the tests start scripts with
    # sys.executable, so the environment need not be activated)
    (cd "$repo" && "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@") > "$log" 2>&1
    rc=$?
    counts=$(grep -E "^(=+ )?[0-9]+ (passed|failed|error|skipped)|no tests ran" "$log" | tail -1 |
             sed "s/^=* *//; s/ *=*$//")
    summary+=("torch $installed: ${counts:-no counts} (exit $rc, $((SECONDS - start)) s; $log)")
    ((rc == 0)) || status=1
    [[ ${KEEP:-1} == 0 ]] && rm -rf "$venv"
done
printf '%s\n' "${summary[@]}"
exit $status
