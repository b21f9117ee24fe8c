#!/usr/bin/env bash
# Debian's Chromium, for the browser test of `ldm serve` (tests/test_serve_browser.py).
# Playwright drives it through executable_path; Playwright's own browser download
# (`playwright install`) is not used because its download host is not reachable from our
# machines, while Debian's package archive is. Does nothing when Chromium is already there.
set -euo pipefail

for name in chromium chromium-browser; do
    if command -v "$name" >/dev/null 2>&1; then
        exit 0
    fi
done

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-chromium: no apt-get on this machine; install Chromium by hand and set" \
         "LDM_CHROMIUM=/path/to/chromium for the browser test" >&2
    exit 1
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "install-chromium: needs root (or sudo) to run apt-get install chromium" >&2
        exit 1
    fi
    sudo=(sudo)
fi

export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q >/dev/null
# fonts-dejavu-core: a font for the page's text (screenshots otherwise show empty boxes).
"${sudo[@]}" apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >/dev/null
chromium --version
