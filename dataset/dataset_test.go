package dataset

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/elsa-stream/elsa-stream/tokenizer"
)

// TestStoriesMatchReferenceTokens encodes the primary evaluation file with
// the stories protocol and compares it id for id with the reference stream
// produced by an independent implementation (see testdata/PROVENANCE.md).
func TestStoriesMatchReferenceTokens(t *testing.T) {
	tok, err := tokenizer.LoadLlama2C("../testdata/stories260K/tok512.bin", 512)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := Load("../testdata/tinystories-valid-1000/tinystories_valid_first1000.txt", tok, Options{Format: Stories})
	if err != nil {
		t.Fatal(err)
	}
	got := stream.Ints()
	ref, err := os.ReadFile("../testdata/tinystories-valid-1000/stories260K_tok512.u16.bin")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(ref)/2 {
		t.Fatalf("%d tokens, reference has %d", len(got), len(ref)/2)
	}
	for i := range got {
		if want := int(binary.LittleEndian.Uint16(ref[2*i:])); got[i] != want {
			t.Fatalf("token %d: got %d, reference %d", i, got[i], want)
		}
	}
}

func TestEvalWindows(t *testing.T) {
	ids := Compact([]int{1, 2, 3, 4, 5, 6, 7})
	ws := EvalWindows(ids, 3)
	in1, tg1 := ids.Window(ws[1])
	_, tg0 := ids.Window(ws[0])
	if len(ws) != 2 || len(in1) != 3 || tg1[2] != 7 || tg0[0] != 2 {
		t.Fatalf("windows %+v", ws)
	}
	ws = EvalWindows(Compact([]int{1, 2, 3, 4, 5}), 2)
	n := 0
	for _, w := range ws {
		n += w.Len
	}
	if n != 4 || ws[len(ws)-1].Len != 2 {
		t.Fatalf("every token after the first must be predicted once: %+v", ws)
	}
}

// TestIDsCompact: streams take 2 bytes per id below 65536 and widen to 4
// when an id needs it, keeping every id; a token file is mapped in place
// and reads the same ids as when parsed from its bytes; a mapped file
// with an id past the vocabulary is refused naming its position.
func TestIDsCompact(t *testing.T) {
	small := Compact([]int{0, 65535, 7})
	if small.width != 2 || len(small.b) != 6 || small.At(1) != 65535 {
		t.Fatalf("width %d, %d bytes, ids %v", small.width, len(small.b), small.Ints())
	}
	s := newIDs(512, 0)
	s.append(1, 2, 70000, 3)
	if s.width != 4 || !slices.Equal(s.Ints(), []int{1, 2, 70000, 3}) {
		t.Fatalf("widened: width %d, %v", s.width, s.Ints())
	}
	b := make([]byte, 2*5000)
	for i := range 5000 {
		binary.LittleEndian.PutUint16(b[2*i:], uint16(i%500))
	}
	path := filepath.Join(t.TempDir(), "ids.u16")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	mapped, err := Load(path, nil, Options{Format: Tokens, Vocab: 500})
	if err != nil {
		t.Fatal(err)
	}
	defer mapped.Close()
	parsed, err := Parse(path, b, nil, Options{Format: Tokens, Vocab: 500})
	if err != nil {
		t.Fatal(err)
	}
	if !mapped.Mapped() || !slices.Equal(mapped.Ints(), parsed.Ints()) || mapped.Len() != 5000 {
		t.Fatalf("mapped %v, %d ids", mapped.Mapped(), mapped.Len())
	}
	in, tg := mapped.Window(Window{Start: 4000, Len: 3})
	if !slices.Equal(in, []int{0, 1, 2}) || !slices.Equal(tg, []int{1, 2, 3}) {
		t.Fatalf("window %v %v", in, tg)
	}
	if _, err := Load(path, nil, Options{Format: Tokens, Vocab: 400}); err == nil || !strings.Contains(err.Error(), "token 400 at position 400") {
		t.Fatalf("mapped file past the vocabulary: %v", err)
	}
}

func TestSplitStories(t *testing.T) {
	docs := SplitStories("a b\n<|endoftext|>\n\n c \n<|endoftext|>\n<|endoftext|>\n")
	if len(docs) != 2 || docs[0] != "a b" || docs[1] != "c" {
		t.Fatalf("%q", docs)
	}
}

// TestTextFormat: the text protocol encodes the whole file once after one BOS.
func TestTextFormat(t *testing.T) {
	tok, err := tokenizer.LoadLlama2C("../testdata/stories260K/tok512.bin", 512)
	if err != nil {
		t.Fatal(err)
	}
	text := "One day.\n\nTwo cats ran.\n"
	stream, err := Parse("t.txt", []byte(text), tok, Options{Format: Text})
	if err != nil {
		t.Fatal(err)
	}
	ids := stream.Ints()
	want := append([]int{1}, tok.Encode(text)...)
	if len(ids) != len(want) {
		t.Fatalf("%v, want %v", ids, want)
	}
	for i := range ids {
		if ids[i] != want[i] {
			t.Fatalf("%v, want %v", ids, want)
		}
	}
	if _, err := Parse("t.bin", []byte{1, 2, 3}, tok, Options{Format: Tokens}); err == nil {
		t.Fatal("odd-length token file accepted")
	}
	if _, err := Parse("t.bin", []byte{0xff, 0xff}, tok, Options{Format: Tokens}); err == nil {
		t.Fatal("out-of-vocabulary token accepted")
	}
}

// TestVocabChecked: ids past the model's vocabulary (a tokens file of
// another model) reached the embedding and panicked; every format checks.
func TestVocabChecked(t *testing.T) {
	b := make([]byte, 8)
	for i, id := range []uint16{1, 2, 600, 3} {
		binary.LittleEndian.PutUint16(b[2*i:], id)
	}
	if _, err := Parse("ids.bin", b, nil, Options{Format: Tokens, Vocab: 512}); err == nil || err.Error() != "ids.bin: token 600 at position 2 is outside the model's vocabulary (512 ids)" {
		t.Fatalf("tokens: %v", err)
	}
	tok, err := tokenizer.LoadLlama2C("../testdata/stories260K/tok512.bin", 512)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Parse("t.txt", []byte("Once upon a time"), tok, Options{Format: Text, Vocab: 100}); err == nil {
		t.Fatal("text ids past a smaller vocabulary accepted")
	}
	if _, err := Parse("t.txt", []byte("Once upon a time"), tok, Options{Format: Text, Vocab: 512}); err != nil {
		t.Fatal(err)
	}
}
