package prune

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"

	"github.com/elsa-stream/elsa-stream/admm"
	"github.com/elsa-stream/elsa-stream/dataset"
	"github.com/elsa-stream/elsa-stream/lowmem"
	"github.com/elsa-stream/elsa-stream/shard"
	"github.com/elsa-stream/elsa-stream/stream"
)

// elsa trains with Elsa. The optimizer state lives in Work/state (exact,
// or through the Elsa-L codecs), committed every step; Resume continues
// from its last committed step, and only when the run's fingerprint is the
// stored one. The state stays in RAM as well when the 24 B/param of
// decoded state and gradient fit the budget next to the plan (unless
// Streamed); otherwise it is streamed from disk one tensor at a time,
// gradients spilled to Work/grads.
func (r *run) elsa(ctx context.Context, w admm.TensorSink, res *Result) ([]admm.TensorStats, error) {
	j, work := &r.job, r.job.WorkDir()
	dir := filepath.Join(work, "state")
	if !j.Elsa.Resume {
		if err := os.RemoveAll(dir); err != nil {
			return nil, err
		}
	}
	fp, err := r.fingerprint()
	if err != nil {
		return nil, err
	}
	store, err := lowmem.Open(dir, fp.String(), r.ledger)
	if err != nil {
		return nil, explainMismatch(err, fp)
	}
	if j.Elsa.Resume && store.LastStep() >= 0 {
		r.note("resuming after step %d of %d from %s", store.LastStep(), j.Elsa.Steps, dir)
		res.ResumedAfter = store.LastStep()
	}
	// The --init run goes first, planned as the one-shot job it is and
	// holding its own plan; the trainer's plan is held after it.
	initFrom, err := r.elsaInit(ctx)
	if err != nil {
		return nil, err
	}
	if initFrom != nil {
		defer initFrom.Close()
	}
	hold, err := r.holdPlan(string(r.plan.Job)+" plan", r.plan)
	if err != nil {
		return nil, err
	}
	defer hold.Release()

	e := j.Elsa
	opt := admm.ElsaOptions{Steps: e.Steps, Batch: e.Batch, SeqLen: r.seqLen, LR: e.LR, Lambda: e.Lambda, LambdaFinal: e.LambdaFinal,
		Schedule: e.Schedule, Interval: e.Interval, Clip: e.Clip, Projection: e.Projection, Sparsity: j.Sparsity, Pattern: j.Pattern,
		LayerSparsity: r.layerSparsity(), TrainDense: e.TrainDense, Seed: j.Seed, State: store, Codecs: e.State, InitFrom: initFrom,
		Granularity: r.plan.Units, MicroBatch: r.microBatch(), Resume: e.Resume}
	if r.plan.SpillActivations {
		opt.SpillDir = work
	}
	var trained int64
	for _, n := range r.src.Model.Names {
		t, _ := r.src.Model.Tensor(n)
		trained += t.NumElements()
	}
	extra := 24 * trained // decoded W, m, v, z, u and the gradient
	opt.Resident = !e.Streamed && r.plan.RAMTotal+extra <= r.plan.Budget
	if opt.Resident {
		h, err := r.ledger.Reserve("optimizer state and gradients in RAM (24 B/param)", extra)
		if err != nil {
			return nil, err
		}
		defer h.Release()
	}
	if opt.Grads, err = lowmem.NewSpill(filepath.Join(work, "grads")); err != nil {
		return nil, err
	}
	mode := "streamed from " + work
	if opt.Resident {
		mode = "in RAM (and committed to " + work + ")"
	}
	r.note("%s, %d steps x %d windows x %d tokens, state %s, units: %s, micro-batch %d",
		j.Method, opt.Steps, opt.Batch, r.seqLen, mode, r.plan.Granularity, opt.MicroBatch)
	enc := json.NewEncoder(r.metrics)
	done := max(0, store.LastStep()+1)
	r.progress(string(j.Method), "steps", done, opt.Steps)
	opt.Step = func(m admm.StepMetrics) {
		enc.Encode(m)
		if m.Error == "" {
			done++
			r.progress(string(j.Method), "steps", done, opt.Steps)
		}
	}
	stats, err := admm.Elsa(ctx, r.src, r.calibIDs, opt, w)
	r.committed = store.LastStep() // what an interruption leaves
	return stats, err
}

// elsaInit runs the one-shot baseline Elsa.Init names (wanda, sparsegpt)
// into Work/init, whose pruned tensors are Elsa's initial z; magnitude
// needs nothing (nil). A resumed run reuses the folder.
func (r *run) elsaInit(ctx context.Context) (*stream.Source, error) {
	j := &r.job
	if j.Elsa.Init == admm.MethodMagnitude {
		return nil, nil
	}
	dir := filepath.Join(j.WorkDir(), "init")
	if _, err := os.Stat(dir); err != nil || !j.Elsa.Resume {
		inputs, _, err := dataset.CalibWindows(r.calibIDs, r.seqLen, j.NSamples, j.Seed)
		if err != nil {
			return nil, err
		}
		r.note("initial z from %s (%d x %d calibration tokens)", j.Elsa.Init, j.NSamples, r.seqLen)
		if _, err := shard.RemoveStaleTemps(dir); err != nil {
			return nil, err
		}
		hold, err := r.holdPlan(string(j.Elsa.Init)+" plan (initial z)", r.initPlan)
		if err != nil {
			return nil, err
		}
		defer hold.Release()
		w, err := shard.NewWriter(dir, admm.OutputOrder(r.src), shard.WriterOptions{Force: true, FiniteOnly: true})
		if err != nil {
			return nil, err
		}
		opt := admm.OneShotOptions{Method: j.Elsa.Init, Sparsity: j.Sparsity, Pattern: j.Pattern, MicroBatch: r.initPlan.MicroBatch,
			LayerSparsity: r.layerSparsity()}
		if _, err := admm.OneShot(ctx, r.src, inputs, j.NSamples, r.seqLen, opt, w); err != nil {
			w.Abort()
			return nil, err
		}
		if err := w.CopyFile(filepath.Join(j.Model, shard.ConfigFile)); err != nil {
			return nil, err
		}
		if err := w.Commit(); err != nil {
			return nil, err
		}
	}
	return stream.OpenWith(dir, stream.Options{Ledger: r.ledger})
}
