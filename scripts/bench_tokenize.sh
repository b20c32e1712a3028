#!/usr/bin/env bash
# Encoding speed, elsa-stream vs Tokenizers.js (@huggingface/tokenizers), on
# the same JSON-lines file in the same run: the 1000 TinyStories validation
# stories and the train excerpt, 4 times over (~7 MB), for each committed
# real tokenizer.json. elsa-stream runs with 1 thread and with every core;
# Tokenizers.js is single-threaded. Best of 3 for each.
#
# Needs Node and the packages of scripts/tokenizers (cd scripts/tokenizers &&
# npm install). Usage: scripts/bench_tokenize.sh
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/elsa-stream" ./cmd/elsa-stream
python3 - "$tmp/data.jsonl" <<'PY'
import json, sys
docs = []
for f in ["testdata/tinystories-valid-1000/tinystories_valid_first1000.txt", "testdata/tinystories-train/tinystories_train_more.txt"]:
    docs += [d.strip() for d in open(f, encoding="utf-8").read().split("<|endoftext|>") if d.strip()]
with open(sys.argv[1], "w", encoding="utf-8") as out:
    for _ in range(4):
        for d in docs:
            out.write(json.dumps({"text": d}) + "\n")
PY
printf '%-8s %10s %14s %14s %14s %8s\n' tokenizer tokens "js tok/s" "ours 1T tok/s" "ours 2T tok/s" "1T ratio"
for name in llama3 qwen3 gemma3 gpt2 llama2; do
	d=$tmp/$name
	mkdir -p "$d"
	gunzip -c "testdata/tokenizers/$name/tokenizer.json.gz" >"$d/tokenizer.json"
	cp "testdata/tokenizers/$name/tokenizer_config.json" "$d/"
	js=$(node scripts/tokenizers/bench.mjs "$d" "$tmp/data.jsonl")
	ours() { # best of 3 at $1 threads
		for i in 1 2 3; do
			"$tmp/elsa-stream" tokenize --tokenizer "$d" --data "$tmp/data.jsonl" --format jsonl --out "$tmp/ids" --force --threads "$1" --json
		done | python3 -c 'import json,sys; r=[json.loads(l) for l in sys.stdin]; b=min(r, key=lambda x: x["seconds"]); print(b["tokens"], b["seconds"])'
	}
	read -r t1 s1 <<<"$(ours 1)"
	read -r t2 s2 <<<"$(ours 0)"
	python3 - "$name" "$js" "$t1" "$s1" "$s2" <<'PY'
import json, sys
name, js, t1, s1, s2 = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
jt = js["tokens"] / js["seconds"]
print("%-8s %10d %14.0f %14.0f %14.0f %7.2fx%s" % (name, t1, jt, t1 / s1, t1 / s2, (t1 / s1) / jt, "" if js["tokens"] == t1 else "  (token counts differ: %d js)" % js["tokens"]))
PY
done
