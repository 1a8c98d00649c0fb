#!/usr/bin/env bash
# The project's two entry points, on a fresh clone with only Python 3.11+ and pip:
#   ./dev.sh main   set up .venv, then train the bundled example (examples/digits.py)
#   ./dev.sh test   set up .venv, then run ruff, mypy and the test suite
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
        exec "$VENV/bin/python" -m pytest -n 2 "$@"
        ;;
    *)
        echo "usage: ./dev.sh main | test [pytest args]" >&2
        exit 2
        ;;
esac
