package main

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// TestTokenizeThenEval: the stories protocol tokenized once and read back
// with --format tokens gives the perplexity of --format stories itself,
// and the ids equal the reference token stream.
func TestTokenizeThenEval(t *testing.T) {
	in := importModel(t)
	valid := "../../testdata/tinystories-valid-1000/tinystories_valid_first1000.txt"
	ids := filepath.Join(t.TempDir(), "ids.bin")
	code, out, stderr := runCLI(t, "tokenize", "--model", in, "--data", valid, "--format", "stories", "--out", ids, "--json")
	var st struct {
		Documents, Tokens, TokenBytes int64
	}
	if code != 0 || json.Unmarshal([]byte(strings.ReplaceAll(out, "token_bytes", "TokenBytes")), &st) != nil || st.Documents != 1000 || st.TokenBytes != 2 {
		t.Fatalf("tokenize: exit %d %s %s", code, out, stderr)
	}
	got, _ := os.ReadFile(ids)
	ref, _ := os.ReadFile("../../testdata/tinystories-valid-1000/stories260K_tok512.u16.bin")
	if !bytes.Equal(got, ref) {
		t.Fatal("tokenize --format stories differs from the reference token stream")
	}
	ppl := func(args ...string) float64 {
		code, out, stderr := runCLI(t, append([]string{"eval", "--model", in, "--json", "--max-stories", "0"}, args...)...)
		var r struct{ PPL float64 }
		if code != 0 || json.Unmarshal([]byte(out), &r) != nil {
			t.Fatalf("eval %v: %d %s", args, code, stderr)
		}
		return r.PPL
	}
	if testing.Short() {
		return
	}
	a, b := ppl("--data", ids, "--format", "tokens"), ppl("--data", valid)
	if a != b || b < 4.488 || b > 4.489 {
		t.Fatalf("tokens %v vs stories %v (reference 4.4887)", a, b)
	}
}

// TestTokenizeJSONL: C4's layout, gzip and zstd compressed, per document.
func TestTokenizeJSONL(t *testing.T) {
	in := importModel(t)
	dir := t.TempDir()
	docs := `{"text": "Once upon a time, there was a cat.", "url": "x"}` + "\n" + `"A bare string document."` + "\n\n" + `{"text": "The end."}` + "\n"
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte(docs))
	zw.Close()
	os.WriteFile(filepath.Join(dir, "c4.json.gz"), gz.Bytes(), 0o644)
	enc, _ := zstd.NewWriter(nil)
	os.WriteFile(filepath.Join(dir, "c4.json.zst"), enc.EncodeAll([]byte(docs), nil), 0o644)
	os.WriteFile(filepath.Join(dir, "c4.jsonl"), []byte(docs), 0o644)
	var outputs [][]byte
	for _, f := range []string{"c4.jsonl", "c4.json.gz", "c4.json.zst"} {
		out := filepath.Join(dir, f+".ids")
		if code, _, stderr := runCLI(t, "tokenize", "--tokenizer", in, "--data", filepath.Join(dir, f), "--format", "jsonl", "--out", out, "--per-document"); code != 0 {
			t.Fatalf("%s: %s", f, stderr)
		}
		b, _ := os.ReadFile(out)
		outputs = append(outputs, b)
	}
	lines := strings.Split(strings.TrimSpace(string(outputs[0])), "\n")
	if len(lines) != 3 || !bytes.Equal(outputs[0], outputs[1]) || !bytes.Equal(outputs[0], outputs[2]) || !strings.HasPrefix(lines[0], "[1,") {
		t.Fatalf("per-document output %q", outputs)
	}
	// The same data feeds eval as --format jsonl.
	if code, _, stderr := runCLI(t, "eval", "--model", in, "--data", filepath.Join(dir, "c4.json.zst"), "--format", "jsonl"); code != 0 {
		t.Fatalf("eval --format jsonl: %s", stderr)
	}
	// Refusals: an existing output, a broken line, tokens as input.
	if code, _, stderr := runCLI(t, "tokenize", "--tokenizer", in, "--data", filepath.Join(dir, "c4.jsonl"), "--format", "jsonl", "--out", filepath.Join(dir, "c4.jsonl.ids"), "--per-document"); code != 1 || !strings.Contains(stderr, "already exists") {
		t.Fatalf("existing output: %d %s", code, stderr)
	}
	os.WriteFile(filepath.Join(dir, "bad.jsonl"), []byte("{\"text\": 1}\n"), 0o644)
	if code, _, stderr := runCLI(t, "tokenize", "--tokenizer", in, "--data", filepath.Join(dir, "bad.jsonl"), "--format", "jsonl", "--out", filepath.Join(dir, "bad.ids")); code != 1 || !strings.Contains(stderr, "bad.jsonl:1") {
		t.Fatalf("bad line: %d %s", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "bad.ids")); err == nil {
		t.Fatal("a failed tokenize left its output")
	}
	if code, _, _ := runCLI(t, "tokenize", "--tokenizer", in, "--data", filepath.Join(dir, "c4.jsonl"), "--format", "tokens", "--out", filepath.Join(dir, "x")); code != 2 {
		t.Fatal("tokens as tokenize input")
	}
}
