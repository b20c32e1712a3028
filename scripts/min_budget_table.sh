#!/usr/bin/env bash
# The smallest budget `plan` accepts for eval, sparsegpt (128 × 2048
# calibration tokens) and elsa-l (8 × 2048 per step) of the large configs,
# one markdown row per model. BIN (default: a fresh build) is the binary to
# ask, so two versions can be compared side by side.
#   scripts/min_budget_table.sh            BIN=/path/to/old/elsa-stream scripts/min_budget_table.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-}
if [ -z "$bin" ]; then
	bin=$(mktemp -d)/elsa-stream
	go build -o "$bin" ./cmd/elsa-stream
fi
printf '| model | eval (1 × 2048) | sparsegpt (128 × 2048) | elsa-l (8 × 2048) |\n| --- | --- | --- | --- |\n'
for cfg in llama-2-7b llama-3.1-8b qwen2.5-32b gemma-2-27b llama-2-70b; do
	row="| $cfg"
	for job in "eval 1" "sparsegpt 128" "elsa-l 8"; do
		set -- $job
		min=$("$bin" plan --config "configs/$cfg.json" --method "$1" --batch "$2" --seqlen 2048 --mem-budget 1T --gflops 100 --json 2>/dev/null |
			python3 -c 'import json,sys
try:
    d=json.load(sys.stdin); print("%.2f GiB" % (d["plan"]["min_budget"]/2**30) if d.get("fits") else "-")
except Exception: print("refused")' || true)
		row="$row | $min"
	done
	echo "$row |"
done
