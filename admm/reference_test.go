package admm

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/elsa-stream/elsa-stream/dataset"
	"github.com/elsa-stream/elsa-stream/internal/defaultmodel"
	"github.com/elsa-stream/elsa-stream/lowmem"
	"github.com/elsa-stream/elsa-stream/shard"
	"github.com/elsa-stream/elsa-stream/stream"
	"github.com/elsa-stream/elsa-stream/tokenizer"
)

// TestElsaMatchesReference runs Elsa on stories260K and the independent
// PyTorch implementation of the same semantics (scripts/elsa_reference.py,
// written from docs/design.md, not from this code) on the very same
// windows, and compares every trained tensor's W, m, v, z and u after the
// last step (before the final projection) and every step's loss: 64 steps
// (8 with -short) at 80%, objective-aware projection, a dual update every
// 4 steps. Skipped when /usr/bin/python3 has no torch.
//
// "Float32 noise" is measured, not assumed: Adam's first steps are nearly
// sign(g)·lr, so an entry whose gradient is rounding noise moves by ±lr
// either way and the trajectories drift apart. The reference also runs
// in float64; elsa-stream's distance from it (per field, all tensors
// together) must be within 3x the float32 reference's own distance from
// it, plus 1e-6. The same comparison runs for 2:4, whose projection is
// per group of 4 input columns (64 steps: elsa-stream 0.0612 / 0.0981 in
// m / z, the float32 reference 0.0586 / 0.0861).
func TestElsaMatchesReference(t *testing.T) {
	if err := exec.Command("/usr/bin/python3", "-c", "import torch, numpy").Run(); err != nil {
		t.Skip("needs Debian's python3-torch and python3-numpy")
	}
	t.Run("80%", func(t *testing.T) { elsaMatchesReference(t, Unstructured, 0.8) })
	t.Run("2:4", func(t *testing.T) { elsaMatchesReference(t, Pattern{2, 4}, 0.5) })
}

func elsaMatchesReference(t *testing.T, pat Pattern, sparsity float64) {
	src, ids := defaultWithCalib(t)
	dir, err := defaultmodel.Dir()
	if err != nil {
		t.Fatal(err)
	}
	opt := DefaultElsa()
	opt.Steps, opt.Interval, opt.Sparsity, opt.Pattern = 64, 4, sparsity, pat
	if testing.Short() {
		// 2:4 decides per group of 4, so a group whose two middle scores
		// nearly tie flips on rounding at the step-4 projection: at step 8
		// one such flip, in either implementation, dominates the distance
		// (measured: elsa-stream 4x the float32 reference once, 0.5x at step
		// 5); from step 16 on both are at the same chaotic level.
		opt.Steps = 8
		if pat.IsNM() {
			opt.Steps = 16
		}
	}
	if n, err := strconv.Atoi(os.Getenv("ELSA_REF_STEPS")); err == nil {
		opt.Steps = n // for finding the first step that differs
	}
	var starts [][]int
	var losses []float64
	opt.onBatch = func(s []int) { starts = append(starts, s) }
	opt.Step = func(m StepMetrics) { losses = append(losses, m.Loss) }
	store, err := lowmem.Open(t.TempDir(), "t", nil)
	if err != nil {
		t.Fatal(err)
	}
	opt.State = store
	elsaRun(t, src, ids, opt)

	ref32 := runReference(t, dir, ids, starts, opt, "float32", "")
	ref64 := runReference(t, dir, ids, starts, opt, "float64", "")
	var dGo, dRef float64 // largest loss difference from the float64 reference
	for s := range losses {
		dGo, dRef = max(dGo, math.Abs(losses[s]-ref64.losses[s])), max(dRef, math.Abs(ref32.losses[s]-ref64.losses[s]))
	}
	t.Logf("loss: elsa-stream %.3g, float32 reference %.3g from the float64 reference", dGo, dRef)
	if dGo > 3*dRef+1e-6 {
		t.Errorf("the losses differ from the float64 reference by %.3g, the float32 reference's by %.3g", dGo, dRef)
	}
	type dist struct{ goSq, refSq, norm float64 }
	fields := map[string]*dist{}
	for _, name := range trainedTensors(src) {
		pruned := isLinear(src, name)
		tt, _ := src.Model.Tensor(name)
		n := int(tt.NumElements())
		st := state{W: make([]float32, n), M: make([]float32, n), V: make([]float32, n)}
		got := map[string][]float32{"w": st.W, "m": st.M, "v": st.V}
		if pruned {
			st.Z, st.U = make([]float32, n), make([]float32, n)
			got["z"], got["u"] = st.Z, st.U
		}
		if err := store.ReadTensorState(opt.Steps-1, name, lowmem.FP32State, &st, pruned, false); err != nil {
			t.Fatal(err)
		}
		for f, g := range got {
			a, b := ref32.tensor(t, name, f, n), ref64.tensor(t, name, f, n)
			d := fields[f]
			if d == nil {
				d = &dist{}
				fields[f] = d
			}
			var goSq, refSq float64
			for i := range g {
				goSq += (float64(g[i]) - float64(b[i])) * (float64(g[i]) - float64(b[i]))
				refSq += (float64(a[i]) - float64(b[i])) * (float64(a[i]) - float64(b[i]))
				d.norm += float64(b[i]) * float64(b[i])
			}
			d.goSq, d.refSq = d.goSq+goSq, d.refSq+refSq
			if os.Getenv("ELSA_REF_VERBOSE") != "" {
				t.Logf("%s.%s: %.3g, float32 reference %.3g", name, f, math.Sqrt(goSq), math.Sqrt(refSq))
			}
		}
	}
	for f, d := range fields {
		g, r := math.Sqrt(d.goSq/d.norm), math.Sqrt(d.refSq/d.norm)
		t.Logf("%d steps, %s: elsa-stream %.3g, float32 reference %.3g from the float64 reference (relative)", opt.Steps, f, g, r)
		if g > 3*r+1e-6 {
			t.Errorf("%s: elsa-stream is %.3g from the float64 reference, the float32 reference %.3g", f, g, r)
		}
	}
}

// reference is a run of scripts/elsa_reference.py.
type reference struct {
	dir    string
	losses []float64
}

// runReference runs the reference on Elsa's windows (starts) in dtype,
// saving its pruned model in save when set.
func runReference(t *testing.T, model string, ids *dataset.IDs, starts [][]int, opt ElsaOptions, dtype, save string) reference {
	t.Helper()
	tmp := t.TempDir()
	calib := filepath.Join(tmp, "calib.u16")
	b := make([]byte, 0, 2*ids.Len())
	for _, id := range ids.Ints() {
		b = binary.LittleEndian.AppendUint16(b, uint16(id))
	}
	var nm []int // the reference's N:M, null for unstructured
	if opt.Pattern.IsNM() {
		nm = []int{opt.Pattern.N, opt.Pattern.M}
	}
	job, _ := json.Marshal(map[string]any{"nm": nm, "model": model, "calib": calib, "token_bytes": 2, "steps": opt.Steps,
		"seqlen": opt.SeqLen, "starts": starts, "lr": opt.LR, "lambda": opt.Lambda, "interval": opt.Interval,
		"clip": opt.Clip, "sparsity": opt.Sparsity, "projection": string(opt.Projection), "train_dense": opt.TrainDense,
		"dtype": dtype})
	jobPath, out := filepath.Join(tmp, "job.json"), filepath.Join(tmp, "out")
	if os.WriteFile(calib, b, 0o644) != nil || os.WriteFile(jobPath, job, 0o644) != nil {
		t.Fatal("cannot write the reference's inputs")
	}
	args := []string{"../scripts/elsa_reference.py", "--job", jobPath, "--out", out}
	if save != "" {
		args = append(args, "--save", save)
	}
	if o, err := exec.Command("/usr/bin/python3", args...).CombinedOutput(); err != nil {
		t.Fatalf("reference: %v\n%s", err, o)
	}
	r := reference{dir: out}
	if lb, err := os.ReadFile(filepath.Join(out, "losses.json")); err != nil || json.Unmarshal(lb, &r.losses) != nil {
		t.Fatalf("reference losses: %v", err)
	}
	return r
}

// tensor reads field f (w, m, v, z, u) of tensor name, n values.
func (r reference) tensor(t *testing.T, name, f string, n int) []float32 {
	raw, err := os.ReadFile(filepath.Join(r.dir, name+"."+f+".f32"))
	if err != nil || len(raw) != 4*n {
		t.Fatalf("reference %s.%s: %v (%d bytes, want %d)", name, f, err, len(raw), 4*n)
	}
	x := make([]float32, n)
	for i := range x {
		x[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
	}
	return x
}

// trainedTensors are the tensors a default Elsa run trains: every block
// tensor, the embedding and the final norm (stories260K is tied).
func trainedTensors(src *stream.Source) []string {
	names := []string{stream.EmbedTensor, stream.NormTensor}
	for l := 0; l < src.Cfg.Layers; l++ {
		for _, p := range src.Cfg.BlockParams() {
			names = append(names, stream.LayerTensor(l, p.Suffix))
		}
	}
	return names
}

// isLinear reports whether block tensor name is a linear weight (pruned).
func isLinear(src *stream.Source, name string) bool {
	for _, p := range src.Cfg.BlockParams() {
		if p.Linear && stream.LayerTensor(stream.TensorLayer(name), p.Suffix) == name {
			return true
		}
	}
	return false
}

// TestElsaQualityMatchesReference (ELSA_REF_FULL=1; optional
// ELSA_REF_SPARSITY, ELSA_REF_PATTERN, ELSA_REF_SEED, ELSA_REF_PROJECTION,
// ELSA_REF_INTERVAL) runs the
// command's defaults on stories260K (560 steps of 4 × 512 tokens, the
// learning rate of the target, the whole embedded calibration text) in Go and in the reference on the same windows, and reports the
// perplexity of both pruned models on the first 100 validation stories.
// It measures; it asserts only that both ran (a trajectory of Adam at lr
// 5e-3 is chaotic, so the two differ by seed-like noise, not bits).
func TestElsaQualityMatchesReference(t *testing.T) {
	if os.Getenv("ELSA_REF_FULL") == "" {
		t.Skip("set ELSA_REF_FULL=1 (a few minutes)")
	}
	if err := exec.Command("/usr/bin/python3", "-c", "import torch, numpy").Run(); err != nil {
		t.Skip("needs Debian's python3-torch and python3-numpy")
	}
	src, _ := defaultWithCalib(t)
	dir, _ := defaultmodel.Dir()
	tok, err := tokenizer.Load(dir, src.Cfg.Vocab, nil)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := dataset.Parse("calib", defaultmodel.TrainCalib, tok, dataset.Options{Format: dataset.Stories})
	if err != nil {
		t.Fatal(err)
	}
	valid, err := dataset.Parse("valid", defaultmodel.ValidExcerpt, tok, dataset.Options{Format: dataset.Stories})
	if err != nil {
		t.Fatal(err)
	}
	opt := DefaultElsa()
	// The command's defaults: windows of the context, four contexts a step.
	opt.SeqLen = DefaultSeqLen(src.Cfg.MaxPositions)
	opt.Batch = DefaultBatch(src.Cfg.MaxPositions, opt.SeqLen)
	if v, err := strconv.ParseFloat(os.Getenv("ELSA_REF_SPARSITY"), 64); err == nil {
		opt.Sparsity = v
	}
	if p := os.Getenv("ELSA_REF_PATTERN"); p != "" {
		if opt.Pattern, err = ParsePattern(p); err != nil {
			t.Fatal(err)
		}
		opt.Sparsity = opt.Pattern.Sparsity(opt.Sparsity)
	}
	if v, err := strconv.ParseUint(os.Getenv("ELSA_REF_SEED"), 10, 64); err == nil {
		opt.Seed = v
	}
	if p := os.Getenv("ELSA_REF_PROJECTION"); p != "" {
		opt.Projection = Projection(p)
	}
	if v, err := strconv.Atoi(os.Getenv("ELSA_REF_INTERVAL")); err == nil {
		opt.Interval = v
	}
	opt.LR = DefaultLR(src.Model.TotalParams(), opt.Sparsity)
	var starts [][]int
	opt.onBatch = func(s []int) { starts = append(starts, s) }
	tmp := t.TempDir()
	goDir := filepath.Join(tmp, "go")
	out := memSink{}
	store, _ := lowmem.Open(t.TempDir(), "t", nil)
	opt.State, opt.Grads = store, spill(t)
	if _, err := Elsa(context.Background(), src, ids, opt, out); err != nil {
		t.Fatal(err)
	}
	writeSink(t, src, out, goDir)
	refDir := filepath.Join(tmp, "ref")
	runReference(t, dir, ids, starts, opt, "float32", refDir)
	ppl := map[string]float64{}
	for name, d := range map[string]string{"go": goDir, "reference": refDir} {
		s, err := stream.Open(d)
		if err != nil {
			t.Fatal(err)
		}
		res, err := s.Sweeper().Evaluate(context.Background(), valid, dataset.EvalWindows(valid, 512), stream.EvalOptions{})
		s.Close()
		if err != nil {
			t.Fatal(err)
		}
		ppl[name] = res.PPL()
	}
	t.Logf("sparsity %.2f (%s), seed %d, %s, interval %d: ppl elsa-stream %.4f, reference %.4f (same %d windows per step)",
		opt.Sparsity, opt.Pattern, opt.Seed, opt.Projection, opt.Interval, ppl["go"], ppl["reference"], opt.Batch)
}

// writeSink writes a run's output tensors as a model folder beside src's
// config.
func writeSink(t *testing.T, src *stream.Source, out memSink, dir string) {
	t.Helper()
	specs := OutputOrder(src)
	w, err := shard.NewWriter(dir, specs, shard.WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, sp := range specs {
		if err := w.WriteTensor(sp.Name, out[sp.Name]); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.CopyFile(filepath.Join(src.Model.Dir, "config.json")); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
}
