#!/usr/bin/env bash
# Install everything into .venv and run the whole test suite. Fails when pytest collects no test.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v espeak-ng >/dev/null || ! command -v sox >/dev/null; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
        (apt-get update -qq && apt-get install -y -qq espeak-ng sox >/dev/null) || echo "warning: could not install espeak-ng/sox"
    fi
fi
bash scripts/setup.sh requirements/test.txt
# Two workers, one thread each: tiny test models run faster single-threaded, and CI has two cores.
export BESTIARY_STRICT_PLUGINS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --durations=25 "$@"
status=$?
set -e
if [ "$status" = "5" ]; then
    echo "pytest collected no tests: failing on purpose" >&2
    exit 1
fi
exit "$status"
