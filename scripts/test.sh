#!/usr/bin/env bash
# Install (if needed) and run the whole test suite. This is what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install_browser.sh  # for the dashboard's browser test
exec .venv/bin/python -m pytest -q "$@"
