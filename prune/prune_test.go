package prune

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/elsa-stream/elsa-stream/admm"
	"github.com/elsa-stream/elsa-stream/dataset"
	"github.com/elsa-stream/elsa-stream/internal/budget"
	"github.com/elsa-stream/elsa-stream/internal/defaultmodel"
	"github.com/elsa-stream/elsa-stream/lowmem"
	"github.com/elsa-stream/elsa-stream/stream"
)

// tinyJob is a few-step Elsa job on the embedded stories260K.
func tinyJob(t *testing.T) Job {
	t.Helper()
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	dir, err := defaultmodel.Dir()
	if err != nil {
		t.Fatal(err)
	}
	e := DefaultElsaSettings()
	e.Steps, e.Batch, e.Interval = 3, 2, 2
	return Job{Model: dir, Out: filepath.Join(t.TempDir(), "out"), Method: admm.MethodElsa, Sparsity: 0.8, NSamples: 4, SeqLen: 32,
		Calib: Data{Name: "train", Bytes: defaultmodel.TrainCalib, Format: dataset.Stories}, Elsa: e}
}

// TestResumeRefusesChangedSettings: the resume identity was a list of 21
// values without the OWL settings, nsamples, the calibration format or
// the contents of the data: a resume with another --owl-lambda was
// accepted and wrote a different model.
func TestResumeRefusesChangedSettings(t *testing.T) {
	j := tinyJob(t)
	j.Allocation = Allocation{Kind: OWL, OWLM: 5, OWLLambda: 0.08}
	j.Work = filepath.Join(t.TempDir(), "work")
	if _, err := Run(context.Background(), j); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		edit func(*Job)
		want []string
	}{
		{func(j *Job) { j.Allocation.OWLLambda = 0.1 }, []string{"owl-lambda was 0.08, now 0.1", "allocation.map"}},
		{func(j *Job) { j.NSamples = 8 }, []string{"nsamples was 4, now 8"}},
		{func(j *Job) {
			j.Calib = Data{Name: "other", Bytes: defaultmodel.TrainCalib[:len(defaultmodel.TrainCalib)/2], Format: dataset.Stories}
		}, []string{"calib.tokens"}},
		{func(j *Job) { j.Calib.Format = dataset.Text }, []string{"calib.tokens"}},
	} {
		k := j
		k.Out = filepath.Join(t.TempDir(), "out2")
		k.Elsa.Resume = true
		c.edit(&k)
		_, err := Run(context.Background(), k)
		if !errors.Is(err, ErrInvalid) {
			t.Fatalf("resume with changed settings: %v", err)
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%v: does not name %q", err, w)
			}
		}
		if _, err := os.Stat(k.Out); err == nil {
			t.Fatal("a refused resume wrote an output")
		}
	}
}

// TestTargetsValidated: OWL's layer sparsities were not checked, and a
// target above 1 zeroed a whole tensor.
func TestTargetsValidated(t *testing.T) {
	j := tinyJob(t)
	j.Method, j.Sparsity = admm.MethodWanda, 0.9
	j.Allocation = Allocation{Kind: OWL, OWLM: 2, OWLLambda: 0.5}
	_, err := Run(context.Background(), j)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "outside [0, 1)") {
		t.Fatalf("OWL beyond 1: %v", err)
	}
	if _, err := os.Stat(j.WorkDir()); err == nil {
		t.Fatal("the refused job created its work folder")
	}
}

// TestStateCostFromCodecs: the planner took Elsa-L's state at a fixed 6
// B/param whatever --state said, so master=fp32 failed mid-run instead
// of being refused up front.
func TestStateCostFromCodecs(t *testing.T) {
	exact, low := admm.StateCost(lowmem.FP32State), admm.StateCost(lowmem.ElsaLState)
	if exact.PerParam < 16 || exact.PerParam > 16.2 || low.PerParam < 5.1 || low.PerParam > 5.3 || low.Master != 2 || exact.Grad != 4 {
		t.Fatalf("state costs: exact %+v, Elsa-L %+v", exact, low)
	}
	j := tinyJob(t)
	j.Method = admm.MethodElsaL
	j.Elsa.State, _ = lowmem.ParseStateCodecs("master=fp32,m=fp32,v=fp32,zu=fp32,grad=fp32", lowmem.ElsaLState)
	// A budget between the minimum of the default Elsa-L state and that of
	// fp32 state: only the job's own codecs tell them apart.
	src, err := stream.Open(j.Model)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	minimum := func(c lowmem.StateCodecs) int64 {
		p, _ := stream.MakePlan(stream.PlanInput{Cfg: src.Cfg, WeightBytes: 4, Batch: j.Elsa.Batch, SeqLen: j.SeqLen, Budget: 1,
			Job: stream.ElsaL, GFLOPS: 1, State: admm.StateCost(c)})
		return p.RAMTotal
	}
	lo, hi := minimum(lowmem.ElsaLState), minimum(j.Elsa.State)
	if hi <= lo {
		t.Fatalf("fp32 state must need more: %d vs %d", hi, lo)
	}
	j.MemBudget = (lo + hi) / 2
	_, err = Run(context.Background(), j)
	if !errors.Is(err, budget.ErrOverBudget) {
		t.Fatalf("fp32 Elsa-L state at %d bytes: %v", j.MemBudget, err)
	}
	if _, err := os.Stat(j.WorkDir()); err == nil {
		t.Fatal("refused after creating the work folder")
	}
	j.Elsa.State = lowmem.ElsaLState
	if _, err := Run(context.Background(), j); err != nil {
		t.Fatalf("the default Elsa-L state fits the same budget: %v", err)
	}
}

// TestInitPlannedAsItself: --init sparsegpt was planned as Hessians inside
// the Elsa plan; it is a one-shot job of its own, held before Elsa's.
func TestInitPlannedAsItself(t *testing.T) {
	j := tinyJob(t)
	j.Elsa.Init = admm.MethodSparseGPT
	src, err := stream.Open(j.Model)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	r := &run{job: j, src: src, ledger: budget.New(1 << 30), seqLen: j.SeqLen}
	if err := r.makePlans(); err != nil {
		t.Fatal(err)
	}
	has := func(p *stream.Plan, prefix string) bool {
		for _, c := range p.RAM {
			if strings.HasPrefix(c.Name, prefix) {
				return true
			}
		}
		return false
	}
	if r.initPlan == nil || r.initPlan.Job != stream.Prune || !has(r.initPlan, "Hessians") || has(r.plan, "Hessians") || r.plan.Job != stream.Elsa {
		t.Fatalf("init plan %+v, main plan %+v", r.initPlan, r.plan)
	}
	j.Elsa.Init = admm.MethodMagnitude
	r.job = j
	if err := r.makePlans(); err != nil || r.initPlan != nil {
		t.Fatalf("magnitude init needs no plan: %v", err)
	}
}

// cancelAt cancels a run when Elsa reports step n done.
type cancelAt struct {
	n      int
	cancel context.CancelFunc
}

func (c cancelAt) Note(string) {}
func (c cancelAt) Progress(label, unit string, done, total int) {
	if unit == "steps" && done == c.n {
		c.cancel()
	}
}

// TestCancelThenResume: a cancelled run stops at a safe point with its
// last step committed, writes no output, and resuming gives the bytes of
// an uninterrupted run.
func TestCancelThenResume(t *testing.T) {
	j := tinyJob(t)
	j.Elsa.Steps = 6
	whole := j
	whole.Out = filepath.Join(t.TempDir(), "whole")
	if _, err := Run(context.Background(), whole); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	j.Observer = cancelAt{3, cancel}
	_, err := Run(ctx, j)
	var stopped *Interrupted
	if !errors.As(err, &stopped) || !errors.Is(err, context.Canceled) || stopped.Committed < 2 || !stopped.Elsa {
		t.Fatalf("cancelled run: %v", err)
	}
	if _, err := os.Stat(j.Out); err == nil {
		t.Fatal("a cancelled run wrote its output")
	}
	j.Observer, j.Elsa.Resume = nil, true
	res, err := Run(context.Background(), j)
	if err != nil || res.ResumedAfter != stopped.Committed {
		t.Fatalf("resume: %v (resumed after %d, committed %d)", err, res.ResumedAfter, stopped.Committed)
	}
	a, _ := os.ReadFile(filepath.Join(whole.Out, "model.safetensors"))
	b, _ := os.ReadFile(filepath.Join(j.Out, "model.safetensors"))
	if len(a) == 0 || string(a) != string(b) {
		t.Fatal("interrupted and resumed output differs from the uninterrupted run's")
	}
}

// TestElsaFallsBack: Elsa never returns a model worse than the one-shot
// model it started from on the calibration windows held out from its
// training. A learning rate of 3 wrecks Elsa's result: the run says so,
// and writes exactly the magnitude pruning of the checkpoint (what
// --method magnitude writes); with Fallback off it writes Elsa's and
// still reports both.
func TestElsaFallsBack(t *testing.T) {
	j := tinyJob(t)
	j.Elsa.LR, j.Elsa.Steps = 3, 4
	var notes noteList
	j.Observer = &notes
	res, err := Run(context.Background(), j)
	if err != nil {
		t.Fatal(err)
	}
	h := res.HeldOut
	if h == nil || h.ElsaPPL <= h.InitPPL || !strings.HasPrefix(h.Returned, "magnitude") || h.Tokens < 2 {
		t.Fatalf("held-out check %+v", h)
	}
	if !strings.Contains(strings.Join(notes, "\n"), "WARNING: Elsa lost to its magnitude initialisation") {
		t.Fatalf("no warning in %q", notes)
	}
	mag := j
	mag.Method, mag.Out = admm.MethodMagnitude, filepath.Join(t.TempDir(), "magnitude")
	if _, err := Run(context.Background(), mag); err != nil {
		t.Fatal(err)
	}
	a, b := tensorBytes(t, j.Out), tensorBytes(t, mag.Out)
	for name, want := range b {
		if string(a[name]) != string(want) {
			t.Fatalf("%s differs from the magnitude pruning", name)
		}
	}
	side, _ := os.ReadFile(filepath.Join(j.Out, "sparsity.json"))
	if !strings.Contains(string(side), `"returned": "magnitude (Elsa's initialisation)"`) {
		t.Fatalf("sparsity.json does not name the model it holds:\n%s", side)
	}
	j.Elsa.Fallback, j.Out = false, filepath.Join(t.TempDir(), "kept")
	if res, err = Run(context.Background(), j); err != nil || res.HeldOut.Returned != "elsa" || res.HeldOut.ElsaPPL <= res.HeldOut.InitPPL {
		t.Fatalf("fallback off: %v %+v", err, res.HeldOut)
	}
}

// noteList keeps a run's notes.
type noteList []string

func (n *noteList) Note(msg string)                   { *n = append(*n, msg) }
func (n *noteList) Progress(string, string, int, int) {}

// tensorBytes reads every tensor's bytes of a one-shard model folder.
func tensorBytes(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	src, err := stream.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	out := map[string][]byte{}
	for _, name := range src.Model.Names {
		tt, _ := src.Model.Tensor(name)
		b := make([]byte, tt.NumBytes())
		if err := src.ReadRaw(name, b); err != nil {
			t.Fatal(err)
		}
		out[name] = b
	}
	return out
}
