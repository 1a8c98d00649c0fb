#!/usr/bin/env bash
# The project's two entry points, on a fresh clone with only Python 3.11+ and pip:
#   ./dev.sh main   set up .venv, then train the bundled example (examples/digits.py)
#   ./dev.sh test   set up .venv, then run ruff, mypy and the test suite (the real-SLURM tests last)
#   ./dev.sh slurm  set up .venv, then run the real-SLURM tests (root: starts a local cluster)
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=.venv

setup() {
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -m venv "$VENV"
    fi
    # Reinstall only when the dependency list changed (the stamp holds pyproject.toml's hash).
    local stamp="$VENV/.fulmen-installed" want
    want=$("$VENV/bin/python" -c 'import hashlib,sys; print(hashlib.sha256(open("pyproject.toml","rb").read()).hexdigest())')
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check torch==2.13.0
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[dev]"
        echo "$want" > "$stamp"
    fi
    # PyTorch Lightning itself, only for the tests that exchange checkpoints with it
    # (tests/lightning/test_interchange.py runs it in subprocesses): kept out of the venv's
    # site-packages, so nothing fulmen runs can import it. Its dependencies are in .[dev] already.
    if [ ! -d "$VENV/lightning-ref/lightning-2.6.6.dist-info" ]; then
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --upgrade \
            --target "$VENV/lightning-ref" lightning==2.6.6
    fi
}

case "${1:-}" in
    main)
        setup
        shift
        exec "$VENV/bin/python" examples/digits.py "$@"
        ;;
    test)
        setup
        shift
        "$VENV/bin/ruff" check src tests examples benchmarks
        "$VENV/bin/mypy"
        if [ $# -gt 0 ]; then
            exec "$VENV/bin/python" -m pytest -n 2 "$@"
        fi
        "$VENV/bin/python" -m pytest -n 2
        # Then the real-SLURM requeue tests: a local one-node cluster (root; installs munge/slurm
        # with apt when missing, and skips loudly where that is impossible).
        exec "$VENV/bin/python" -m pytest -m slurm tests/runtime/test_slurm.py -rs
        ;;
    slurm)
        setup
        shift
        exec "$VENV/bin/python" -m pytest -m slurm tests/runtime/test_slurm.py "$@"
        ;;
    *)
        echo "usage: ./dev.sh main | test [pytest args] | slurm [pytest args]" >&2
        exit 2
        ;;
esac
