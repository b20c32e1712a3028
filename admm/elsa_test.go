package admm

import (
	"bytes"
	"context"
	"encoding/binary"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/elsa-stream/elsa-stream/dataset"
	"github.com/elsa-stream/elsa-stream/internal/defaultmodel"
	"github.com/elsa-stream/elsa-stream/lowmem"
	"github.com/elsa-stream/elsa-stream/model"
	"github.com/elsa-stream/elsa-stream/shard"
	"github.com/elsa-stream/elsa-stream/stream"
	"github.com/elsa-stream/elsa-stream/tokenizer"
)

// defaultWithCalib opens the embedded stories260K (closed at the end of
// the test) with a slice of the embedded calibration text.
func defaultWithCalib(t *testing.T) (*stream.Source, *dataset.IDs) {
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
	tok, err := tokenizer.Load(dir, src.Cfg.Vocab, nil)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := dataset.Parse("calib", defaultmodel.TrainCalib[:20000], tok, dataset.Options{Format: dataset.Stories})
	if err != nil {
		t.Fatal(err)
	}
	return src, ids
}

// memSink keeps a run's output tensors.
type memSink map[string][]byte

func (m memSink) WriteTensor(name string, data []byte) error {
	m[name] = append([]byte(nil), data...)
	return nil
}

func (m memSink) WriteTensorPieces(name string, write func(emit func([]byte) error) error) error {
	m[name] = nil
	return write(func(b []byte) error { m[name] = append(m[name], b...); return nil })
}

// elsaRun runs Elsa on src with a fresh store and spill folder unless opt
// names them, returning the output checkpoint's tensors.
func elsaRun(t *testing.T, src *stream.Source, ids *dataset.IDs, opt ElsaOptions) (memSink, []TensorStats) {
	t.Helper()
	if opt.State == nil {
		store, err := lowmem.Open(t.TempDir(), "t", nil)
		if err != nil {
			t.Fatal(err)
		}
		opt.State = store
	}
	if opt.Grads == nil {
		opt.Grads = spill(t)
	}
	out := memSink{}
	stats, err := Elsa(context.Background(), src, ids, opt, out)
	if err != nil {
		t.Fatal(err)
	}
	return out, stats
}

func spill(t *testing.T) *lowmem.Spill {
	s, err := lowmem.NewSpill(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestElsaShortRun: a few steps on stories260K end with exactly the target
// zeros in every pruned tensor (the final hard projection), finite weights,
// a loss that was computed, and metrics from every step with dual updates
// at steps 0, 2.
func TestElsaShortRun(t *testing.T) {
	src, ids := defaultWithCalib(t)
	opt := DefaultElsa()
	opt.Steps, opt.Batch, opt.SeqLen, opt.Interval, opt.Projection = 4, 2, 32, 2, "objective"
	var metrics []StepMetrics
	opt.Step = func(m StepMetrics) { metrics = append(metrics, m) }
	out, stats := elsaRun(t, src, ids, opt)
	if len(metrics) != 4 || metrics[0].Loss <= 0 || metrics[0].Dual == 0 || metrics[1].Dual != 0 || metrics[2].Dual == 0 ||
		metrics[3].LR >= metrics[0].LR || metrics[0].Primal == 0 || metrics[1].StateIO <= 0 {
		t.Fatalf("metrics %+v", metrics)
	}
	if len(out) != len(src.Model.Names) {
		t.Fatalf("%d output tensors, want %d", len(out), len(src.Model.Names))
	}
	for _, st := range stats {
		tn, _ := src.Model.Tensor(st.Name)
		w := make([]float32, tn.NumElements())
		if err := shard.DecodeFloat32(w, out[st.Name], tn.DType, nil); err != nil {
			t.Fatal(err)
		}
		for _, x := range w {
			if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
				t.Fatalf("%s: non-finite weight", st.Name)
			}
		}
		if st.Target > 0 && st.Zeros != int64(PruneCount(int(st.Params), 0.9)) {
			t.Fatalf("%s: %d zeros, want %d", st.Name, st.Zeros, PruneCount(int(st.Params), 0.9))
		}
	}
}

// TestDefaultsPerModel: from 70% sparsity the learning rate falls from
// 5e-3 (small models) to the reference's 2e-4 (1B and up) monotonically;
// at 50% and below it is 0.6x that, growing monotonically with the
// sparsity; windows are the context, at most 2048, and a step holds four
// contexts of tokens, at most the reference's 8 x 2048.
func TestDefaultsPerModel(t *testing.T) {
	if DefaultLR(260e3, 0.9) != 5e-3 || DefaultLR(260e3, 0.7) != 5e-3 || DefaultLR(7e9, 0.95) != 2e-4 ||
		math.Abs(DefaultLR(1e8, 0.9)-math.Sqrt(5e-3*2e-4)) > 1e-9 {
		t.Fatalf("lr %g %g %g", DefaultLR(260e3, 0.9), DefaultLR(1e8, 0.9), DefaultLR(7e9, 0.95))
	}
	if math.Abs(DefaultLR(260e3, 0.5)-3e-3) > 1e-12 || DefaultLR(260e3, 0.2) != DefaultLR(260e3, 0.5) ||
		math.Abs(DefaultLR(260e3, 0.6)-math.Sqrt(3e-3*5e-3)) > 1e-12 {
		t.Fatalf("lr at 20/50/60%%: %g %g %g", DefaultLR(260e3, 0.2), DefaultLR(260e3, 0.5), DefaultLR(260e3, 0.6))
	}
	for n := int64(1e7); n < 2e9; n = n * 3 / 2 {
		if DefaultLR(n*3/2, 0.9) > DefaultLR(n, 0.9) {
			t.Fatalf("lr grows from %d to %d parameters", n, n*3/2)
		}
	}
	for s := 0.3; s < 0.99; s += 0.05 {
		if DefaultLR(1e6, s+0.05) < DefaultLR(1e6, s) {
			t.Fatalf("lr falls from sparsity %g to %g", s, s+0.05)
		}
	}
	if DefaultSeqLen(512) != 512 || DefaultSeqLen(4096) != 2048 || DefaultSeqLen(131072) != 2048 || DefaultSeqLen(1) != 1 {
		t.Fatal("DefaultSeqLen")
	}
	if DefaultBatch(512, 512) != 4 || DefaultBatch(4096, 2048) != 8 || DefaultBatch(131072, 2048) != 8 || DefaultBatch(512, 128) != 16 {
		t.Fatal("DefaultBatch")
	}
}

func TestLambdaSchedules(t *testing.T) {
	o := ElsaOptions{Steps: 101, Lambda: 0.01, LambdaFinal: 1}
	for _, c := range []struct {
		s         Schedule
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
// two store blocks per trained tensor, and the state costs at most 6 bytes
// per parameter.
func TestElsaLShortRun(t *testing.T) {
	src, ids := defaultWithCalib(t)
	store, err := lowmem.Open(t.TempDir(), "t", nil)
	if err != nil {
		t.Fatal(err)
	}
	opt := DefaultElsa()
	opt.Steps, opt.Batch, opt.SeqLen = 3, 1, 32
	opt.State, opt.Codecs = store, lowmem.ElsaLState
	elsaRun(t, src, ids, opt)
	if store.LastStep() != 2 {
		t.Fatalf("last committed step %d, want 2", store.LastStep())
	}
	blocks, _ := store.Blocks()
	// 9 tensors per layer (7 linear, 2 norms), embedding and final norm
	// (tied head).
	if want := 2 * (9*src.Cfg.Layers + 2); len(blocks) != want {
		t.Fatalf("%d state blocks, want %d: %v", len(blocks), want, blocks)
	}
	disk, _ := store.BytesOnDisk()
	if bpp := float64(disk) / float64(src.Model.TotalParams()); bpp > 6 {
		t.Fatalf("%.2f bytes per parameter on disk", bpp)
	}
}

// TestElsaStreamedMatchesResident: the streamed trainer (state read back
// from the store, gradients spilled, half-layer units, spilled
// activations) writes exactly the checkpoint of the all-resident one, for
// Elsa and Elsa-L. (The micro-batch is the same: it changes the order in
// which a gradient's terms are summed.)
func TestElsaStreamedMatchesResident(t *testing.T) {
	for _, codecs := range []lowmem.StateCodecs{lowmem.FP32State, lowmem.ElsaLState} {
		src, ids := defaultWithCalib(t)
		opt := DefaultElsa()
		opt.Steps, opt.Batch, opt.SeqLen, opt.Interval, opt.Projection = 5, 2, 32, 2, "objective"
		opt.Schedule, opt.LambdaFinal, opt.Codecs = "cosine", 0.05, codecs
		opt.Resident = true
		want, _ := elsaRun(t, src, ids, opt)
		opt.Resident, opt.Granularity, opt.SpillDir = false, model.Attention, t.TempDir()
		got, _ := elsaRun(t, src, ids, opt)
		for name, b := range want {
			if !bytes.Equal(got[name], b) {
				t.Fatalf("%s: %s differs between streamed and resident runs", codecs.Master.Name(), name)
			}
		}
	}
}

// TestElsaParts: dense tensors updated in parts (the embedding in 32 parts
// of 1024 values here) give exactly the result of whole-tensor updates with
// exact state, streamed or resident.
func TestElsaParts(t *testing.T) {
	src, ids := defaultWithCalib(t)
	opt := DefaultElsa()
	opt.Steps, opt.Batch, opt.SeqLen, opt.Interval = 3, 1, 32, 2
	opt.Resident = true
	want, _ := elsaRun(t, src, ids, opt)
	defer func(n int) { partElems = n }(partElems)
	partElems = 1024
	for _, resident := range []bool{true, false} {
		opt.Resident = resident
		store, _ := lowmem.Open(t.TempDir(), "t", nil)
		opt.State = store
		got, _ := elsaRun(t, src, ids, opt)
		for name, b := range want {
			if !bytes.Equal(got[name], b) {
				t.Fatalf("resident=%v: %s differs when updated in parts", resident, name)
			}
		}
		if blocks, _ := store.Blocks(); !slices.Contains(blocks, stream.EmbedTensor+".part31.opt") {
			t.Fatalf("no part blocks in %v", blocks)
		}
	}
}

// TestElsaResume: a run stopped after a committed step and resumed from
// the store ends bit-identical to an uninterrupted run (Elsa-L and fp32,
// streamed and resident).
func TestElsaResume(t *testing.T) {
	for _, resident := range []bool{true, false} {
		for _, codecs := range []lowmem.StateCodecs{lowmem.ElsaLState, lowmem.FP32State} {
			src, ids := defaultWithCalib(t)
			opt := DefaultElsa()
			opt.Steps, opt.Batch, opt.SeqLen, opt.Interval, opt.Projection = 6, 1, 32, 4, "objective"
			opt.Schedule, opt.LambdaFinal, opt.Codecs, opt.Resident = "linear", 0.1, codecs, resident
			want, _ := elsaRun(t, src, ids, opt)

			dir, grads := t.TempDir(), spill(t)
			b, _ := lowmem.Open(dir, "r", nil)
			stopped := opt
			stopped.State, stopped.Grads, stopped.stopAfter = b, grads, 2 // "killed" after committing step 2
			if _, err := Elsa(context.Background(), src, ids, stopped, memSink{}); err != nil {
				t.Fatal(err)
			}
			b2, err := lowmem.Open(dir, "r", nil)
			if err != nil || b2.LastStep() != 2 {
				t.Fatalf("store after stop: %v, step %d", err, b2.LastStep())
			}
			resumed := opt
			resumed.State, resumed.Grads, resumed.Resume = b2, grads, true
			src2, _ := defaultWithCalib(t)
			got, _ := elsaRun(t, src2, ids, resumed)
			for name, w := range want {
				if !bytes.Equal(got[name], w) {
					t.Fatalf("resident=%v %s: resumed run differs in %s", resident, codecs.Master.Name(), name)
				}
			}
			// Without Resume an existing store is refused.
			c, _ := lowmem.Open(dir, "r", nil)
			again := opt
			again.State, again.Grads = c, grads
			if _, err := Elsa(context.Background(), src2, ids, again, memSink{}); err == nil {
				t.Fatal("existing state overwritten without Resume")
			}
		}
	}
}

// TestElsaHeadInChunks: with the head's parts of a few rows and the
// lm_head in vocabulary chunks of several parts (the two-pass head, the
// embedding's gradient in rows), a run on a tied (stories260K) and an
// untied model (Qwen3) is bit-identical streamed and resident, and within
// float32 noise of the whole-head run, whose first gradient norm is the
// resident model's (model.Loss): the first step's loss (the initial
// weights) to 1e-6, every step's gradient norm to 1e-4, every output
// weight after 3 steps to 1e-3 of the tensor's largest value.
func TestElsaHeadInChunks(t *testing.T) {
	qwen, err := stream.Open("../testdata/golden/qwen3-tiny")
	if err != nil {
		t.Fatal(err)
	}
	defer qwen.Close()
	r := rand.New(rand.NewPCG(3, 3))
	qids := make([]int, 4000)
	for i := range qids {
		qids[i] = r.IntN(qwen.Cfg.Vocab)
	}
	stories, sids := defaultWithCalib(t)
	for _, m := range []struct {
		src        *stream.Source
		ids        *dataset.IDs
		part, rows int
	}{{stories, sids, 16 * 64, 100}, {qwen, dataset.Compact(qids), 8 * 48, 20}} {
		opt := DefaultElsa()
		opt.Steps, opt.Batch, opt.SeqLen, opt.Interval = 3, 2, 32, 2
		var losses, norms []float64
		opt.Step = func(s StepMetrics) { losses, norms = append(losses, s.Loss), append(norms, s.GradNorm) }
		want, _ := elsaRun(t, m.src, m.ids, opt)
		wantLoss, wantNorms := losses[0], norms
		// Step 0's gradient norm is the whole model's, all resident.
		w, err := m.src.LoadAll()
		if err != nil {
			t.Fatal(err)
		}
		c := m.src.Cfg
		in, tg, _ := drawBatch(rand.New(rand.NewPCG(opt.Seed, 0xe15a)), m.ids, opt.Batch, opt.SeqLen)
		g := c.NewWeights()
		c.Loss(w, model.NewRope(c, opt.SeqLen), in, tg, opt.Batch, opt.SeqLen, g, 1/float32(len(tg)))
		sq := sumSquares(g.Head.Embed) + sumSquares(g.Head.Norm)
		if !c.TiedEmbeddings {
			sq += sumSquares(g.Head.LMHead)
		}
		for _, b := range g.Blocks {
			for _, p := range c.BlockParams() {
				sq += sumSquares(*p.Get(b))
			}
		}
		if math.Abs(math.Sqrt(sq)-norms[0]) > 1e-5*norms[0] {
			t.Fatalf("%s: step 0's gradient norm %v, resident model %v", m.src.Model.Dir, norms[0], math.Sqrt(sq))
		}
		func() {
			defer func(n int, vc func(model.Config) int) { partElems, vocabChunk = n, vc }(partElems, vocabChunk)
			partElems, vocabChunk = m.part, func(model.Config) int { return m.rows }
			var runs []memSink
			for _, resident := range []bool{false, true} {
				opt.Resident = resident
				losses, norms = nil, nil
				got, _ := elsaRun(t, m.src, m.ids, opt)
				if math.Abs(losses[0]-wantLoss) > 1e-6*wantLoss {
					t.Fatalf("%s: first loss %v in chunks, %v whole", m.src.Model.Dir, losses[0], wantLoss)
				}
				for s, n := range norms { // the clipping sees the same gradient norm
					if math.Abs(n-wantNorms[s]) > 1e-4*wantNorms[s] {
						t.Fatalf("%s: step %d's gradient norm %v in chunks, %v whole", m.src.Model.Dir, s, n, wantNorms[s])
					}
				}
				runs = append(runs, got)
			}
			for name, b := range runs[0] {
				if !bytes.Equal(runs[1][name], b) {
					t.Fatalf("%s: %s differs between streamed and resident runs in chunks", m.src.Model.Dir, name)
				}
				g, w := f32s(b), f32s(want[name])
				var big, diff float64
				for i := range w {
					big = max(big, math.Abs(float64(w[i])))
					diff = max(diff, math.Abs(float64(g[i]-w[i])))
				}
				if diff > 1e-3*big {
					t.Fatalf("%s: %s differs from the whole-head run by %g (largest value %g)", m.src.Model.Dir, name, diff, big)
				}
			}
		}()
	}
}

// f32s decodes little-endian float32 tensor bytes.
func f32s(b []byte) []float32 {
	x := make([]float32, len(b)/4)
	for i := range x {
		x[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return x
}
