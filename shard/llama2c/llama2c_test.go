package llama2c

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/elsa-stream/elsa-stream/shard"
)

const (
	v0Model = "../../testdata/stories260K/stories260K.bin"
	tok     = "../../testdata/stories260K/tok512.bin"
)

// toV1 rewrites a v0 checkpoint in the version-1 layout (256-byte "ak42"
// header, different array order, no RoPE tables) so both readers can be
// compared on the same weights.
func toV1(t *testing.T, v0 []byte, shared bool) []byte {
	t.Helper()
	p, off, err := ReadParams("v0", v0)
	if err != nil {
		t.Fatal(err)
	}
	arrays := map[string][]byte{}
	for _, ts := range layout(p) {
		n := 4 * ts.numel()
		if ts.name != "" {
			arrays[ts.name] = v0[off : off+n]
		}
		off += n
	}
	p.Version, p.SharedClassifier = 1, shared
	hdr := make([]byte, v1HeaderSize)
	binary.LittleEndian.PutUint32(hdr, Magic)
	binary.LittleEndian.PutUint32(hdr[4:], 1)
	for i, v := range []int{p.Dim, p.HiddenDim, p.NLayers, p.NHeads, p.NKVHeads, p.VocabSize, p.SeqLen} {
		binary.LittleEndian.PutUint32(hdr[8+4*i:], uint32(v))
	}
	if shared {
		hdr[36] = 1
	}
	out := hdr
	for _, ts := range layout(p) {
		if ts.name == "lm_head.weight" {
			out = append(out, arrays["model.embed_tokens.weight"]...)
			continue
		}
		out = append(out, arrays[ts.name]...)
	}
	return out
}

func importBytes(t *testing.T, model []byte) (string, error) {
	dir := t.TempDir()
	mp := filepath.Join(dir, "m.bin")
	os.WriteFile(mp, model, 0o644)
	out := filepath.Join(dir, "out")
	_, err := Import(mp, tok, out, Options{})
	return out, err
}

func TestV0AndV1GiveSameTensors(t *testing.T) {
	v0, err := os.ReadFile(v0Model)
	if err != nil {
		t.Fatal(err)
	}
	a, err := importBytes(t, v0)
	if err != nil {
		t.Fatal(err)
	}
	b, err := importBytes(t, toV1(t, v0, true))
	if err != nil {
		t.Fatal(err)
	}
	ma, _ := shard.Open(a)
	mb, _ := shard.Open(b)
	defer ma.Close()
	defer mb.Close()
	if ma.TotalParams() != 260032 || len(ma.Names) != len(mb.Names) {
		t.Fatalf("params %d, names %d vs %d", ma.TotalParams(), len(ma.Names), len(mb.Names))
	}
	for _, n := range ma.Names {
		ta, _ := ma.Tensor(n)
		tb, ok := mb.Tensor(n)
		if !ok || string(ta.Bytes()) != string(tb.Bytes()) {
			t.Fatalf("tensor %s differs between v0 and v1 imports", n)
		}
	}
	if !ma.Config.TieWordEmbeddings {
		t.Fatal("shared classifier not expressed as tie_word_embeddings")
	}
	// An unshared v1 classifier becomes lm_head.weight.
	c, err := importBytes(t, toV1(t, v0, false))
	if err != nil {
		t.Fatal(err)
	}
	mc, _ := shard.Open(c)
	defer mc.Close()
	if _, ok := mc.Tensor("lm_head.weight"); !ok || mc.Config.TieWordEmbeddings {
		t.Fatal("unshared classifier: want lm_head.weight and tie_word_embeddings false")
	}
}

func TestPermuteRows(t *testing.T) {
	// One head of dim 4: interleaved pairs (0,1),(2,3) -> halves (0,2),(1,3).
	raw := make([]byte, 4*4)
	for r := 0; r < 4; r++ {
		binary.LittleEndian.PutUint32(raw[4*r:], uint32(r))
	}
	got := permuteRows(raw, 4, 1, 1)
	for i, want := range []uint32{0, 2, 1, 3} {
		if v := binary.LittleEndian.Uint32(got[4*i:]); v != want {
			t.Fatalf("row %d = %d, want %d", i, v, want)
		}
	}
}

func TestBadCheckpoints(t *testing.T) {
	v0, err := os.ReadFile(v0Model)
	if err != nil {
		t.Fatal(err)
	}
	set := func(b []byte, field int, v int32) []byte {
		c := append([]byte(nil), b...)
		binary.LittleEndian.PutUint32(c[4*field:], uint32(v))
		return c
	}
	cases := []struct {
		name  string
		model []byte
		want  string
	}{
		{"truncated", v0[:len(v0)-4], "implies 1056540"},
		{"extra bytes", append(append([]byte(nil), v0...), 0, 0, 0, 0), "implies 1056540"},
		{"negative dim", set(v0, 0, -64), "dim = -64"},
		{"zero layers", set(v0, 2, 0), "n_layers = 0"},
		{"heads do not divide dim", set(v0, 3, 7), "not an even multiple"},
		{"kv heads do not divide heads", set(v0, 4, 3), "not a multiple of n_kv_heads"},
		{"tiny file", v0[:10], "too short"},
		{"v2", func() []byte { b := toV1(t, v0, true); binary.LittleEndian.PutUint32(b[4:], 2); return b }(), "version 2 is not supported"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := importBytes(t, c.model)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v; want %q", err, c.want)
			}
		})
	}
	// A truncated tokenizer is refused, and nothing is written.
	dir := t.TempDir()
	tb, _ := os.ReadFile(tok)
	os.WriteFile(filepath.Join(dir, "t.bin"), tb[:len(tb)-10], 0o644)
	out := filepath.Join(dir, "out")
	if _, err := Import(v0Model, filepath.Join(dir, "t.bin"), out, Options{}); err == nil || !strings.Contains(err.Error(), "truncated") && !strings.Contains(err.Error(), "past the end") {
		t.Fatalf("truncated tokenizer: %v", err)
	}
	if _, err := os.Stat(out); err == nil {
		t.Fatal("output written despite the error")
	}
}
