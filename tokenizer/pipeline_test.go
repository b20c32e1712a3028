package tokenizer

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

// TestMetaspacePrependFirst: prepend_scheme "first" adds "▁" only to the
// first section and only when the text does not start with it; "always"
// adds it to every section; "never" to none.
func TestMetaspacePrependFirst(t *testing.T) {
	js := func(scheme string) string {
		return `{"added_tokens":[{"id":4,"content":"<x>","special":true}],
		"model":{"type":"BPE","vocab":{"▁":0,"a":1,"▁a":2,"b":3},"merges":["▁ a"]},
		"pre_tokenizer":{"type":"Metaspace","replacement":"▁","prepend_scheme":"` + scheme + `","split":false}}`
	}
	for _, c := range []struct {
		scheme, text string
		want         []int
	}{
		{"first", "a", []int{2}}, {"first", " a", []int{2}}, {"first", "▁a", []int{2}}, {"first", "a<x>a", []int{2, 4, 1}},
		{"always", "a<x>a", []int{2, 4, 2}}, {"never", "a<x>a", []int{1, 4, 1}}, {"never", " a", []int{2}},
	} {
		tok, err := ParseHFJSON("t.json", []byte(js(c.scheme)))
		if err != nil {
			t.Fatal(err)
		}
		if got := tok.Encode(c.text); !slices.Equal(got, c.want) {
			t.Errorf("%s %q: %v, want %v", c.scheme, c.text, got, c.want)
		}
	}
}

// TestConfigSpecials: tokenizer_config.json's add_bos_token / add_eos_token
// rebuild the template for LLaMA and Gemma tokenizer classes, as
// transformers' LlamaTokenizerFast does; bos_token null means no BOS.
func TestConfigSpecials(t *testing.T) {
	js := `{"added_tokens":[{"id":0,"content":"<s>","special":true},{"id":1,"content":"</s>","special":true}],
		"model":{"type":"BPE","vocab":{"<s>":0,"</s>":1,"a":2},"merges":[]},
		"post_processor":{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<s>"}},{"Sequence":{"id":"A"}}],
		"special_tokens":{"<s>":{"ids":[0]}}}}`
	for _, c := range []struct {
		config         string
		prefix, suffix []int
		bos            int
	}{
		{``, []int{0}, nil, 0},
		{`{"tokenizer_class":"LlamaTokenizer","add_bos_token":true,"add_eos_token":true,"bos_token":"<s>","eos_token":"</s>"}`, []int{0}, []int{1}, 0},
		{`{"tokenizer_class":"LlamaTokenizerFast","add_bos_token":false,"bos_token":"<s>"}`, nil, nil, 0},
		{`{"tokenizer_class":"PreTrainedTokenizerFast","add_bos_token":false,"bos_token":"<s>"}`, []int{0}, nil, 0},
		{`{"tokenizer_class":"Qwen2Tokenizer","bos_token":null,"add_bos_token":false}`, []int{0}, nil, 0},
	} {
		var cfg []byte
		if c.config != "" {
			cfg = []byte(c.config)
		}
		tok, err := ParseHFJSONConfig("t.json", []byte(js), cfg)
		if err != nil {
			t.Fatal(err)
		}
		p, s := tok.Specials()
		if !slices.Equal(p, c.prefix) || !slices.Equal(s, c.suffix) || tok.BOS() != c.bos {
			t.Errorf("%s: prefix %v suffix %v bos %d", c.config, p, s, tok.BOS())
		}
		if got := tok.EncodeSpecial("a"); !slices.Equal(got, append(append(slices.Clone(c.prefix), 2), c.suffix...)) {
			t.Errorf("%s: tokenizer(\"a\") = %v", c.config, got)
		}
	}
	noBOS := `{"model":{"type":"BPE","vocab":{"a":0},"merges":[]}}`
	tok, _ := ParseHFJSONConfig("t.json", []byte(noBOS), []byte(`{"bos_token":null}`))
	if tok.BOS() != -1 {
		t.Fatal("bos_token null: the model has no BOS")
	}
}

// TestLoadFallsBack: a refused tokenizer.json falls back to tokenizer.bin,
// with a note saying why.
func TestLoadFallsBack(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, HFFile), []byte(`{"model":{"type":"Unigram"}}`), 0o644)
	b, _ := os.ReadFile("../testdata/stories260K/tok512.bin")
	os.WriteFile(filepath.Join(dir, Llama2CFile), b, 0o644)
	var notes []string
	tok, err := Load(dir, 512, func(s string) { notes = append(notes, s) })
	if err != nil || tok.VocabSize() != 512 || len(notes) != 1 || !strings.Contains(notes[0], "Unigram") {
		t.Fatalf("fallback: %v, notes %q", err, notes)
	}
	os.Remove(filepath.Join(dir, Llama2CFile))
	if _, err := Load(dir, 512, nil); err == nil || !strings.Contains(err.Error(), "Unigram") {
		t.Fatalf("nothing to fall back to: %v", err)
	}
	if tok, err := LoadPath("../testdata/stories260K/tok512.bin", nil); err != nil || tok.VocabSize() != 512 {
		t.Fatalf("tokenizer.bin without a model: %v", err)
	}
}

// referenceMatches is an independent leftmost-first matcher for the
// GPT-2 / Llama-3 / Qwen2 style patterns: at each position the
// alternatives are tried in order, each anchored, and \s+(?!\S) is
// implemented directly (the longest whitespace run that no non-space
// follows), with no capture-group trick.
func referenceMatches(alts []string, s string) [][2]int {
	type alt struct {
		re        *regexp.Regexp
		lookahead bool
	}
	var as []alt
	for _, a := range alts {
		if a == `\s+(?!\S)` {
			as = append(as, alt{lookahead: true})
			continue
		}
		r, err := compileSplitRegex(`^(?:` + a + `)`)
		if err != nil {
			panic(err)
		}
		as = append(as, alt{re: r.re})
	}
	var out [][2]int
	for pos := 0; pos < len(s); {
		end := -1
		for _, a := range as {
			if a.lookahead {
				// Backtrack from the longest run to one not followed by a non-space.
				var ends []int
				for i, r := range s[pos:] {
					if !isSpace(r) {
						break
					}
					ends = append(ends, pos+i+utf8.RuneLen(r))
				}
				for k := len(ends) - 1; k >= 0; k-- {
					e := ends[k]
					if next, _ := utf8.DecodeRuneInString(s[e:]); e == len(s) || isSpace(next) {
						end = e
						break
					}
				}
			} else if loc := a.re.FindStringIndex(s[pos:]); loc != nil && loc[1] > 0 {
				end = pos + loc[1]
			}
			if end >= 0 {
				break
			}
		}
		if end < 0 {
			_, w := utf8.DecodeRuneInString(s[pos:])
			pos += w
			continue
		}
		out = append(out, [2]int{pos, end})
		pos = end
	}
	return out
}

var splitPatterns = map[string][]string{
	"llama3": {`(?i:'s|'t|'re|'ve|'m|'ll|'d)`, `[^\r\n\p{L}\p{N}]?\p{L}+`, `\p{N}{1,3}`, ` ?[^\s\p{L}\p{N}]+[\r\n]*`, `\s*[\r\n]+`, `\s+(?!\S)`, `\s+`},
	"qwen2":  {`(?i:'s|'t|'re|'ve|'m|'ll|'d)`, `[^\r\n\p{L}\p{N}]?\p{L}+`, `\p{N}`, ` ?[^\s\p{L}\p{N}]+[\r\n]*`, `\s*[\r\n]+`, `\s+(?!\S)`, `\s+`},
	"gpt2":   {`'s`, `'t`, `'re`, `'ve`, `'m`, `'ll`, `'d`, ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`, `\s+(?!\S)`, `\s+`},
}

func checkSplit(t *testing.T, s string) {
	for name, alts := range splitPatterns {
		r, err := compileSplitRegex(strings.Join(alts, "|"))
		if err != nil {
			t.Fatal(err)
		}
		if got, want := r.matches(s), referenceMatches(alts, s); !slices.Equal(got, want) {
			t.Fatalf("%s on %q: %v, reference %v", name, s, got, want)
		}
	}
}

func TestSplitMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	alphabet := []string{" ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "a", "Bc", "é", "日本", "1", "234", "'s", "'T", "!", "..", "😀", "x"}
	for i := 0; i < 3000; i++ {
		var b strings.Builder
		for k := r.IntN(12); k >= 0; k-- {
			b.WriteString(alphabet[r.IntN(len(alphabet))])
		}
		checkSplit(t, b.String())
	}
}

// FuzzSplit checks the RE2 translation of the real models' split patterns
// (\s+(?!\S) as a capture group given back one character) against the
// reference matcher above.
func FuzzSplit(f *testing.F) {
	for _, s := range []string{"", "a  b", "x   \ny", "  \t a", "It's 2024!!  ", "日本 語\u3000x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !utf8.ValidString(s) {
			return
		}
		checkSplit(t, s)
	})
}
