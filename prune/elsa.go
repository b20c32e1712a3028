package prune

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/elsa-stream/elsa-stream/admm"
	"github.com/elsa-stream/elsa-stream/dataset"
	"github.com/elsa-stream/elsa-stream/internal/mpi"
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
	if j.Elsa.Resume {
		// Every rank continues rank 0's committed state (a kill can leave
		// the ranks one step apart; their states are otherwise the same).
		if err := mpi.SyncDir(j.Comm, dir); err != nil {
			return nil, fmt.Errorf("copy rank 0's state to every rank: %w", err)
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
	if lo, hi, err := j.Comm.MinMaxInt(store.LastStep()); err != nil {
		return nil, err
	} else if lo != hi {
		return nil, fmt.Errorf("the ranks' states end at different steps (%d to %d): resume needs every rank's work folder as the interruption left it", lo, hi)
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
		Granularity: r.plan.Units, MicroBatch: r.microBatch(), Resume: e.Resume, KeepActivations: r.plan.KeepActivations,
		Compute: j.Compute}
	if j.Comm.Size() > 1 {
		opt.Parallel = j.Comm
		lo, hi := stream.ShareOf(opt.Batch, j.Comm.Rank(), j.Comm.Size())
		r.note("data parallel: rank %d of %d computes windows [%d, %d) of each step's %d", j.Comm.Rank(), j.Comm.Size(), lo, hi, opt.Batch)
	}
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
	acts := "recomputed in the backward"
	if opt.KeepActivations {
		acts = "kept for the backward (no recompute)"
	}
	r.note("%s, %d steps x %d windows x %d tokens, state %s, units: %s, micro-batch %d, activations %s, %s GEMMs on %s",
		j.Method, opt.Steps, opt.Batch, r.seqLen, mode, r.plan.Granularity, opt.MicroBatch, acts, j.Compute, j.Compute.Backend())
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
	if r.heldOut == nil {
		stats, err := admm.Elsa(ctx, r.src, r.trainIDs, opt, w)
		r.committed = store.LastStep() // what an interruption leaves
		return stats, err
	}
	// Elsa's model goes to Work/elsa first: it is written to the output
	// only if it beats its one-shot initialisation on the held-out tail.
	elsaDir := filepath.Join(work, "elsa")
	ew, err := shard.NewWriter(elsaDir, admm.OutputOrder(r.src), shard.WriterOptions{Force: true, FiniteOnly: true})
	if err != nil {
		return nil, err
	}
	stats, err := admm.Elsa(ctx, r.src, r.trainIDs, opt, ew)
	r.committed = store.LastStep()
	if err != nil {
		ew.Abort()
		return nil, err
	}
	if err := ew.CopyFile(filepath.Join(j.Model, shard.ConfigFile)); err != nil {
		return nil, err
	}
	if err := ew.Commit(); err != nil {
		return nil, err
	}
	hold.Release()
	return r.fallback(ctx, elsaDir, initFrom, stats, w, res)
}

// HeldOutWindows is how many windows of the model's context the tail of
// the calibration data held out from Elsa's training holds (at most a
// tenth of the data).
const HeldOutWindows = 8

// fallback scores Elsa's model (in elsaDir) and the one-shot model it
// started from on the held-out calibration windows and writes the better
// to w: Elsa's unless it lost and Fallback is set. The initial model is
// the --init run's output, or for magnitude the magnitude pruning of the
// checkpoint, written to Work/init here.
func (r *run) fallback(ctx context.Context, elsaDir string, initFrom *stream.Source, stats []admm.TensorStats, w admm.TensorSink, res *Result) ([]admm.TensorStats, error) {
	j := &r.job
	initDir := filepath.Join(j.WorkDir(), "init")
	if initFrom == nil { // magnitude: z₀ = Proj(W₀; |W₀|), as a model
		if err := r.writeOneShot(ctx, initDir, admm.MethodMagnitude, nil); err != nil {
			return nil, err
		}
	}
	h := &HeldOut{Tokens: r.heldOut.Len(), Init: string(j.Elsa.Init), Returned: string(j.Method)}
	var err error
	if h.ElsaPPL, err = evalPPL(ctx, elsaDir, r.heldOut, r.ledger.Limit()-r.ledger.Used()); err != nil {
		return nil, err
	}
	if h.InitPPL, err = evalPPL(ctx, initDir, r.heldOut, r.ledger.Limit()-r.ledger.Used()); err != nil {
		return nil, err
	}
	res.HeldOut = h
	from := elsaDir
	if h.ElsaPPL > h.InitPPL {
		what := "writing Elsa's model as asked (fallback off)"
		if j.Elsa.Fallback {
			h.Returned, from = string(j.Elsa.Init)+" (Elsa's initialisation)", initDir
			what = "writing the initialisation's model instead (--fallback=false keeps Elsa's)"
		}
		r.note("WARNING: Elsa lost to its %s initialisation on %d held-out calibration tokens (perplexity %.4g vs %.4g): %s",
			j.Elsa.Init, h.Tokens, h.ElsaPPL, h.InitPPL, what)
	}
	src, err := stream.OpenWith(from, stream.Options{Ledger: r.ledger})
	if err != nil {
		return nil, err
	}
	defer src.Close()
	// Both models hold the tensors stats lists, in output order: only the
	// zero counts depend on the model written.
	for i := range stats {
		st, err := admm.CopyTensor(src, w, stats[i].Name)
		if err != nil {
			return nil, err
		}
		stats[i].Zeros = st.Zeros
	}
	return stats, nil
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
		inputs, _, err := dataset.CalibWindows(r.trainIDs, r.seqLen, j.NSamples, j.Seed)
		if err != nil {
			return nil, err
		}
		r.note("initial z from %s (%d x %d calibration tokens)", j.Elsa.Init, j.NSamples, r.seqLen)
		if err := r.writeOneShot(ctx, dir, j.Elsa.Init, inputs); err != nil {
			return nil, err
		}
	}
	return stream.OpenWith(dir, stream.Options{Ledger: r.ledger})
}

// writeOneShot writes the one-shot pruning of the checkpoint by method
// (calibrated on inputs) to dir, a folder of Work, under the --init plan.
func (r *run) writeOneShot(ctx context.Context, dir string, method admm.Method, inputs []int) error {
	j := &r.job
	if _, err := shard.RemoveStaleTemps(dir); err != nil {
		return err
	}
	// Magnitude pruning holds a tensor at a time: less than the Elsa plan
	// it runs after, which fits.
	plan := r.initPlan
	if plan == nil {
		plan = r.plan
	}
	hold, err := r.holdPlan(string(method)+" plan (Elsa's initialisation)", plan)
	if err != nil {
		return err
	}
	defer hold.Release()
	w, err := shard.NewWriter(dir, admm.OutputOrder(r.src), shard.WriterOptions{Force: true, FiniteOnly: true})
	if err != nil {
		return err
	}
	opt := admm.OneShotOptions{Method: method, Sparsity: j.Sparsity, Pattern: j.Pattern, MicroBatch: plan.MicroBatch,
		LayerSparsity: r.layerSparsity()}
	if _, err := admm.OneShot(ctx, r.src, inputs, len(inputs)/r.seqLen, r.seqLen, opt, w); err != nil {
		w.Abort()
		return err
	}
	if err := w.CopyFile(filepath.Join(j.Model, shard.ConfigFile)); err != nil {
		return err
	}
	return w.Commit()
}
