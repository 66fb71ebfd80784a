#!/usr/bin/env bash
# Copy a finished study's small, readable files into results/<name>/ for publication:
# the compare outputs (figure6.png/.pdf, results.csv/.md, the TensorBoard layout) and, for each
# run, config.yaml, summary.json, metrics.jsonl and its TensorBoard event files. No checkpoints.
#
#   bash results/publish.sh outputs/laptop            -> results/laptop/
#
# Run `resexp compare STUDY` first (it writes the figure, the tables and the TensorBoard extras).
set -euo pipefail
study=${1:?usage: results/publish.sh STUDY_DIR [DEST]}
dest=${2:-$(dirname "$0")/$(basename "$study")}
mkdir -p "$dest"
for f in figure6.png figure6.pdf results.csv results.md events.out.tfevents.*; do
    [ -e "$study/$f" ] && cp "$study/$f" "$dest/"
done
for run in "$study"/*/seed*; do
    case "$run" in *.old-*) continue ;; esac
    [ -f "$run/summary.json" ] || continue
    rel=${run#"$study"/}
    mkdir -p "$dest/$rel"
    cp "$run"/config.yaml "$run"/summary.json "$run"/metrics.jsonl "$run"/events.out.tfevents.* \
        "$dest/$rel/"
done
du -sh "$dest"
