package stream

import (
	"context"
	"errors"
	"math"
	"sync/atomic"
	"testing"
	"time"

	"github.com/elsa-stream/elsa-stream/dataset"
	"github.com/elsa-stream/elsa-stream/model"
	"github.com/elsa-stream/elsa-stream/tokenizer"
)

// collect copies every gradient a sweep hands out.
type collect struct {
	cfg    model.Config
	blocks map[int]*model.Block
	head   model.Head
}

func (c *collect) Block(u Unit, w, g *model.Block) error {
	cp := c.blocks[u.Layer]
	if cp == nil {
		cp = &model.Block{}
		c.blocks[u.Layer] = cp
	}
	for _, p := range c.cfg.BlockParams() {
		if u.Half == model.Whole || p.Half == u.Half {
			*p.Get(cp) = append([]float32(nil), *p.Get(g)...)
		}
	}
	return nil
}

// LMHead and Head rebuild the whole head gradients from the chunks and
// the embedding's rows.
func (c *collect) LMHead(lo, hi int, g []float32) error {
	D := c.cfg.Hidden
	c.head.LMHead = resize(c.head.LMHead, c.cfg.Vocab*D)
	copy(c.head.LMHead[lo*D:hi*D], g)
	return nil
}

func (c *collect) Head(norm []float32, ids []int, rows []float32) error {
	D := c.cfg.Hidden
	c.head.Norm = append([]float32(nil), norm...)
	c.head.Embed = make([]float32, c.cfg.Vocab*D)
	if c.cfg.TiedEmbeddings {
		copy(c.head.Embed, c.head.LMHead)
	}
	for i, id := range ids {
		for j, v := range rows[i*D : (i+1)*D] {
			c.head.Embed[id*D+j] += v
		}
	}
	return nil
}

func resize(b []float32, n int) []float32 {
	if len(b) != n {
		return make([]float32, n)
	}
	return b
}

// TestSweepMatchesResident: the loss and every gradient of a streamed step
// equal the all-resident computation (model.Loss) on stories260K: bitwise
// with one micro-batch (the same float operations in the same order), and
// within 1e-5 of the gradient norm with micro-batches of 1 window and
// spilled checkpoints (the per-window sums are added in another order), or
// with the vocabulary in chunks of 100 rows (the two-pass head); and the
// same with the forward's activations kept instead of recomputed.
func TestSweepMatchesResident(t *testing.T) {
	s := openDefault(t)
	defer s.Close()
	tok, _ := tokenizer.Load(s.Model.Dir, s.Cfg.Vocab, nil)
	ids, err := dataset.Load("../testdata/tinystories-valid-1000/tinystories_valid_first1000.txt", tok, dataset.Options{Format: dataset.Stories, MaxStories: 5})
	if err != nil {
		t.Fatal(err)
	}
	B, T := 3, 128
	inputs, targets := ids.Window(dataset.Window{Len: B * T})
	w, _ := s.LoadAll()
	ref := s.Cfg.NewWeights()
	rope := model.NewRope(s.Cfg, T)
	refSum, refN := s.Cfg.Loss(w, rope, inputs, targets, B, T, ref, 1/float32(B*T))

	for _, opt := range []SweepOptions{{}, {Granularity: model.Attention}, {MicroBatch: 1, SpillDir: t.TempDir()}, {VocabChunk: 100},
		{KeepActivations: true}, {KeepActivations: true, Granularity: model.Attention, MicroBatch: 1}} {
		got := &collect{cfg: s.Cfg, blocks: map[int]*model.Block{}}
		res, err := s.Sweeper().GradientSweep(context.Background(), inputs, targets, B, T, opt, got)
		if err != nil {
			t.Fatal(err)
		}
		exact := opt.MicroBatch == 0 && opt.VocabChunk == 0
		if res.Tokens != refN || (exact && res.SumNLL != refSum) || math.Abs(res.SumNLL-refSum) > 1e-9*refSum {
			t.Fatalf("%+v: loss %v over %d, resident %v over %d", opt, res.SumNLL, res.Tokens, refSum, refN)
		}
		compare := func(name string, a, b []float32, exact bool) {
			var diff, norm float64
			for i := range a {
				diff = max(diff, math.Abs(float64(a[i]-b[i])))
				norm += float64(b[i]) * float64(b[i])
			}
			if (exact && diff != 0) || diff > 1e-5*math.Sqrt(norm) {
				t.Fatalf("%+v: %s differs from the resident gradient by %g (norm %g)", opt, name, diff, math.Sqrt(norm))
			}
		}
		// The tied embedding's gradient sums its rows' terms before adding
		// them to lm_head's (not one by one): its last bits may differ.
		compare("embed", got.head.Embed, ref.Head.Embed, false)
		compare("norm", got.head.Norm, ref.Head.Norm, exact)
		for l := 0; l < s.Cfg.Layers; l++ {
			for _, p := range s.Cfg.BlockParams() {
				compare(p.Suffix, *p.Get(got.blocks[l]), *p.Get(ref.Blocks[l]), exact)
			}
		}
	}
}

// TestStreamWaitsForLoader: a sweep stopped early (here fn fails on the
// first unit) returns only after the unit being read ahead is loaded. A
// gradient sweep's loader applies the pending update and writes the state
// store; a loader outliving the sweep raced the caller's own use of the
// store (a crash on an interrupted run).
func TestStreamWaitsForLoader(t *testing.T) {
	s := openDefault(t)
	defer s.Close()
	order := s.Sweeper().Units(model.Whole)
	if len(order) < 2 {
		t.Fatalf("%d units, the test needs two", len(order))
	}
	secondStarted := make(chan struct{})
	var secondDone atomic.Bool
	load := func(u Unit, b *model.Block) error {
		if u == order[1] {
			close(secondStarted)
			time.Sleep(50 * time.Millisecond)
			secondDone.Store(true)
		}
		return nil
	}
	stopped := errors.New("stopped")
	err := s.Sweeper().stream(context.Background(), order, load, func(u Unit, b *model.Block) error {
		<-secondStarted // the loader is inside load(order[1])
		return stopped
	})
	if !errors.Is(err, stopped) {
		t.Fatalf("stream returned %v, want fn's error", err)
	}
	if !secondDone.Load() {
		t.Fatal("stream returned while its loader was still loading the next unit")
	}
}
