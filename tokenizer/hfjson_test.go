package tokenizer

import (
	"slices"
	"strings"
	"testing"
)

// TestHFJSONMatchesLlama2C writes tok512 as a tokenizer.json and checks that
// the HF-semantics encoder (ranked merges) gives the llama2.c ids on the
// evaluation stories.
func TestHFJSONMatchesLlama2C(t *testing.T) {
	bpe := load(t)
	js, err := bpe.HFJSON()
	if err != nil {
		t.Fatal(err)
	}
	hf, err := ParseHFJSON("tokenizer.json", js)
	if err != nil {
		t.Fatal(err)
	}
	if hf.BOS() != 1 || hf.VocabSize() != 512 {
		t.Fatalf("bos %d vocab %d", hf.BOS(), hf.VocabSize())
	}
	sameAsLlama2C(t, bpe, hf)
}

func TestHFJSONRefusals(t *testing.T) {
	for _, c := range []struct{ js, want string }{
		{`{"model":{"type":"Unigram"}}`, "model type"},
		{`{"model":{"type":"BPE","vocab":{}},"pre_tokenizer":{"type":"BertPreTokenizer"}}`, `pre-tokenizer "BertPreTokenizer" is not supported`},
		{`{"model":{"type":"BPE","vocab":{}},"pre_tokenizer":{"type":"Split","pattern":{"Regex":"(?<=a)b"},"behavior":"Isolated"}}`, "lookaround"},
		{`{"model":{"type":"BPE","vocab":{}},"post_processor":{"type":"BertProcessing"}}`, `post-processor "BertProcessing"`},
		{`{"model":{"type":"BPE","vocab":{"a":0},"merges":["a b"]}}`, "outside the vocabulary"},
		{`{"model":{"type":"BPE","vocab":{}},"normalizer":{"type":"BertNormalizer"}}`, "not supported"},
		{`{`, "not a tokenizer.json"},
	} {
		if _, err := ParseHFJSON("t.json", []byte(c.js)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.js, err, c.want)
		}
	}
}

func TestHFMetaspaceSplit(t *testing.T) {
	js := `{"model":{"type":"BPE","vocab":{"▁":0,"a":1,"▁a":2,"a▁":3},"merges":["a ▁","▁ a"]},
		"pre_tokenizer":{"type":"Metaspace","replacement":"▁","prepend_scheme":"always","split":true}}`
	hf, err := ParseHFJSON("t.json", []byte(js))
	if err != nil {
		t.Fatal(err)
	}
	// "a a" -> "▁a▁a" -> words "▁a", "▁a": the a▁ merge cannot cross words.
	if got := hf.Encode("a a"); !slices.Equal(got, []int{2, 2}) {
		t.Fatalf("got %v", got)
	}
}
