package tokenizer

import (
	"math/rand/v2"
	"slices"
	"testing"
)

func load(t testing.TB) *BPE {
	t.Helper()
	tok, err := LoadLlama2C("../testdata/stories260K/tok512.bin", 512)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// naiveMerge is llama2.c's O(n²) loop, kept as the reference the heap merge
// must equal: repeatedly merge the leftmost adjacent pair with the highest
// merged-piece score.
func naiveMerge(t *BPE, ids []int) []int {
	ids = slices.Clone(ids)
	for {
		best, bestID, bestIdx := float32(-1e10), -1, -1
		for i := 0; i+1 < len(ids); i++ {
			if id, ok := t.ids[t.Pieces[ids[i]]+t.Pieces[ids[i+1]]]; ok && t.Scores[id] > best {
				best, bestID, bestIdx = t.Scores[id], id, i
			}
		}
		if bestIdx < 0 {
			return ids
		}
		ids[bestIdx] = bestID
		ids = slices.Delete(ids, bestIdx+1, bestIdx+2)
	}
}

func FuzzMergeMatchesLlama2C(f *testing.F) {
	tok := load(f)
	f.Add("Once upon a time, there was a little girl named Lily.")
	f.Add("héllo wörld ✓ \x80\xff\n\n  tabs\tand  spaces")
	f.Fuzz(func(t *testing.T, s string) {
		got := tok.Encode(s)
		if s == "" {
			if len(got) != 0 {
				t.Fatal("empty text must give no ids")
			}
			return
		}
		pre := append([]int{tok.ids[" "]}, tok.preMerge(s)...)
		if want := naiveMerge(tok, pre); !slices.Equal(got, want) {
			t.Fatalf("%q: heap merge %v, llama2.c merge %v", s, got, want)
		}
	})
}

func TestMergeRandomText(t *testing.T) {
	tok := load(t)
	r := rand.New(rand.NewPCG(1, 2))
	alphabet := []rune("abcdefghijklmnopqrstuvwxyz       .,!'\"\nLTSOé✓")
	for i := 0; i < 300; i++ {
		n := r.IntN(200)
		rs := make([]rune, n)
		for j := range rs {
			rs[j] = alphabet[r.IntN(len(alphabet))]
		}
		s := string(rs)
		if s == "" {
			continue
		}
		pre := append([]int{tok.ids[" "]}, tok.preMerge(s)...)
		if got, want := tok.Encode(s), naiveMerge(tok, pre); !slices.Equal(got, want) {
			t.Fatalf("%q: heap merge %v, llama2.c merge %v", s, got, want)
		}
	}
}

func TestEncodeDecode(t *testing.T) {
	tok := load(t)
	s := "Once upon a time, Tim saw a big dog ✓."
	ids := tok.Encode(s)
	if got := tok.Decode(append([]int{tok.BOS()}, ids...)); got != "\n<s>\n"+s {
		t.Fatalf("decode(encode) = %q", got)
	}
	// ✓ is not a piece: it must fall back to its three UTF-8 bytes.
	var bytes int
	for _, id := range ids {
		if id >= 3 && id < 259 {
			bytes++
		}
	}
	if bytes != 3 {
		t.Fatalf("want 3 byte-fallback tokens for ✓, got %d in %v", bytes, ids)
	}
}

func TestBadTokenizerFiles(t *testing.T) {
	if _, err := ParseLlama2C("t", []byte{1, 0, 0, 0}, 5); err == nil {
		t.Fatal("truncated file accepted")
	}
	if _, err := ParseLlama2C("t", []byte{0, 0, 0, 0}, 1); err == nil {
		t.Fatal("zero max_token_length accepted")
	}
	good := []byte{1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 'a'}
	if _, err := ParseLlama2C("t", append(good, 9), 1); err == nil {
		t.Fatal("trailing bytes accepted")
	}
	if _, err := ParseLlama2C("t", good, 1); err != nil {
		t.Fatal(err)
	}
}
