#!/usr/bin/env bash
# Create .venv (if needed) and install bestiary, its plugins and the given requirements file into it.
set -euo pipefail
cd "$(dirname "$0")/.."
requirements="${1:-requirements/runtime.txt}"
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r "$requirements"
.venv/bin/python -m pip install --quiet --no-deps -r requirements/fixtures.txt
