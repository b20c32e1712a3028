#!/usr/bin/env bash
# Decoding at batch 1, dense vs packed, on a synthetic model with 7B-shaped
# layers (hidden 4096, MLP 11008, 32 heads; LAYERS layers, a VOCAB-token
# head so the layers dominate), pruned by magnitude at 50 / 70 / 90% and
# 2:4, all in one run: decode tokens/s (median of ROUNDS runs, dense and
# packed interleaved), bytes read per token, the memory bandwidth measured
# by the same run (kernels.StreamRead over 2 GiB) and the bound it sets
# (bandwidth / bytes per token), the size of the tensor files, and the
# prefill rate of a PROMPT-token prompt (kernels.BatchTokens tokens per
# product).
#
# The weights are read into memory (generate --no-mmap), as the bandwidth
# probe's buffer is: on a virtual machine the page-cache pages of a mapped
# file sit on host memory of uneven speed (here the 90%-pruned dense folder
# decoded at 12.6 tok/s mapped and at 17.9 from a fresh copy of the same
# file; read into memory, every dense model decodes at 17.0-17.5). MMAP=1
# maps them instead, as generate does by default.
#
#   scripts/decode_bench.sh            # WORK=/tmp/decode-bench LAYERS=4 VOCAB=4096 ROUNDS=3 TOKENS=32 PROMPT=64 MMAP=0
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-/tmp/decode-bench}
LAYERS=${LAYERS:-4}
VOCAB=${VOCAB:-4096}
ROUNDS=${ROUNDS:-3}
TOKENS=${TOKENS:-32}
PROMPT=${PROMPT:-64}
export MMAP=${MMAP:-0}
read_flag=(--no-mmap)
[ "$MMAP" = 1 ] && read_flag=()
prompt=$(seq -s, 1 "$PROMPT")
mkdir -p "$WORK"
go build -o "$WORK/elsa-stream" ./cmd/elsa-stream
go build -o "$WORK/synth" ./scripts/synth
es=$WORK/elsa-stream

dense=$WORK/dense
[ -d "$dense" ] || "$WORK/synth" --out "$dense" --hidden 4096 --intermediate 11008 --heads 32 --layers "$LAYERS" --vocab "$VOCAB" --context 512 >/dev/null

declare -A args=([50]="--sparsity 0.5" [70]="--sparsity 0.7" [90]="--sparsity 0.9" [2:4]="--pattern 2:4")
cells=(50 70 90 2:4)
for c in "${cells[@]}"; do
	d=$WORK/p${c/:/-}
	[ -d "$d.packed" ] || "$es" prune --model "$dense" --method magnitude ${args[$c]} --out "$d" --pack "$d.packed" --force >/dev/null
done

bw=$(go test -run XXX -bench 'StreamRead$' -benchtime 3x ./internal/kernels | awk '/BenchmarkStreamRead/ {print $(NF-1)}')
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)

# measure DIR: decode tokens/s and bytes per token (a one-token prompt),
# then the prefill tokens/s of the PROMPT-token prompt.
declare -A runs
measure() {
	"$es" generate "${read_flag[@]}" --model "$1" --prompt-ids 1 --max-tokens "$TOKENS" --json |
		python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["decode_tokens_per_second"], d["weight_bytes_per_token"], end=" ")'
	"$es" generate "${read_flag[@]}" --model "$1" --prompt-ids "$prompt" --max-tokens 1 --json |
		python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["prefill_tokens_per_second"])'
}
for r in $(seq "$ROUNDS"); do
	for c in dense "${cells[@]}"; do
		if [ "$c" = dense ]; then dirs=("$dense"); else dirs=("$WORK/p${c/:/-}" "$WORK/p${c/:/-}.packed"); fi
		for d in "${dirs[@]}"; do runs[$d]+="$(measure "$d");"; done
	done
done

python3 - "$bw" "$cpu" "$LAYERS" "$VOCAB" "$TOKENS" "$ROUNDS" "$dense" "$WORK" "$PROMPT" "${cells[@]}" <<'EOF' 3<<<"$(for k in "${!runs[@]}"; do echo "$k=${runs[$k]}"; done)"
import os, statistics, sys
bw, cpu, layers, vocab, tokens, rounds, dense, work, prompt = sys.argv[1:10]
cells = sys.argv[10:]
bw = float(bw) * 1e6  # MB/s -> B/s
runs = {}
for line in os.fdopen(3).read().splitlines():
    k, v = line.split('=', 1)
    runs[k] = [tuple(map(float, x.split())) for x in v.strip(';').split(';')]
def rate(d): return statistics.median(r[0] for r in runs[d]), runs[d][0][1]
def prefill(d): return statistics.median(r[2] for r in runs[d])
def size(d): return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(('.safetensors', '.elsa')))
dr, db = rate(dense)
print(f"CPU: {cpu}; memory bandwidth {bw/1e9:.1f} GB/s (StreamRead, 2 GiB); {layers} layers 4096/11008, vocab {vocab}, bf16; "
      f"{tokens} tokens decoded, median of {rounds} runs; prefill: a {prompt}-token prompt; "
      f"weights {'mapped' if os.environ['MMAP'] == '1' else 'read into memory (--no-mmap)'}")
print()
print("| model | decode tok/s | vs dense | bytes/token | bound tok/s | of bound | tensor files | smaller | prefill tok/s |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
ds = size(dense)
print(f"| dense bf16 | {dr:.2f} | 1.00x | {db/1e6:.1f} MB | {bw/db:.2f} | {100*dr/(bw/db):.0f}% | {ds/1e6:.0f} MB | 1.00x | {prefill(dense):.1f} |")
for c in cells:
    d = f"{work}/p{c.replace(':', '-')}"
    for name, path in ((f"{c}{'%' if c != '2:4' else ''} dense", d), (f"{c}{'%' if c != '2:4' else ''} packed", d + ".packed")):
        r, b = rate(path)
        s = size(path)
        print(f"| {name} | {r:.2f} | {r/dr:.2f}x | {b/1e6:.1f} MB | {bw/b:.2f} | {100*r/(bw/b):.0f}% | {s/1e6:.0f} MB | {ds/s:.2f}x | {prefill(path):.1f} |")
EOF
