#!/usr/bin/env bash
# Data-parallel Elsa-L step time for 1, 2 and 4 MPI ranks on loopback
# (one machine: the ranks share its cores, so this measures the protocol's
# cost, not a speed-up), with the bytes and seconds of the gradient sums
# per step, on a synthetic LLaMA-shaped model (HIDDEN, MLP, LAYERS, VOCAB)
# trained on random tokens. Prints one table; the README's 7B / 70B
# projection is computed from its per-step bytes.
#
#   scripts/mpi_bench.sh        # WORK=/tmp/mpi-bench STEPS=6 BATCH=8 SEQLEN=128 RANKS="1 2 4"
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-/tmp/mpi-bench}
HIDDEN=${HIDDEN:-512}
MLP=${MLP:-1376}
LAYERS=${LAYERS:-4}
VOCAB=${VOCAB:-4096}
STEPS=${STEPS:-6}
BATCH=${BATCH:-8}
SEQLEN=${SEQLEN:-128}
RANKS=${RANKS:-1 2 4}
scripts/install_mpi.sh
mkdir -p "$WORK"
go build -tags mpi -o "$WORK/elsa-stream" ./cmd/elsa-stream
go build -o "$WORK/synth" ./scripts/synth
[ -d "$WORK/model" ] || "$WORK/synth" --out "$WORK/model" --hidden "$HIDDEN" --intermediate "$MLP" --heads 8 \
	--layers "$LAYERS" --vocab "$VOCAB" --context "$SEQLEN" >/dev/null
# Random calibration tokens (uint16), enough for every step's windows.
python3 -c "
import random, struct, sys
random.seed(1)
n = $STEPS * $BATCH * ($SEQLEN + 1) * 4 + 100000
sys.stdout.buffer.write(struct.pack('<%dH' % n, *(random.randrange($VOCAB) for _ in range(n))))" >"$WORK/calib.tok"

mpi=(mpirun --oversubscribe --allow-run-as-root --mca btl self,tcp --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo)
echo "| ranks | step s (median) | gradient sums s/step | bytes/step | tokens/s |"
echo "| --- | --- | --- | --- | --- |"
for n in $RANKS; do
	out=$WORK/out-$n
	rm -rf "$out" "$out.work"*
	"${mpi[@]}" -np "$n" "$WORK/elsa-stream" prune --model "$WORK/model" --method elsa-l --sparsity 0.9 \
		--calib "$WORK/calib.tok" --calib-format tokens --steps "$STEPS" --batch "$BATCH" --seqlen "$SEQLEN" \
		--fallback=false --out "$out" --json >"$WORK/res-$n.json" 2>"$WORK/err-$n.log"
	python3 - "$n" "$WORK/res-$n.json" "$out.work/metrics.jsonl" "$BATCH" "$SEQLEN" "$STEPS" <<'EOF'
import json, statistics, sys
n, res, metrics, B, T, steps = sys.argv[1], json.load(open(sys.argv[2])), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
rates = [json.loads(l)["tokens_per_second"] for l in open(metrics) if l.strip()][1:]
step = statistics.median(B * T / r for r in rates)
ar = res.get("all_reduce") or {"seconds": 0, "bytes": 0}
print(f"| {n} | {step:.3f} | {ar['seconds']/steps:.3f} | {ar['bytes']/steps/1e6:.1f} MB | {B*T/step:.0f} |")
EOF
done
