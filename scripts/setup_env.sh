#!/usr/bin/env bash
# Create (or reuse) .venv and install the project with the given extras.
# Usage: scripts/setup_env.sh [EXTRAS]   e.g. scripts/setup_env.sh dev,ray,sam
# A second run with the same pyproject.toml and extras installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-}"
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

# Open3D needs libusb-1.0 at import time.
if ! PATH="$PATH:/sbin:/usr/sbin" ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing Debian package libusb-1.0-0 (needed by open3d)"
    (apt-get install -y -q libusb-1.0-0 >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q libusb-1.0-0 >/dev/null; })
  else
    echo "[setup] open3d needs libusb-1.0: please run 'sudo apt-get install libusb-1.0-0' (Debian/Ubuntu)" >&2
    exit 1
  fi
fi

# The web app's browser test (tests/test_app.py, extras dev + app) drives Debian's chromium through Playwright.
case ",$EXTRAS," in
  *,dev,*) case ",$EXTRAS," in
    *,app,*)
      if ! command -v chromium >/dev/null && [ ! -x /usr/lib/chromium/chromium ]; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
          echo "[setup] installing Debian package chromium (for the web app's browser test)"
          (apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }) \
            || echo "[setup] could not install chromium; tests/test_app.py will be skipped" >&2
        else
          echo "[setup] tests/test_app.py needs Chromium: 'sudo apt-get install chromium' (else it is skipped)" >&2
        fi
      fi ;;
  esac ;;
esac

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
want="$(cat pyproject.toml | sha1sum | cut -c1-16)-${EXTRAS}"
stamp="$VENV/.installed"
if [ -f "$stamp" ] && grep -qxF -- "$want" "$stamp"; then
  echo "[setup] environment $VENV is up to date (extras: ${EXTRAS:-none})"
  exit 0
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
spec="."
[ -n "$EXTRAS" ] && spec=".[${EXTRAS}]"
echo "[setup] installing $spec into $VENV (first time takes a few minutes)"
"$VENV/bin/python" -m pip install -q -e "$spec"
echo "$want" >> "$stamp"
