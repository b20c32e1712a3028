#!/usr/bin/env bash
# One LLaMA-7B-shaped block (hidden 4096, MLP 11008, 32 heads) at 512 tokens:
# elsa-stream's BenchmarkBlock and the same block in PyTorch CPU (Debian
# python3-torch: float32, and bf16 autocast), same thread counts, in one run;
# ours with fp32 and with bf16 GEMMs (--compute).
#
# Needs: apt-get install python3-torch libopenblas0-pthread. Debian's torch
# uses whatever libblas.so.3 the alternatives system points at: with only the
# reference BLAS it runs at ~2 GFLOP/s, so OpenBLAS is installed, and
# OPENBLAS_CORETYPE=SkylakeX is set because OpenBLAS 0.3.21 otherwise takes
# its SSE3 "Prescott" path on these CPUs (docs/design.md, "This machine class").
#
# Usage: scripts/bench_block.sh [threads...]   (default: 1 2)
set -euo pipefail
cd "$(dirname "$0")/.."
threads=("${@:-1 2}")
[ $# -eq 0 ] && threads=(1 2)
cpus=$(IFS=,; echo "${threads[*]}")
echo "# $(date -u +%FT%TZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
echo "# kernels backend: ${ELSA_KERNELS:-default}"
go test ./model -run XXX -bench 'BenchmarkBlock/7B/' -benchtime 2x -count 1 -cpu "$cpus" | grep -E '^Benchmark'
for t in "${threads[@]}"; do
	for dtype in fp32 bf16; do
		OPENBLAS_CORETYPE=SkylakeX OMP_NUM_THREADS=$t /usr/bin/python3 scripts/bench_block.py --threads "$t" --reps 2 --dtype $dtype
	done
done
