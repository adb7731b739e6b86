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

# The test command only: Debian's Chromium for the browser tests (students' set-up needs no browser).
if [ -n "$EXTRAS" ] && [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
  echo "==> installing Debian's chromium for the browser tests"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null ||
    echo "    (apt-get could not install chromium; the browser tests will be skipped)"
fi
# ... and Debian's PostgreSQL, the shared study storage that tests/test_tuning.py starts for real.
if [ -n "$EXTRAS" ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
  echo "==> installing Debian's postgresql for the shared-storage tuning test"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/dev/null ||
    echo "    (apt-get could not install postgresql; that test will be skipped)"
fi

# ... and Debian's bubblewrap, which gives each graded submission its own PID, mount and network namespaces.
if [ -n "$EXTRAS" ] && ! command -v bwrap >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
  echo "==> installing Debian's bubblewrap for the grader's sandbox"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap) >/dev/null ||
    echo "    (apt-get could not install bubblewrap; the grader falls back to weaker isolation, with a warning)"
fi

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

# The widget renderer for the HTML that `course run` writes, from the npm registry into the venv
# (never into the repository), so those pages show widgets with no internet. Optional: without npm
# the pages load it from a CDN.
WIDGETS="$VENV/share/course-widgets"
if [ ! -f "$WIDGETS/html-manager/embed-amd.js" ] && command -v npm >/dev/null 2>&1; then
  echo "==> fetching the widget renderer for offline HTML (npm)"
  tmp=$(mktemp -d)
  if (cd "$tmp" && npm pack --silent @jupyter-widgets/html-manager@1 requirejs@2 >/dev/null 2>&1); then
    mkdir -p "$tmp/hm" "$tmp/rq" "$WIDGETS.partial/html-manager"
    tar xzf "$tmp"/jupyter-widgets-html-manager-*.tgz -C "$tmp/hm"
    tar xzf "$tmp"/requirejs-*.tgz -C "$tmp/rq"
    cp -r "$tmp/hm/package/dist/." "$WIDGETS.partial/html-manager/"
    cp "$tmp/rq/package/require.js" "$WIDGETS.partial/require.js"
    rm -rf "$WIDGETS" && mv "$WIDGETS.partial" "$WIDGETS"
  else
    echo "    (npm could not fetch it; the HTML pages will load widgets from a CDN)"
  fi
  rm -rf "$tmp" "$WIDGETS.partial"
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
