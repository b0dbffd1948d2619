#!/usr/bin/env bash
# Install headless Chromium + chromedriver (Debian packages) for tests/test_viewer_browser.py.
# Idempotent: does nothing when both are already installed. Needs root (CI runs as root). Quiet unless it fails.
set -euo pipefail

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-browser.sh: needs root to apt-get install chromium chromium-driver" >&2
    exit 1
fi

log="$(mktemp "${TMPDIR:-/tmp}/install-browser.XXXXXX.log")"
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core; } >"$log" 2>&1; then
    echo "install-browser.sh: apt-get failed; last lines:" >&2
    tail -n 20 "$log" >&2
    exit 1
fi
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    echo "install-browser.sh: chromium/chromedriver still missing after apt-get install" >&2
    exit 1
fi
echo "install-browser.sh: installed $(chromium --version 2>/dev/null | head -n 1)"
