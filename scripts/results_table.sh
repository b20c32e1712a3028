#!/usr/bin/env bash
# The results table: perplexity of stories260K on the first 100 TinyStories
# validation stories (dense 3.4998) after pruning with magnitude, Wanda,
# SparseGPT, Elsa and Elsa-L at 50/70/80/90% unstructured and 2:4, with the
# wall time of each run (pruning and calibration; evaluation excluded).
# Calibration / training data: the embedded TinyStories *train* text (derived
# from ../shared/data/tinystories-train-more, see
# internal/defaultmodel/stories260K/PROVENANCE.md). One-shot methods: 128
# windows x 512 tokens, seed 0. Elsa / Elsa-L: the defaults of
# `elsa-stream -h` (printed below), seed 0.
#
# MODEL=DIR prunes and evaluates that Hugging Face folder instead of the
# embedded stories260K (the same calibration and evaluation text), e.g.
# the character-level testdata/charllama.
#
# SEEDS="0 1 2" runs every cell once per seed (the seed draws the
# calibration windows and Elsa's batches): cells then show the median
# [min-max] and the median wall time; the CSV holds the medians.
#
# Usage: scripts/results_table.sh [CSV]   (Markdown on stdout; CSV of
#        method,sparsity,ppl,seconds for scripts/plots, default docs/results.csv)
#        METHODS="elsa" ELSA_ARGS="--steps 200" SPARSITIES="0.8 0.9" SEEDS="0 1 2" scripts/results_table.sh /tmp/x.csv
set -euo pipefail
cd "$(dirname "$0")/.."
csv=${1:-docs/results.csv}
methods=${METHODS:-magnitude wanda sparsegpt elsa elsa-l}
sparsities=${SPARSITIES:-0.5 0.7 0.8 0.9 2:4}
seeds=${SEEDS:-0}
read -r -a extra <<<"${ELSA_ARGS:-}"
model=()
if [ -n "${MODEL:-}" ]; then
	model=(--model "$MODEL")
	prune_model=("${model[@]}" --calib internal/defaultmodel/data/train_calib.txt --eval internal/defaultmodel/data/valid_first100.txt)
else
	prune_model=()
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bin=$tmp/elsa-stream
go build -o "$bin" ./cmd/elsa-stream
echo "method,sparsity,ppl,seconds" >"$csv"
head="| method |"
rule="| --- |"
for s in $sparsities; do
	if [ "$s" = "2:4" ]; then head="$head 2:4 |"; else head="$head $(python3 -c "print('%g%%' % (100*$s))") |"; fi
	rule="$rule --- |"
done
echo "$head"
echo "$rule"
for m in $methods; do
	row="| $m |"
	for s in $sparsities; do
		if [ "$s" = "2:4" ]; then args=(--pattern 2:4); else args=(--sparsity "$s"); fi
		if [ "$m" = elsa ] || [ "$m" = elsa-l ]; then args+=("${extra[@]}"); fi
		: >"$tmp/cell"
		for seed in $seeds; do
			"$bin" "${prune_model[@]}" --method "$m" "${args[@]}" --seed "$seed" --out "$tmp/out" --force --json >"$tmp/res.json" 2>"$tmp/err" || { cat "$tmp/err" >&2; exit 1; }
			cat "$tmp/res.json" >>"$tmp/cell"
		done
		read -r cell ppl sec settings < <(python3 -c '
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
p = sorted(r["pruned_ppl"] for r in runs)
med, sec = statistics.median(p), statistics.median(r["seconds"] for r in runs)
e = runs[0]["settings"].get("elsa")
cell = "%.2f" % med if len(p) == 1 else "%.2f [%.2f-%.2f]" % (med, p[0], p[-1])
print("%s %.2f %.0f %s" % (cell.replace(" ", "_"), med, sec, json.dumps(e, separators=(",", ":")) if e else "-"))' "$tmp/cell")
		row="$row ${cell//_/ } (${sec}s) |"
		echo "$m,$([ "$s" = 2:4 ] && echo 2:4 || echo "$s"),$ppl,$sec" >>"$csv"
		[ "$settings" != "-" ] && elsa_settings="$settings"
	done
	echo "$row"
done
echo
echo "seeds: $seeds"
echo
echo "model: ${MODEL:-stories260K (embedded)}"
echo "dense: $("$bin" eval "${model[@]}" --json | python3 -c 'import json,sys; print("%.4f" % json.load(sys.stdin)["ppl"])'); cells: pruned ppl (wall seconds of pruning, calibration included)"
[ -n "${elsa_settings:-}" ] && echo "elsa settings: $elsa_settings"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
