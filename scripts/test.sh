#!/usr/bin/env bash
# Set up everything the edgecache test suite needs and run it: ruff, mypy, pytest.
#
#   ./scripts/test.sh                 # whole suite (what CI runs, via .ci/run)
#   ./scripts/test.sh -k binary -x    # extra arguments go to pytest
#
# As root it installs the Debian packages the integration tests drive (apt-get); as any other
# user it names the missing ones and carries on (those tests then skip locally; with CI=true,
# tests/support.py's require_tool makes a missing tool a failure instead of a skip).
# Python dependencies go into ./.venv (override with VENV_DIR); the interpreter that
# creates it is $PYTHON (default python3, which must be 3.11 or newer).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# One list, shared with .ci/run: the Debian packages the integration tests drive.
mapfile -t DEBIAN_PACKAGES < scripts/debian-packages.txt
PYTHON="${PYTHON:-python3}"
VENV="${VENV_DIR:-.venv}"
TEST_TIMEOUT="${TEST_TIMEOUT:-40m}"

step() { printf '\n==> %s\n' "$*"; }

# --- Debian packages -------------------------------------------------------------------------
missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]]; then
        step "installing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    else
        step "NOTE: Debian packages missing: ${missing[*]}"
        echo "    The integration tests that use them will be skipped. Install them with:"
        echo "    sudo apt-get update && sudo apt-get install -y ${missing[*]}"
    fi
else
    step "Debian packages present: ${DEBIAN_PACKAGES[*]}"
fi

# --- Python virtualenv -----------------------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
    step "creating virtualenv $VENV with $PYTHON ($("$PYTHON" --version 2>&1))"
    "$PYTHON" -m venv "$VENV"
fi
step "installing edgecache with test and build extras into $VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test,build]'

# The tests start `edgecache`, `pyinstaller` etc. from the venv.
export PATH="$PWD/$VENV/bin:$PATH"
export VIRTUAL_ENV="$PWD/$VENV"

# --- checks ----------------------------------------------------------------------------------
failed=()

step "ruff check ."
ruff check . || failed+=("ruff")

step "mypy"
mypy || failed+=("mypy")

step "pytest"
set +e
timeout --signal=TERM --kill-after=60s "$TEST_TIMEOUT" \
    python -m pytest -ra --durations=15 "$@"
rc=$?
set -e
case $rc in
    0) ;;
    5) echo "pytest collected no tests: that is a failure, not a pass"; failed+=("pytest (no tests)") ;;
    124) echo "pytest did not finish within $TEST_TIMEOUT"; failed+=("pytest (timeout)") ;;
    *) failed+=("pytest (exit $rc)") ;;
esac

if ((${#failed[@]})); then
    step "FAILED: ${failed[*]}"
    exit 1
fi
step "all checks passed"
