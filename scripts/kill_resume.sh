#!/usr/bin/env bash
# kill -9 an Elsa / Elsa-L run at random moments, resume it each time with
# --resume, and check that the checkpoint it finally writes is bit-identical
# to an uninterrupted run with the same settings and seed.
#
# Usage: scripts/kill_resume.sh            (METHOD=elsa-l STEPS=40 KILLS=8 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
method=${METHOD:-elsa-l} steps=${STEPS:-40} kills=${KILLS:-8}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bin=$tmp/elsa-stream
go build -o "$bin" ./cmd/elsa-stream
args=(--method "$method" --sparsity 0.9 --steps "$steps" --batch 2 --seqlen 256 --interval 4
	--projection objective --lambda-schedule cosine --lambda-final 0.05 --streamed --force)

"$bin" "${args[@]}" --out "$tmp/a" --work "$tmp/a.work" >/dev/null 2>&1
echo "uninterrupted: $(sha256sum <"$tmp/a/model.safetensors" | cut -c1-16)"

resume=() n=0
while :; do
	"$bin" "${args[@]}" --out "$tmp/b" --work "$tmp/b.work" "${resume[@]}" >>"$tmp/log" 2>&1 &
	pid=$!
	# A random moment within the run: mid-step, mid-commit, mid-output.
	sleep "$(awk -v r=$RANDOM 'BEGIN { printf "%.2f", 0.2 + r / 32767 * 4 }')"
	if [ "$n" -lt "$kills" ] && kill -9 "$pid" 2>/dev/null; then
		{ wait "$pid"; } 2>/dev/null || true
		n=$((n + 1))
		step=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["step"])' "$tmp/b.work/state/journal.json" 2>/dev/null || echo none)
		echo "kill $n: last committed step $step"
		resume=(--resume)
		continue
	fi
	wait "$pid"
	break
done
got=$(sha256sum <"$tmp/b/model.safetensors" | cut -c1-16)
echo "killed $n times, resumed: $got"
cmp "$tmp/a/model.safetensors" "$tmp/b/model.safetensors"
echo "bit-identical"
