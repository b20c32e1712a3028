#!/usr/bin/env bash
# Perplexity of stories260K on the first 100 TinyStories validation stories
# after one-shot pruning with magnitude, Wanda and SparseGPT at 50/70/80/90%
# unstructured and 2:4. Calibration: the embedded TinyStories *train* text
# (derived from ../shared/data/tinystories-train-more, see
# internal/defaultmodel/stories260K/PROVENANCE.md), 128 windows x 512 tokens,
# seed 0. Evaluation: the embedded first 100 validation stories (dense 3.4998).
#
# Usage: scripts/baselines_table.sh   (prints a Markdown table)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(mktemp -d)/elsa-stream
go build -o "$bin" ./cmd/elsa-stream
echo "| method | 50% | 70% | 80% | 90% | 2:4 |"
echo "| --- | --- | --- | --- | --- | --- |"
for m in magnitude wanda sparsegpt; do
	row="| $m |"
	for s in 0.5 0.7 0.8 0.9 2:4; do
		if [ "$s" = "2:4" ]; then args=(--pattern 2:4); else args=(--sparsity "$s"); fi
		ppl=$("$bin" --method "$m" "${args[@]}" --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.2f (%.0fs)" % (d["pruned_ppl"], d["seconds"]))')
		row="$row $ppl |"
	done
	echo "$row"
done
echo
echo "dense: $("$bin" eval --json | python3 -c 'import json,sys; print("%.4f" % json.load(sys.stdin)["ppl"])'); cells: pruned ppl (prune seconds, calibration included)"
