#!/usr/bin/env bash
# Elsa-L on a synthetic LLaMA-shaped model whose weights plus optimizer state
# are over 4x the memory budget: a few streamed steps with the peak RSS
# measured from outside (/usr/bin/time), step time, the share of the step
# the compute waited for state, and the state I/O seconds.
#
# Usage: scripts/synth_elsa.sh [DIR]   (default /tmp/synth-2k16v8; BUDGET=1.3G STEPS=4 BATCH=1 SEQLEN=128 PROFILE=FILE
#        COMPUTE=fp32; the model: HIDDEN=2048 MLP=5632 HEADS=16 LAYERS=16 VOCAB=8000)
# Default model: hidden 2048, MLP 5632, 16 heads, 16 layers, vocab 8000, tied,
# bf16: 838.5M parameters, 1.56 GiB of weights, ~4.1 GiB of Elsa-L state.
# The throughput check of README "Throughput" (7B-shaped layers, 16 x 1024 tokens):
#   HIDDEN=4096 MLP=11008 HEADS=32 LAYERS=4 BUDGET=8G STEPS=3 BATCH=16 SEQLEN=1024 COMPUTE=bf16 \
#   scripts/synth_elsa.sh /tmp/synth-7b4
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-/tmp/synth-2k16v8}
budget=${BUDGET:-1.3G} steps=${STEPS:-4} batch=${BATCH:-1} seqlen=${SEQLEN:-128} compute=${COMPUTE:-fp32}
hidden=${HIDDEN:-2048} mlp=${MLP:-5632} heads=${HEADS:-16} layers=${LAYERS:-16} vocab=${VOCAB:-8000}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/elsa-stream" ./cmd/elsa-stream
[ -d "$dir" ] || go run ./scripts/synth --out "$dir" --hidden "$hidden" --intermediate "$mlp" --heads "$heads" --layers "$layers" --vocab "$vocab" --tied
# Calibration: random token ids below the vocabulary, 2 bytes each.
python3 -c 'import random, struct, sys; random.seed(0); sys.stdout.buffer.write(struct.pack("<%dH" % 65536, *[random.randrange(int(sys.argv[1])) for _ in range(65536)]))' "$vocab" >"$tmp/calib.tok"
"$tmp/elsa-stream" plan --model "$dir" --mem-budget "$budget" --method elsa-l --seqlen "$seqlen" --batch "$batch" --compute "$compute" | grep -E "total|granularity|disk:"
/usr/bin/time -v env ELSA_CPUPROFILE="${PROFILE:-}" "$tmp/elsa-stream" --model "$dir" --method elsa-l --sparsity 0.9 --steps "$steps" --batch "$batch" --seqlen "$seqlen" \
	--calib "$tmp/calib.tok" --calib-format tokens --mem-budget "$budget" --compute "$compute" --out "$tmp/out" --work "$tmp/work" 2>"$tmp/time" | tail -4 ||
	{ echo "the run failed:"; grep -v '^\s' "$tmp/time" | tail -5; exit 1; }
grep -E "Maximum resident|Elapsed" "$tmp/time"
python3 - "$tmp/work/metrics.jsonl" "$((batch * seqlen))" <<'PY'
import json, os, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"step"' in l]
for r in rows:
    sec = int(sys.argv[2]) / r["tokens_per_second"]
    print("step %d: %.1fs, loss %.3f, compute waited for state %.1fs (%.0f%%), state I/O %.1fs" % (
        r["step"], sec, r["loss"], r["io_wait_seconds"], 100 * r["io_wait_seconds"] / sec, r["state_io_seconds"]))
PY
du -sh "$tmp/work/state" "$tmp/work/grads" | sed 's/^/on disk: /'
