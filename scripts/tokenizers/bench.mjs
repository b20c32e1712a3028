// Encoding speed of Tokenizers.js on a JSON-lines file, one document per
// line (the peer scripts/bench_tokenize.sh compares elsa-stream with).
//   node bench.mjs DIR DATA.jsonl   (DIR holds tokenizer.json and tokenizer_config.json)
import { Tokenizer } from "@huggingface/tokenizers";
import fs from "node:fs";
import path from "node:path";

const [dir, data] = process.argv.slice(2);
const tok = new Tokenizer(JSON.parse(fs.readFileSync(path.join(dir, "tokenizer.json"), "utf8")),
	JSON.parse(fs.readFileSync(path.join(dir, "tokenizer_config.json"), "utf8")));
const docs = fs.readFileSync(data, "utf8").split("\n").filter((l) => l !== "").map((l) => JSON.parse(l).text);
const bytes = docs.reduce((n, d) => n + Buffer.byteLength(d), 0);
let best = Infinity, tokens = 0;
for (let run = 0; run < 3; run++) {
	const t = process.hrtime.bigint();
	tokens = 0;
	for (const d of docs) tokens += tok.encode(d).ids.length;
	best = Math.min(best, Number(process.hrtime.bigint() - t) / 1e9);
}
console.log(JSON.stringify({ documents: docs.length, bytes, tokens, seconds: best }));
