#!/usr/bin/env bash
# Create ./.venv with a Python >= 3.12 and install stellarfit into it (editable).
#   bash install.sh            # library, CLI, emulators, inference, plots, tests
#   EXTRAS=test bash install.sh
# Finds the interpreter on PATH (python3.13, python3.12, python3), then under pyenv.
set -euo pipefail
cd "$(dirname "$0")"
EXTRAS="${EXTRAS:-all,test}"

ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; }
PY=""
for candidate in "${PYTHON:-}" python3.13 python3.12 python3; do
  [ -n "$candidate" ] || continue
  if command -v "$candidate" >/dev/null 2>&1 && ok "$candidate"; then PY="$(command -v "$candidate")"; break; fi
done
if [ -z "$PY" ]; then
  root="$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"
  for candidate in $(ls -d "$root"/versions/3.1[2-9]* 2>/dev/null | sort -V -r); do
    if ok "$candidate/bin/python"; then PY="$candidate/bin/python"; break; fi
  done
fi
if [ -z "$PY" ]; then
  echo "install.sh: stellarfit needs Python >= 3.12 (JAX >= 0.11 and ArviZ >= 1.0 do)." >&2
  echo "Install one (e.g. 'pyenv install 3.12' or your package manager) or set PYTHON=/path/to/python3.12." >&2
  exit 2
fi
echo "install.sh: using $PY ($("$PY" --version))" >&2
if [ ! -x .venv/bin/python ] || ! ok .venv/bin/python; then
  rm -rf .venv
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[${EXTRAS}]"
echo "install.sh: installed; run things with .venv/bin/stellarfit or .venv/bin/python" >&2
