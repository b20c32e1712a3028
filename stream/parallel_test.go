package stream

import (
	"context"
	"math"
	"sync"
	"testing"

	"github.com/elsa-stream/elsa-stream/dataset"
	"github.com/elsa-stream/elsa-stream/model"
	"github.com/elsa-stream/elsa-stream/tokenizer"
)

// memGroup is n in-process "ranks" that sum as the MPI ranks do: every
// rank makes the same sums in the same order; the last to arrive adds the
// buffers in rank order and every rank gets the same bits.
type memGroup struct {
	n         int
	mu        sync.Mutex
	cond      *sync.Cond
	f32       [][]float32
	f64       [][]float64
	seen, gen int
}

func newMemGroup(n int) *memGroup {
	g := &memGroup{n: n, f32: make([][]float32, n), f64: make([][]float64, n)}
	g.cond = sync.NewCond(&g.mu)
	return g
}

func (g *memGroup) barrier(reduce func()) {
	gen := g.gen
	g.seen++
	if g.seen == g.n {
		reduce()
		g.seen, g.gen = 0, g.gen+1
		g.cond.Broadcast()
		return
	}
	for gen == g.gen {
		g.cond.Wait()
	}
}

type memRank struct {
	g    *memGroup
	rank int
}

func (r memRank) Rank() int { return r.rank }
func (r memRank) Size() int { return r.g.n }

func (r memRank) SumFloat32(x []float32) error {
	g := r.g
	g.mu.Lock()
	defer g.mu.Unlock()
	g.f32[r.rank] = x
	g.barrier(func() { sumInto(g.f32) })
	return nil
}

func (r memRank) SumFloat64(x []float64) error {
	g := r.g
	g.mu.Lock()
	defer g.mu.Unlock()
	g.f64[r.rank] = x
	g.barrier(func() { sumInto(g.f64) })
	return nil
}

func sumInto[E float32 | float64](bufs [][]E) {
	total := append([]E(nil), bufs[0]...)
	for _, b := range bufs[1:] {
		for i, v := range b {
			total[i] += v
		}
	}
	for _, b := range bufs {
		copy(b, total)
	}
}

// TestSweepDataParallel runs one step's sweep as 1, 2 and 3 ranks sharing
// its 6 windows: the loss and every gradient each rank is handed equal
// the single-process sweep's within float32 summation noise (1e-5 of the
// gradient's norm: the windows' sums are added in another order), and are
// the same bits on every rank.
func TestSweepDataParallel(t *testing.T) {
	s := openDefault(t)
	defer s.Close()
	tok, _ := tokenizer.Load(s.Model.Dir, s.Cfg.Vocab, nil)
	ids, err := dataset.Load("../testdata/tinystories-valid-1000/tinystories_valid_first1000.txt", tok, dataset.Options{Format: dataset.Stories, MaxStories: 8})
	if err != nil {
		t.Fatal(err)
	}
	B, T := 6, 64
	inputs, targets := ids.Window(dataset.Window{Len: B * T})
	run := func(n int, opt SweepOptions) ([]*collect, []SweepResult) {
		g := newMemGroup(n)
		got, res, errs := make([]*collect, n), make([]SweepResult, n), make([]error, n)
		var wg sync.WaitGroup
		for r := 0; r < n; r++ {
			got[r] = &collect{cfg: s.Cfg, blocks: map[int]*model.Block{}}
			wg.Add(1)
			go func() {
				defer wg.Done()
				o := opt
				o.Parallel = memRank{g, r}
				res[r], errs[r] = s.Sweeper().GradientSweep(context.Background(), inputs, targets, B, T, o, got[r])
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		return got, res
	}
	for _, opt := range []SweepOptions{{}, {Granularity: model.Attention, MicroBatch: 1}, {VocabChunk: 100}} {
		ref, refRes := run(1, opt)
		for _, n := range []int{2, 3} {
			got, res := run(n, opt)
			for r := 0; r < n; r++ {
				if res[r].Tokens != refRes[0].Tokens || math.Abs(res[r].SumNLL-refRes[0].SumNLL) > 1e-9*refRes[0].SumNLL || res[r] != res[0] {
					t.Fatalf("%d ranks %+v: rank %d loss %+v, single %+v", n, opt, r, res[r], refRes[0])
				}
				compare := func(name string, a, b, first []float32) {
					var diff, norm float64
					for i := range a {
						diff = max(diff, math.Abs(float64(a[i]-b[i])))
						norm += float64(b[i]) * float64(b[i])
						if math.Float32bits(a[i]) != math.Float32bits(first[i]) {
							t.Fatalf("%d ranks: %s element %d differs between rank %d and rank 0", n, name, i, r)
						}
					}
					if diff > 1e-5*math.Sqrt(norm) {
						t.Fatalf("%d ranks %+v: %s differs from one process by %g (norm %g)", n, opt, name, diff, math.Sqrt(norm))
					}
				}
				compare("embed", got[r].head.Embed, ref[0].head.Embed, got[0].head.Embed)
				compare("norm", got[r].head.Norm, ref[0].head.Norm, got[0].head.Norm)
				compare("lm_head", got[r].head.LMHead, ref[0].head.LMHead, got[0].head.LMHead)
				for l := 0; l < s.Cfg.Layers; l++ {
					for _, p := range s.Cfg.BlockParams() {
						compare(p.Suffix, *p.Get(got[r].blocks[l]), *p.Get(ref[0].blocks[l]), *p.Get(got[0].blocks[l]))
					}
				}
			}
		}
	}
	if _, err := s.Sweeper().GradientSweep(context.Background(), inputs[:2*T], targets[:2*T], 2, T, SweepOptions{Parallel: memRank{newMemGroup(3), 0}}, &collect{cfg: s.Cfg, blocks: map[int]*model.Block{}}); err == nil {
		t.Fatal("2 windows over 3 ranks: accepted")
	}
}
