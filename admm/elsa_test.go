package admm

import (
	"math"
	"testing"

	"github.com/elsa-stream/elsa-stream/dataset"
	"github.com/elsa-stream/elsa-stream/internal/defaultmodel"
	"github.com/elsa-stream/elsa-stream/lowmem"
	"github.com/elsa-stream/elsa-stream/stream"
	"github.com/elsa-stream/elsa-stream/tokenizer"
)

// defaultWithCalib opens the embedded stories260K (closed at the end of
// the test) with a slice of the embedded calibration text.
func defaultWithCalib(t *testing.T) (*stream.Source, []int) {
	t.Helper()
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	dir, err := defaultmodel.Dir()
	if err != nil {
		t.Fatal(err)
	}
	src, err := stream.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	tok, err := tokenizer.Load(dir, src.Cfg.Vocab)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := dataset.Parse("calib", defaultmodel.TrainCalib[:20000], tok, dataset.Options{Format: dataset.Stories})
	if err != nil {
		t.Fatal(err)
	}
	return src, ids
}

// TestElsaShortRun: a few steps on stories260K end with exactly the target
// zeros in every pruned tensor (the final hard projection), finite weights,
// a loss that was computed, and dual updates that keep z and u on
// complementary supports.
func TestElsaShortRun(t *testing.T) {
	src, ids := defaultWithCalib(t)
	opt := DefaultElsa()
	opt.Steps, opt.Batch, opt.SeqLen, opt.Interval, opt.Projection = 4, 2, 32, 2, "objective"
	var metrics []StepMetrics
	opt.Step = func(m StepMetrics) { metrics = append(metrics, m) }
	if err := Elsa(src, ids, opt); err != nil {
		t.Fatal(err)
	}
	if len(metrics) != 4 || metrics[0].Loss <= 0 || metrics[0].Dual == 0 || metrics[1].Dual != 0 || metrics[3].LR >= metrics[0].LR {
		t.Fatalf("metrics %+v", metrics)
	}
	w := src.Resident()
	for l, b := range w.Blocks {
		for _, p := range src.Cfg.BlockParams() {
			v := *p.Get(b)
			zeros := 0
			for _, x := range v {
				if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
					t.Fatalf("layer %d %s: non-finite weight", l, p.Suffix)
				}
				if x == 0 {
					zeros++
				}
			}
			if p.Linear && zeros != PruneCount(len(v), 0.9) {
				t.Fatalf("layer %d %s: %d zeros, want %d", l, p.Suffix, zeros, PruneCount(len(v), 0.9))
			}
		}
	}
}

func TestLambdaSchedules(t *testing.T) {
	o := ElsaOptions{Steps: 101, Lambda: 0.01, LambdaFinal: 1}
	for _, c := range []struct {
		s         string
		mid, last float64
	}{{"constant", 0.01, 0.01}, {"linear", 0.505, 1}, {"cosine", 0.505, 1}, {"exponential", 0.1, 1}} {
		o.Schedule = c.s
		if got := scheduleLambda(o, 50); math.Abs(got-c.mid) > 1e-9 {
			t.Errorf("%s at the middle: %g, want %g", c.s, got, c.mid)
		}
		if got := scheduleLambda(o, 100); math.Abs(got-c.last) > 1e-9 || math.Abs(scheduleLambda(o, 0)-0.01) > 1e-12 {
			t.Errorf("%s ends: %g", c.s, got)
		}
	}
}

// TestElsaLShortRun: Elsa-L commits its low-precision state every step,
// the store reads back, and the state costs at most 6 bytes per parameter.
func TestElsaLShortRun(t *testing.T) {
	src, ids := defaultWithCalib(t)
	store, err := lowmem.Open(t.TempDir(), "t", nil)
	if err != nil {
		t.Fatal(err)
	}
	opt := DefaultElsa()
	opt.Steps, opt.Batch, opt.SeqLen = 3, 1, 32
	opt.State, opt.LowPrecision = store, true
	if err := Elsa(src, ids, opt); err != nil {
		t.Fatal(err)
	}
	if store.LastStep() != 2 {
		t.Fatalf("last committed step %d, want 2", store.LastStep())
	}
	blocks, _ := store.Blocks()
	if len(blocks) != src.Cfg.Layers+1 {
		t.Fatalf("state files %v", blocks)
	}
	if _, err := store.ReadBlock(2, blocks[0]); err != nil {
		t.Fatal(err)
	}
	disk, _ := store.BytesOnDisk()
	if bpp := float64(disk) / float64(src.Model.TotalParams()); bpp > 6 {
		t.Fatalf("%.2f bytes per parameter on disk", bpp)
	}
}

// TestElsaResume: a run stopped after a committed step and resumed from
// the store ends bit-identical to an uninterrupted run (Elsa-L and fp32).
func TestElsaResume(t *testing.T) {
	for _, low := range []bool{true, false} {
		final := func(stopAt int, resume bool, store *lowmem.Store) []float32 {
			src, ids := defaultWithCalib(t)
			opt := DefaultElsa()
			opt.Steps, opt.Batch, opt.SeqLen, opt.Interval, opt.Projection = 6, 1, 32, 4, "objective"
			opt.Schedule, opt.LambdaFinal = "linear", 0.1
			opt.State, opt.LowPrecision, opt.Resume, opt.stopAfter = store, low, resume, stopAt
			if err := Elsa(src, ids, opt); err != nil {
				t.Fatal(err)
			}
			var all []float32
			for _, b := range src.Resident().Blocks {
				all = append(all, b.Wq...)
				all = append(all, b.Wdown...)
				all = append(all, b.AttnNorm...)
			}
			return append(all, src.Resident().Head.Embed...)
		}
		a, _ := lowmem.Open(t.TempDir(), "r", nil)
		want := final(0, false, a)
		dir := t.TempDir()
		b, _ := lowmem.Open(dir, "r", nil)
		final(2, false, b) // "killed" after committing step 2
		b2, err := lowmem.Open(dir, "r", nil)
		if err != nil || b2.LastStep() != 2 {
			t.Fatalf("store after stop: %v, step %d", err, b2.LastStep())
		}
		got := final(0, true, b2)
		for i := range want {
			if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
				t.Fatalf("low=%v: resumed run differs at %d: %g vs %g", low, i, got[i], want[i])
			}
		}
		// Without Resume an existing store is refused.
		c, _ := lowmem.Open(dir, "r", nil)
		src, ids := defaultWithCalib(t)
		opt := DefaultElsa()
		opt.Steps, opt.Batch, opt.SeqLen, opt.State = 6, 1, 32, c
		if err := Elsa(src, ids, opt); err == nil {
			t.Fatal("existing state overwritten without Resume")
		}
	}
}
