#!/usr/bin/env bash
# The sweep's chaos tests, N times in a row (default 10), beside two CPU-bound loops:
# races show only under load. Prints each round's time and the chaos seeds; stops at
# the first failure. Usage: scripts/chaos_loaded.sh [N]
set -uo pipefail
N=${1:-10}
PY=${PYTHON:-.venv/bin/python}
busy() { while :; do :; done; }
busy & B1=$!
busy & B2=$!
trap 'kill $B1 $B2 2>/dev/null' EXIT
for i in $(seq 1 "$N"); do
    start=$(date +%s)
    out=$(HF_HUB_OFFLINE=1 "$PY" -m pytest -q -m chaos tests/sweep/test_sweep_chaos.py -s -p no:cacheprovider 2>&1)
    code=$?
    seeds=$(echo "$out" | grep -o "chaos seed [0-9]*: .*s$" | sed 's/: \[.*\]; / /' | tr '\n' ';')
    echo "round $i: exit $code, $(( $(date +%s) - start )) s; ${seeds}"
    if [ $code -ne 0 ]; then
        echo "$out" | tail -40
        exit 1
    fi
done
