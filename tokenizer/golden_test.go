package tokenizer

import (
	"compress/gzip"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// goldenCase is one text of testdata/tokenizers/*/golden.json, with the ids
// and the decoded text Tokenizers.js gives (scripts/tokenizers/golden.mjs).
type goldenCase struct {
	Text    string `json:"text"`
	IDs     []int  `json:"ids"`
	Decoded string `json:"decoded"`
}

// loadGolden opens the committed tokenizer.json(.gz) and config of one
// tokenizer and its golden cases.
func loadGolden(t testing.TB, name string) (*HF, []goldenCase) {
	t.Helper()
	dir := filepath.Join("../testdata/tokenizers", name)
	f, err := os.Open(filepath.Join(dir, "tokenizer.json.gz"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	js, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := os.ReadFile(filepath.Join(dir, HFConfigFile))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := ParseHFJSONConfig(name+"/tokenizer.json", js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "golden.json"))
	if err != nil {
		t.Fatal(err)
	}
	var g struct {
		Cases []goldenCase `json:"cases"`
	}
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatal(err)
	}
	return tok, g.Cases
}

var goldenTokenizers = []string{"llama3", "qwen3", "gemma3", "gpt2", "llama2"}

// TestGoldenTokenizers: on the real tokenizer.json files of Llama-3, Qwen3,
// Gemma-3, GPT-2 and Mistral-7B our ids equal Tokenizers.js's on every
// text (200 TinyStories validation stories and a hard set), and so does
// decode.
func TestGoldenTokenizers(t *testing.T) {
	for _, name := range goldenTokenizers {
		t.Run(name, func(t *testing.T) {
			tok, cases := loadGolden(t, name)
			bad := 0
			for _, c := range cases {
				got := tok.EncodeSpecial(c.Text)
				if !slices.Equal(got, c.IDs) {
					if bad++; bad <= 5 {
						t.Errorf("%q:\n got  %v\n want %v", c.Text, got, c.IDs)
					}
					continue
				}
				if len(got) > 0 {
					if d := tok.Decode(got); d != c.Decoded {
						if bad++; bad <= 5 {
							t.Errorf("decode of %q: %q, want %q", c.Text, d, c.Decoded)
						}
					}
				}
			}
			t.Logf("%s: %d of %d texts equal", name, len(cases)-bad, len(cases))
		})
	}
}
