#!/usr/bin/env bash
# Streamed vs all-resident Elsa-L step time on a synthetic model that fits in
# RAM: the same run twice, state kept in RAM (the default when it fits) and
# with --streamed (state read back from the store every step, gradients
# spilled), side by side; prints each step's time and the median ratio over
# the steps after the first.
#
# Usage: scripts/elsa_stream_ratio.sh [DIR]  (default /tmp/synth-1k8v8; STEPS=5 BATCH=4 SEQLEN=256)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-/tmp/synth-1k8v8}
steps=${STEPS:-5} batch=${BATCH:-4} seqlen=${SEQLEN:-256}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/elsa-stream" ./cmd/elsa-stream
[ -d "$dir" ] || go run ./scripts/synth --out "$dir" --hidden 1024 --intermediate 2816 --heads 8 --layers 8 --vocab 8000 --tied
python3 -c 'import random, struct, sys; random.seed(0); sys.stdout.buffer.write(struct.pack("<%dH" % 65536, *[random.randrange(8000) for _ in range(65536)]))' >"$tmp/calib.tok"
for mode in resident streamed; do
	flag=()
	[ "$mode" = streamed ] && flag=(--streamed)
	"$tmp/elsa-stream" --model "$dir" --method elsa-l --steps "$steps" --batch "$batch" --seqlen "$seqlen" --calib "$tmp/calib.tok" \
		--calib-format tokens --out "$tmp/out-$mode" --work "$tmp/work-$mode" "${flag[@]}" 2>&1 | grep -E "^elsa-stream: elsa" || true
done
python3 - "$tmp" "$batch" "$seqlen" <<'PY'
import json, statistics, sys
tmp, n = sys.argv[1], int(sys.argv[2]) * int(sys.argv[3])
t = {}
for mode in ("resident", "streamed"):
    rows = [json.loads(l) for l in open(f"{tmp}/work-{mode}/metrics.jsonl") if '"step"' in l]
    t[mode] = [n / r["tokens_per_second"] for r in rows]
    print(mode, " ".join("%.2fs" % x for x in t[mode]), "state I/O", " ".join("%.2fs" % r["state_io_seconds"] for r in rows))
ratios = [s / r for s, r in zip(t["streamed"][1:-1], t["resident"][1:-1])]
print("streamed/resident step time, median over steps 1..%d: %.3f" % (len(ratios), statistics.median(ratios)))
PY
