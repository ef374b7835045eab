#!/usr/bin/env bash
# The real browser the dashboard test drives: Debian's chromium and chromium-driver
# (/usr/bin/chromium, /usr/bin/chromedriver). Browsers that download their own build do
# not work offline. Installs only when missing and when apt-get can run (as root, or
# with passwordless sudo); otherwise says why and leaves the test to skip with that reason.
set -uo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "install_browser: no apt-get here; the browser test will skip (install chromium and chromedriver to run it)" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "install_browser: not root and no passwordless sudo; the browser test will skip" >&2
    exit 0
  fi
fi
export DEBIAN_FRONTEND=noninteractive
if ! { $SUDO apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 ||
       { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; }; }; then
  echo "install_browser: apt-get could not install chromium and chromium-driver; the browser test will skip" >&2
fi
exit 0
