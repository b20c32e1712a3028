package stream

import (
	"math"
	"testing"

	"github.com/elsa-stream/elsa-stream/internal/kernels"
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
