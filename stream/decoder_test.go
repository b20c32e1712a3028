package stream

import (
	"math"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/elsa-stream/elsa-stream/internal/kernels"
	"github.com/elsa-stream/elsa-stream/shard"
)

// TestFeedMatchesSteps feeds a prompt longer than two batches in one call
// (prefill: kernels.BatchTokens tokens per product) and one token at a
// time into two decoders of stories260K: the dense products give every
// token MatVec's bits, so the logits after the prompt and after the next
// token are the same bits. Bad ids and a prompt past the context are
// refused, naming what was wrong.
func TestFeedMatchesSteps(t *testing.T) {
	s := openDefault(t)
	prompt := make([]int, 2*kernels.BatchTokens+5)
	for i := range prompt {
		prompt[i] = (7*i + 1) % s.Cfg.Vocab
	}
	batched, err := NewDecoder(s, 64)
	if err != nil {
		t.Fatal(err)
	}
	defer batched.Close()
	single, err := NewDecoder(s, 64)
	if err != nil {
		t.Fatal(err)
	}
	defer single.Close()
	for step := 0; step < 2; step++ {
		ids := prompt
		if step == 1 {
			ids = []int{5}
		}
		got, err := batched.Feed(ids)
		if err != nil {
			t.Fatal(err)
		}
		got = append([]float32(nil), got...)
		var want []float32
		for _, id := range ids {
			if want, err = single.Step(id); err != nil {
				t.Fatal(err)
			}
		}
		for v := range want {
			if math.Float32bits(got[v]) != math.Float32bits(want[v]) {
				t.Fatalf("feed %d: logit %d: batched %g, one token at a time %g", step, v, got[v], want[v])
			}
		}
	}
	if _, err := batched.Feed([]int{1, s.Cfg.Vocab}); err == nil {
		t.Error("an id past the vocabulary was fed")
	}
	if _, err := batched.Feed(make([]int, 64)); err == nil {
		t.Error("a prompt past the context was fed")
	}
}

// TestDecodeColumnBlocks decodes a 90%-sparse copy of stories260K (every
// tenth weight of each matrix kept) from its packed folder twice: as
// bound for the model (its matrices narrower than kernels.GapsBlockCols,
// each gap-coded one at once) and with every gap-coded matrix wider than
// 40 columns in column blocks (kernels.GapsBlocks). The logits agree to
// float32 rounding, the greedy tokens are the same, and the weight bytes
// per token count the blocks.
func TestDecodeColumnBlocks(t *testing.T) {
	s := openDefault(t)
	dir, packed := filepath.Join(t.TempDir(), "sparse"), filepath.Join(t.TempDir(), "packed")
	var specs []shard.Spec
	for _, name := range s.Model.Names {
		tt, _ := s.Model.Tensor(name)
		specs = append(specs, shard.Spec{Name: name, DType: tt.DType, Shape: tt.Shape})
	}
	w, err := shard.NewWriter(dir, specs, shard.WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range s.Model.Names {
		tt, _ := s.Model.Tensor(name)
		b := append([]byte(nil), tt.Bytes()...)
		if strings.HasSuffix(name, "_proj.weight") {
			size := int(tt.DType.Size())
			for i := 0; i < len(b)/size; i++ {
				if i%10 != 3 {
					clear(b[i*size : (i+1)*size])
				}
			}
		}
		if err := w.WriteTensor(name, b); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.CopyFile(filepath.Join(s.Model.Dir, shard.ConfigFile)); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	if _, err := shard.Pack(dir, packed, shard.PackOptions{}); err != nil {
		t.Fatal(err)
	}
	decode := func(blockCols int) ([][]float32, []int, int64) {
		saved := gapsBlockCols
		gapsBlockCols = blockCols
		defer func() { gapsBlockCols = saved }()
		src, err := Open(packed)
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		d, err := NewDecoder(src, 64)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		_, split := d.blocks[0].Wdown.(*kernels.GapsBlocks)
		if split != (blockCols < s.Cfg.Intermediate) {
			t.Fatalf("blocks of %d columns: down_proj bound as %T", blockCols, d.blocks[0].Wdown)
		}
		var logits [][]float32
		var ids []int
		id := 1
		for range 12 {
			l, err := d.Step(id)
			if err != nil {
				t.Fatal(err)
			}
			logits = append(logits, append([]float32(nil), l...))
			id = Sampling{}.Next(l) // greedy
			ids = append(ids, id)
		}
		return logits, ids, d.WeightBytes
	}
	once, onceIDs, onceBytes := decode(kernels.GapsBlockCols)
	blocks, blockIDs, blockBytes := decode(40)
	if !slices.Equal(onceIDs, blockIDs) {
		t.Errorf("greedy tokens: at once %v, in column blocks %v", onceIDs, blockIDs)
	}
	for i := range once {
		for v := range once[i] {
			if d := math.Abs(float64(once[i][v] - blocks[i][v])); d > 1e-4*(1+math.Abs(float64(once[i][v]))) {
				t.Fatalf("token %d logit %d: at once %g, in column blocks %g", i, v, once[i][v], blocks[i][v])
			}
		}
	}
	if blockBytes <= onceBytes {
		t.Errorf("weight bytes per token: %d in column blocks, %d at once (the blocks' row offsets are read too)", blockBytes, onceBytes)
	}
}
