#!/usr/bin/env bash
# GEMM: elsa-stream's packed kernels vs OpenBLAS, side by side in one run.
# Prints the measured one-core FMA peak, then per form/shape/thread count
# GFLOP/s of ours and of OpenBLAS, the ratio, and ours as % of the peak
# (times the thread count).
#
# Needs Debian's libopenblas-dev (apt-get install libopenblas-dev) and cgo for
# the OpenBLAS side only; ours is the default pure-Go/asm build.
# OPENBLAS_CORETYPE=SkylakeX is exported unless already set: Debian's 0.3.21
# may otherwise pick its SSE3 "Prescott" path (docs/design.md, "This machine class").
#
# Usage: scripts/bench_gemm.sh [-benchtime 5x] [-count 3] [bench regexp]   (default: the fp32
# GEMMs; the bf16 ones never go to OpenBLAS)
set -euo pipefail
cd "$(dirname "$0")/.."
benchtime=5x count=3 filter='Gemm/.*/fp32/'
while [ $# -gt 0 ]; do
	case "$1" in
	-benchtime) benchtime=$2; shift 2 ;;
	-count) count=$2; shift 2 ;;
	*) filter=$1; shift ;;
	esac
done
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-SkylakeX}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
bin=$(mktemp -d)/kernels.test
CGO_ENABLED=1 go test -tags openblas -c -o "$bin" ./internal/kernels
echo "# $(date -u +%FT%TZ) $(nproc) cores,$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); load: $(cut -d' ' -f1-3 /proc/loadavg)"
"$bin" -test.run XXX -test.bench 'FMAPeak' -test.benchtime 5x | grep -E '^Benchmark' | tee -a "$out"
for round in $(seq "$count"); do
	ELSA_KERNELS=avx512 "$bin" -test.run XXX -test.bench "$filter" -test.benchtime "$benchtime" | grep -E '^Benchmark' | sed 's/^/ours /' >>"$out"
	ELSA_KERNELS=openblas "$bin" -test.run XXX -test.bench "$filter" -test.benchtime "$benchtime" | grep -E '^Benchmark' | sed 's/^/openblas /' >>"$out"
done
awk '
/^BenchmarkFMAPeak/ { for (i = 1; i <= NF; i++) if ($(i+1) == "GFLOP/s") peak = $i }
/^(ours|openblas) / {
	name = $2; sub(/-[0-9]+$/, "", name); sub(/^BenchmarkGemm\//, "", name)
	for (i = 1; i <= NF; i++) if ($(i+1) == "GFLOP/s") v = $i
	key = $1 SUBSEP name; n[key]++; vals[key, n[key]] = v
	if (!(name in seen)) { seen[name] = 1; order[++cnt] = name }
}
function median(key,   m, i, j, t, a) {
	m = n[key]; for (i = 1; i <= m; i++) a[i] = vals[key, i]
	for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
	return (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
}
END {
	printf "FMA peak (one core, measured): %.1f GFLOP/s; medians of %d runs\n", peak, n["ours" SUBSEP order[1]]
	printf "%-34s %10s %10s %7s %9s\n", "form/shape/threads", "ours", "openblas", "ratio", "%peak"
	for (i = 1; i <= cnt; i++) {
		name = order[i]; o = median("ours" SUBSEP name); b = median("openblas" SUBSEP name)
		t = name; sub(/.*threads=/, "", t)
		printf "%-34s %10.1f %10.1f %7.2f %8.0f%%\n", name, o, b, o / b, 100 * o / (peak * t)
	}
}' "$out"
