package tokenizer

import (
	"os"
	"slices"
	"strings"
	"testing"
)

// TestSentencePieceMatchesLlama2C writes tok512 as a tokenizer.model and
// checks that go-sentencepiece (an independent BPE implementation) encodes
// the evaluation stories exactly as our llama2.c encoder does.
func TestSentencePieceMatchesLlama2C(t *testing.T) {
	bpe := load(t)
	sp, err := ParseSentencePiece("tok512.model", bpe.SentencePieceModel())
	if err != nil {
		t.Fatal(err)
	}
	if sp.BOS() != 1 || sp.VocabSize() != 512 {
		t.Fatalf("bos %d vocab %d", sp.BOS(), sp.VocabSize())
	}
	sameAsLlama2C(t, bpe, sp)
}

// sameAsLlama2C requires tok to encode the evaluation stories (the first
// 200 with -short) exactly as the llama2.c encoder does.
func sameAsLlama2C(t *testing.T, bpe *BPE, tok Tokenizer) {
	t.Helper()
	text, err := os.ReadFile("../testdata/tinystories-valid-1000/tinystories_valid_first1000.txt")
	if err != nil {
		t.Fatal(err)
	}
	docs := strings.Split(string(text), "\n<|endoftext|>\n")
	if testing.Short() {
		docs = docs[:200]
	}
	for i, d := range docs {
		d = strings.TrimSpace(d)
		if a, b := bpe.Encode(d), tok.Encode(d); !slices.Equal(a, b) {
			t.Fatalf("story %d: llama2.c %v\nother %v", i, a, b)
		}
	}
}

func TestSentencePieceNormalizer(t *testing.T) {
	bpe := load(t)
	sp, err := ParseSentencePiece("m", bpe.SentencePieceModel())
	if err != nil {
		t.Fatal(err)
	}
	sp.removeExtraSpaces = true
	if a, b := sp.Encode("  a   cat  "), bpe.Encode("a cat"); !slices.Equal(a, b) {
		t.Fatalf("remove_extra_whitespaces: %v vs %v", a, b)
	}
	if _, err := ParseSentencePiece("junk", []byte{0xff, 0xff, 0xff}); err == nil {
		t.Fatal("junk accepted")
	}
}

// TestSentencePieceEmpty: an empty tokenizer.model was reported as "model
// type UNIGRAM not supported" (the proto default).
func TestSentencePieceEmpty(t *testing.T) {
	if _, err := ParseSentencePiece("tokenizer.model", nil); err == nil || !strings.Contains(err.Error(), "no vocabulary pieces") {
		t.Fatalf("empty file: %v", err)
	}
}
