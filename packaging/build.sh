#!/usr/bin/env bash
# Build the single-file edgecache executable with PyInstaller.
#
#   packaging/build.sh [DIST_DIR]       # default DIST_DIR: ./dist
#
# Uses the Python of $BUILD_PYTHON, else of the active virtualenv, else ./.venv (set it up
# with: python3 -m venv .venv && .venv/bin/pip install -e '.[build]'). PyInstaller's work files
# go to $BUILD_WORKDIR (default: a temporary directory, removed afterwards).
# The last line printed is the absolute path of the built executable.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIST="$(mkdir -p "${1:-$REPO/dist}" && cd "${1:-$REPO/dist}" && pwd)"

if [[ -n "${BUILD_PYTHON:-}" ]]; then
    PY="$BUILD_PYTHON"
elif [[ -n "${VIRTUAL_ENV:-}" && -x "$VIRTUAL_ENV/bin/python" ]]; then
    PY="$VIRTUAL_ENV/bin/python"
else
    PY="$REPO/.venv/bin/python"
fi
if ! "$PY" -c 'import PyInstaller' 2>/dev/null; then
    echo "build.sh: PyInstaller is not importable by $PY;" >&2
    echo "          install it with: $PY -m pip install -e '$REPO[build]'" >&2
    exit 1
fi

WORK="${BUILD_WORKDIR:-}"
if [[ -z "$WORK" ]]; then
    WORK="$(mktemp -d)"
    trap 'rm -rf "$WORK"' EXIT
fi

"$PY" -m PyInstaller --noconfirm --clean --log-level WARN \
    --distpath "$DIST" --workpath "$WORK" "$REPO/packaging/edgecache.spec" >&2

test -x "$DIST/edgecache"
echo "$DIST/edgecache"
