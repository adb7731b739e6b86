#!/usr/bin/env bash
# Set up the course in ./.venv, idempotently: Python packages, then the Fashion-MNIST data.
#   scripts/setup.sh          what students need
#   scripts/setup.sh --test   plus the test tools
# Environment: PYTHON (interpreter to build the venv from), VENV (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
EXTRAS=""
[ "${1:-}" = "--test" ] && EXTRAS="[test]"

pick_python() {
  for candidate in ${PYTHON:-} python3.11 python3.12 python3.13 python3.10 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "No Python 3.10 or newer found. Install one (e.g. sudo apt-get install python3) or set PYTHON=/path/to/python3." >&2
  return 1
}

if [ ! -x "$VENV/bin/python" ]; then
  PY=$(pick_python)
  echo "==> creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi

# Reinstall only when pyproject.toml (or the extras asked for) changed.
want="$(cat pyproject.toml | sha256sum | cut -d' ' -f1) $EXTRAS"
stamp="$VENV/.course-installed"
if [ ! -f "$stamp" ] || ! grep -qxF "$want" "$stamp"; then
  echo "==> installing course_utils$EXTRAS and its dependencies into $VENV (a few minutes the first time)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".$EXTRAS"
  echo "$want" >> "$stamp"
fi

# Data: Debian's package when we can install it, else torchvision's download.
if ! "$VENV/bin/course" data --no-download >/dev/null 2>&1; then
  if [ -z "${COURSE_DATA_DIR:-}" ] && command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null && SUDO="sudo -n"
    if [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; then
      echo "==> installing Debian's dataset-fashion-mnist"
      ($SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null ||
        echo "    (apt-get could not install it; trying the download instead)"
    fi
  fi
  echo "==> checking Fashion-MNIST"
  "$VENV/bin/course" data
fi
echo "==> set-up complete ($VENV)"
