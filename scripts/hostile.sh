#!/usr/bin/env bash
# Hostile inputs and careless commands against the built binary (the hostile-input review).
# Every case runs with a time limit and prints one table row: exit code,
# first line of stderr, whether it panicked, whether the model survived,
# and what it left behind (temporary folders, lock files, outputs that must
# not exist). No row may panic, hang, damage the model or exit 0 with a
# wrong model.
#
#   scripts/hostile.sh [OUT.md]     (about a minute on 2 cores)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-/dev/stdout}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bin=$tmp/elsa-stream
go build -o "$bin" ./cmd/elsa-stream || exit 1
export XDG_CACHE_HOME=$tmp/cache
calib=testdata/tinystories-train/tinystories_train_more.txt
valid=testdata/tinystories-valid-1000/tinystories_valid_first1000.txt

"$bin" import llama2c --model testdata/stories260K/stories260K.bin --tokenizer testdata/stories260K/tok512.bin \
	--out "$tmp/pristine" >/dev/null 2>&1 || exit 1
S=$tmp/s # every case's scratch folder: the model and whatever a case makes
M=$S/model

digest() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-12; }
pristine=$(digest "$tmp/pristine")

fresh() { # a clean scratch folder holding an untouched copy of the model
	rm -rf "$S"
	mkdir -p "$S"
	cp -r "$tmp/pristine" "$M"
	echo "keep me" >"$S/notes.txt"
	BEFORE=$pristine
}

# left: entries of the scratch folder that a finished run must not leave.
left() {
	(cd "$S" && find . -name '.*.tmp-*' -o -name '.*.lock' -o -name 'checkpoints-*' | sort | tr '\n' ' ')
	for f in "$@"; do [ -e "$f" ] && printf '%s ' "${f#"$S"/}"; done
}

printf '| case | exit | first line of stderr | panic | model intact | left behind |\n| --- | --- | --- | --- | --- | --- |\n' >"$out"
row() { # row NAME EXIT ERRFILE [paths that must not exist...]
	local name=$1 rc=$2 err=$3
	shift 3
	local first panic=no intact=yes
	# The error line ("elsa-stream CMD: ..."), not a progress note before it.
	first=$( (grep -E '^elsa-stream [a-z]+: ' "$err" || grep -v '^$' "$err") | head -1 | cut -c1-150 | sed 's/|/\\|/g; s#'"$S"'/##g; s#'"$tmp"'/##g')
	grep -qE '^(panic:|fatal error:)|^goroutine [0-9]+ \[' "$err" && panic=YES
	[ -d "$M" ] && [ "$(digest "$M")" = "$BEFORE" ] || intact=NO
	[ -f "$S/notes.txt" ] || intact="NO (notes.txt deleted)"
	[ "$rc" = 124 ] && rc="124 (HUNG)"
	printf '| %s | %s | %s | %s | %s | %s |\n' "$name" "$rc" "$first" "$panic" "$intact" "$(left "$@")" >>"$out"
}

# case NAME [--expect-absent PATH]... -- ARGS...: one run of the binary.
case_() {
	local name=$1
	shift
	local absent=()
	while [ "$1" != -- ]; do absent+=("$2"); shift 2; done
	shift
	BEFORE=$(digest "$M") # the model as the case's set-up left it
	timeout 60 "$bin" "$@" >"$S/stdout" 2>"$S/stderr" </dev/null
	local rc=$?
	row "$name" "$rc" "$S/stderr" "${absent[@]}"
	rm -f "$S/stdout" "$S/stderr"
}

set_config() { # set_config KEY JSON-VALUE: edit the model's config.json
	python3 -c 'import json,sys; p=sys.argv[1]; c=json.load(open(p)); c[sys.argv[2]]=json.loads(sys.argv[3]); json.dump(c,open(p,"w"))' "$M/config.json" "$1" "$2"
}
poison() { # poison TENSOR INDEX: a NaN in a float32 tensor of the model
	python3 - "$M/model.safetensors" "$1" "$2" <<'EOF'
import json, struct, sys
p, name, i = sys.argv[1], sys.argv[2], int(sys.argv[3])
b = bytearray(open(p, 'rb').read())
n = struct.unpack('<Q', b[:8])[0]
t = json.loads(b[8:8 + n])[name]
off = 8 + n + t['data_offsets'][0] + 4 * i
b[off:off + 4] = struct.pack('<f', float('nan'))
open(p, 'wb').write(b)
EOF
}

# 0. Fresh machine with a C compiler: the default build compiles no cgo.
fresh
CGO_ENABLED=1 go vet ./... >"$S/stdout" 2>"$S/stderr"
row "0 go vet with cgo on, no libopenblas-dev" $? "$S/stderr"

# 1. Data loss.
fresh; case_ "1 --out = --model --force" -- --model "$M" --out "$M" --force --method magnitude
fresh; case_ "1 --out = parent of the model --force" -- --model "$M" --out "$S" --force --method magnitude
fresh; case_ "1 --out inside the model" -- --model "$M" --out "$M/sub" --method magnitude

# 2. Locking: two runs at once with the same --out, then the same --work.
for what in out work; do
	fresh
	if [ $what = out ]; then a=(--out "$S/o"); b=(--out "$S/o"); else a=(--out "$S/o1" --work "$S/w"); b=(--out "$S/o2" --work "$S/w"); fi
	timeout 120 "$bin" --model "$M" --method elsa --steps 40 --batch 4 --seqlen 64 --calib "$calib" --calib-format text "${a[@]}" >/dev/null 2>"$S/err1" &
	sleep 1
	timeout 60 "$bin" --model "$M" --method magnitude "${b[@]}" >/dev/null 2>"$S/stderr" </dev/null
	rc=$?
	wait
	row "2 two runs, same --$what (second run)" $rc "$S/stderr"
	grep -q . "$S/err1" && ! grep -q "elsa, 40 steps" "$S/err1" && row "2 two runs, same --$what (first run)" 1 "$S/err1"
	rm -f "$S/err1" "$S/stderr"
done
fresh; mkdir -p "$S/o"
case_ "2 empty --out already there, no --force" -- --model "$M" --method magnitude --out "$S/o"

# 3. Token ids past the vocabulary (512).
fresh
python3 -c 'import struct,sys; open(sys.argv[1],"wb").write(struct.pack("<4000H", *[(600 if i == 3000 else i % 500) for i in range(4000)]))' "$S/ids.bin"
case_ "3 --calib-format tokens, id 600" --expect-absent "$S/o" -- --model "$M" --method wanda --calib "$S/ids.bin" --calib-format tokens --seqlen 256 --nsamples 4 --out "$S/o"
case_ "3 --eval-format tokens, id 600" --expect-absent "$S/o" -- --model "$M" --method magnitude --eval "$S/ids.bin" --eval-format tokens --out "$S/o"

# 4. Sizes before allocation.
fresh; set_config num_hidden_layers 1000000000
case_ "4 num_hidden_layers 1e9, --mem-budget 2G" -- eval --model "$M" --mem-budget 2G
fresh; set_config intermediate_size 4611686018427387904
case_ "4 plan --config, intermediate_size 2^62" -- plan --config "$M/config.json" --mem-budget 32G

# 5. Non-finite numbers.
for m in magnitude wanda sparsegpt elsa; do
	fresh; poison model.layers.1.self_attn.k_proj.weight 17
	case_ "5 NaN weight, $m" --expect-absent "$S/o" -- --model "$M" --method $m --steps 2 --batch 1 --seqlen 64 --nsamples 4 --calib "$calib" --calib-format text --out "$S/o"
done
fresh; poison model.layers.1.self_attn.k_proj.weight 17
case_ "5 NaN weight, eval" -- eval --model "$M" --max-stories 5
fresh
case_ "5 --sparsity NaN" -- --model "$M" --method magnitude --sparsity NaN --out "$S/o"
case_ "5 --clip NaN" -- --model "$M" --clip NaN --out "$S/o"
printf 'model.layers.0: NaN\n' >"$S/alloc.txt"
case_ "5 NaN in an allocation file" --expect-absent "$S/o" -- --model "$M" --method magnitude --allocation "$S/alloc.txt" --out "$S/o"
case_ "5 --lr 1e30" --expect-absent "$S/o" -- --model "$M" --lr 1e30 --steps 4 --batch 1 --seqlen 32 --calib "$calib" --calib-format text --out "$S/o" --work "$S/w"
grep -q '"error"' "$S/w/metrics.jsonl" 2>/dev/null && printf '| 5 --lr 1e30: metrics.jsonl has the diverged step | | %s | | | |\n' "$(tail -1 "$S/w/metrics.jsonl" | cut -c1-120)" >>"$out"

# 6. The mapped model file shrinks during a run (mmap and pread).
for mode in mmap no-mmap; do
	fresh
	extra=(); [ $mode = no-mmap ] && extra=(--no-mmap)
	timeout 60 "$bin" eval --model "$M" --data "$valid" --seqlen 64 "${extra[@]}" >/dev/null 2>"$S/stderr" &
	sleep 0.7
	truncate -s 4096 "$M/model.safetensors"
	wait $!
	rc=$?
	cp "$tmp/pristine/model.safetensors" "$M/"
	row "6 model.safetensors truncated during eval ($mode)" $rc "$S/stderr"
	rm -f "$S/stderr"
done

# 7. N:M that does not divide the rows (64 and 172 columns).
fresh
case_ "7 --pattern 1:1000" -- --model "$M" --method magnitude --pattern 1:1000 --out "$S/o"
case_ "7 --pattern 2:5" -- --model "$M" --method magnitude --pattern 2:5 --out "$S/o"

# 8. FIFOs where files are expected.
fresh; mkfifo "$S/fifo"
case_ "8 FIFO as --calib" -- --model "$M" --method wanda --calib "$S/fifo" --out "$S/o"
rm "$M/model.safetensors"; mkfifo "$M/model.safetensors"
case_ "8 FIFO as the model file" -- eval --model "$M"
fresh
"$bin" --model "$M" --method magnitude --max-shard-size 100KB --out "$S/sharded" >/dev/null 2>&1
shard1=$(ls "$S/sharded"/model-00001-of-*.safetensors)
rm "$shard1"; mkfifo "$shard1"
case_ "8 FIFO as a shard" -- eval --model "$S/sharded"
rm -rf "$S/sharded"

# 9. Smaller ones.
fresh
case_ "9 --seqlen 1024 > context 512 (eval)" -- eval --model "$M" --seqlen 1024
case_ "9 --seqlen 1024 > context 512 (prune)" -- --model "$M" --method wanda --seqlen 1024 --calib "$calib" --out "$S/o"
case_ "9 --work inside --out" -- --model "$M" --method magnitude --out "$S/o" --work "$S/o/w"
mkdir -p "$S/o/w"; echo state >"$S/o/w/keep"
case_ "9 --work inside --out, --force" --expect-absent "$S/o/w/nothing" -- --model "$M" --method magnitude --out "$S/o" --work "$S/o/w" --force
[ -f "$S/o/w/keep" ] || printf '| 9 --work inside --out, --force: WORK DIR WIPED | | | | | |\n' >>"$out"
rm -rf "$S/o"
"$bin" --model "$M" --method elsa --steps 40 --batch 4 --seqlen 64 --calib "$calib" --calib-format text --out "$S/o" >/dev/null 2>&1 &
sleep 2; kill -9 $! 2>/dev/null; wait $! 2>/dev/null
printf '| 9 kill -9 during a run leaves | | | | | %s |\n' "$(left)" >>"$out"
case_ "9 next run after kill -9" -- --model "$M" --method magnitude --out "$S/o" --force
fresh; printf '{"hidden_size": 1}' >>"$M/config.json"
case_ "9 trailing data after config.json's object" -- eval --model "$M"
fresh; set_config sliding_window 128
case_ "9 sliding_window 128 < context (now implemented: exit 0)" -- eval --model "$M" --max-stories 3
fresh
case_ "9 --sparsity -0.5" -- --model "$M" --method magnitude --sparsity -0.5 --out "$S/o"
case_ "9 --lambda-final -1" -- --model "$M" --lambda-final -1 --out "$S/o"
case_ "9 --mem-budget 1000T" -- --model "$M" --method magnitude --mem-budget 1000T --out "$S/o"
case_ "9 --max-shard-size 0" -- --model "$M" --method magnitude --max-shard-size 0 --out "$S/o"
: >"$M/tokenizer.model"; rm -f "$M/tokenizer.json"
case_ "9 empty tokenizer.model" -- eval --model "$M" --max-stories 3
