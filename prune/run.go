package prune

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/elsa-stream/elsa-stream/internal/kernels"
	"github.com/elsa-stream/elsa-stream/internal/mpi"

	"github.com/elsa-stream/elsa-stream/admm"
	"github.com/elsa-stream/elsa-stream/dataset"
	"github.com/elsa-stream/elsa-stream/internal/budget"
	"github.com/elsa-stream/elsa-stream/internal/fsguard"
	"github.com/elsa-stream/elsa-stream/lowmem"
	"github.com/elsa-stream/elsa-stream/shard"
	"github.com/elsa-stream/elsa-stream/stream"
	"github.com/elsa-stream/elsa-stream/tokenizer"
)

// Interrupted is returned when ctx stopped a run: nothing was written to
// the output; for Elsa the state of step Committed (-1: none) is in Work,
// and the same Job with Elsa.Resume continues from it.
type Interrupted struct {
	Work      string
	Committed int
	Elsa      bool
	Cause     error // ctx's error
}

func (e *Interrupted) Error() string {
	if !e.Elsa {
		return fmt.Sprintf("interrupted (%v): nothing was written", e.Cause)
	}
	if e.Committed < 0 {
		return fmt.Sprintf("interrupted (%v) before the first step was committed", e.Cause)
	}
	return fmt.Sprintf("interrupted (%v): the state of step %d is committed in %s; resuming continues from it", e.Cause, e.Committed, e.Work)
}

func (e *Interrupted) Unwrap() error { return e.Cause }

// run is one Run's state: the job with its defaults resolved and what the
// stages hand each other.
type run struct {
	job    Job
	start  time.Time
	ledger *budget.Ledger
	src    *stream.Source
	tok    tokenizer.Tokenizer
	seqLen int
	// plans: the main job's, and the --init run's (nil without one).
	plan, initPlan *stream.Plan
	calibIDs       *dataset.IDs
	trainIDs       *dataset.IDs // Elsa: calibIDs but the held-out tail
	heldOut        *dataset.IDs // Elsa: the tail its result is checked on
	inputs         []int        // one-shot calibration windows (NSamples × seqLen)
	evalIDs        *dataset.IDs
	targets        map[string]float64 // per pruned tensor (nil: uniform)
	metrics        *os.File
	committed      int // Elsa: the last committed step when the method returned (-1: none)
}

// Run validates job, checks it against the model (context, pattern,
// memory plans, data, allocation) and only then writes: it locks the work
// folder and the output target, prunes, writes the output folder and
// evaluates it. A refused job (ErrInvalid, or a model-dependent check)
// changes no file.
func Run(ctx context.Context, job Job) (Result, error) {
	if err := job.Validate(); err != nil {
		return Result{}, err
	}
	if job.Comm == nil {
		job.Comm = mpi.Single{}
	}
	if n := job.Comm.Size(); n > 1 {
		if !job.Method.IsElsa() {
			return Result{}, fmt.Errorf("%d MPI ranks: only elsa and elsa-l train data parallel; run %s as one process", n, job.Method)
		}
		if rank := job.Comm.Rank(); rank > 0 {
			// Its own state and a scratch output; nothing the user named.
			base := fmt.Sprintf("%s.rank-%d", job.WorkDir(), rank)
			job.Work, job.Out, job.Pack, job.Force, job.Eval = filepath.Join(base, "work"), filepath.Join(base, "out"), "", true, Data{}
		}
	}
	r := &run{job: job, start: time.Now(), committed: -1}
	if r.job.Name == "" {
		r.job.Name = filepath.Base(filepath.Clean(job.Model))
	}
	if r.job.MemBudget == 0 {
		r.job.MemBudget = budget.Default()
	}
	r.ledger = budget.New(r.job.MemBudget)
	var err error
	if r.src, err = stream.OpenWith(job.Model, stream.Options{NoMmap: job.NoMmap, Ledger: r.ledger}); err != nil {
		return Result{}, err
	}
	defer r.src.Close()
	defer func() { // mapped token files
		for _, ids := range []*dataset.IDs{r.calibIDs, r.evalIDs} {
			if ids != nil {
				ids.Close()
			}
		}
	}()
	if err := r.prepare(ctx); err != nil {
		return Result{}, err
	}
	return r.execute(ctx)
}

func (r *run) note(format string, args ...any) {
	if r.job.Observer != nil {
		r.job.Observer.Note(fmt.Sprintf(format, args...))
	}
}

func (r *run) progress(label, unit string, done, total int) {
	if r.job.Observer != nil {
		r.job.Observer.Progress(label, unit, done, total)
	}
}

// prepare resolves the defaults that depend on the model and checks
// everything that can fail before a file is written.
func (r *run) prepare(ctx context.Context) error {
	j, c := &r.job, r.src.Cfg
	switch {
	case j.SeqLen > 0:
		r.seqLen = j.SeqLen
	case j.Method.IsElsa():
		r.seqLen = admm.DefaultSeqLen(c.MaxPositions)
	default:
		r.seqLen = min(c.MaxPositions, 2048)
	}
	if err := c.CheckSeqLen(r.seqLen); err != nil {
		return invalidf("seqlen: %v", err)
	}
	if err := j.Pattern.Fits(c); err != nil {
		return invalidf("%v", err)
	}
	if j.Method.IsElsa() {
		if j.Elsa.Batch == 0 {
			j.Elsa.Batch = admm.DefaultBatch(c.MaxPositions, r.seqLen)
		}
		if j.Elsa.LR == 0 {
			j.Elsa.LR = admm.DefaultLR(r.src.Model.TotalParams(), j.Pattern.Sparsity(j.Sparsity))
		}
		if j.Elsa.LambdaFinal == 0 {
			j.Elsa.LambdaFinal = j.Elsa.Lambda
		}
		if j.Elsa.State.Master == nil {
			j.Elsa.State = lowmem.FP32State
			if j.Method == admm.MethodElsaL {
				j.Elsa.State = lowmem.ElsaLState
			}
		}
	}
	// The data first: its token ids are held for the whole run, so the
	// plans get what the budget has left.
	if err := r.readData(); err != nil {
		return err
	}
	if err := r.makePlans(); err != nil {
		return err
	}
	return r.resolveAllocation(ctx)
}

// makePlans plans the job, and a --init run as the one-shot job it is:
// both must fit before anything starts.
func (r *run) makePlans() error {
	j, c := &r.job, r.src.Cfg
	r.initPlan = nil
	avail := r.ledger.Limit() - r.ledger.Used()
	in := stream.PlanInput{Cfg: c, WeightBytes: stream.WeightBytes(r.src.Model.Config), Batch: j.NSamples, SeqLen: r.seqLen,
		Budget: avail, Job: stream.Prune, GFLOPS: 1, Hessians: j.Method == admm.MethodSparseGPT}
	if j.Method.IsElsa() {
		in.Job, in.Batch, in.Hessians = stream.Elsa, j.Elsa.Batch, false
		if j.Method == admm.MethodElsaL {
			in.Job = stream.ElsaL
		}
		in.State = admm.StateCost(j.Elsa.State)
		in.FrozenHead = !j.Elsa.TrainDense
		in.Compute = j.Compute
	}
	var err error
	if r.plan, err = stream.MakePlan(in); err != nil {
		return err
	}
	if j.MicroBatch > 0 {
		// A micro-batch the user sets is what the sweep holds: it must fit.
		in.Batch = j.MicroBatch
		if p, err := stream.MakePlan(in); err != nil || p.MicroBatch != j.MicroBatch || p.Units != r.plan.Units {
			return invalidf("micro-batch %d does not fit the budget of %s: the largest that fits is %d", j.MicroBatch, budget.Format(avail), r.plan.MicroBatch)
		}
	}
	if r.heldOut != nil {
		// Scoring Elsa's result on the held-out windows evaluates at the
		// model's context; a budget that cannot leaves it unchecked (the
		// split stays: the result must not depend on the budget).
		if _, _, err := stream.EvalBudget(c, in.WeightBytes, c.MaxPositions, avail); err != nil {
			r.note("Elsa's result will not be checked against its initialisation: %v", err)
			r.heldOut = nil
		}
	}
	if j.Method.IsElsa() && j.Elsa.Init != admm.MethodMagnitude {
		init := stream.PlanInput{Cfg: c, WeightBytes: in.WeightBytes, Batch: j.NSamples, SeqLen: r.seqLen, Budget: avail,
			Job: stream.Prune, GFLOPS: 1, Hessians: j.Elsa.Init == admm.MethodSparseGPT}
		if r.initPlan, err = stream.MakePlan(init); err != nil {
			return fmt.Errorf("the %s run for Elsa's initial z: %w", j.Elsa.Init, err)
		}
	}
	return nil
}

func (r *run) microBatch() int {
	if r.job.MicroBatch > 0 {
		return r.job.MicroBatch
	}
	return r.plan.MicroBatch
}

// readData loads and checks the calibration and evaluation streams.
func (r *run) readData() error {
	j := &r.job
	if j.Method.NeedsCalibration() || j.Allocation.Kind == OWL {
		ids, err := r.tokens(j.Calib)
		if err != nil {
			return err
		}
		if r.inputs, _, err = dataset.CalibWindows(ids, r.seqLen, j.NSamples, j.Seed); err != nil {
			return fmt.Errorf("%s: %w", j.Calib, err)
		}
		r.calibIDs = ids
		r.trainIDs = ids
		if j.Method.IsElsa() {
			// The tail Elsa never trains on: windows of the model's context
			// that score its result and its one-shot start.
			n, ctx := ids.Len(), r.src.Cfg.MaxPositions
			if h := min(n/10, HeldOutWindows*ctx+1); h >= 2 && n-h > r.seqLen {
				r.trainIDs, r.heldOut = ids.Sub(0, n-h), ids.Sub(n-h, n)
			} else {
				r.note("%s: %d calibration tokens are too few to hold some out: Elsa's result is not checked against its initialisation", j.Calib, n)
			}
		}
	}
	if j.Eval.IsSet() {
		var err error
		if r.evalIDs, err = r.tokens(j.Eval); err != nil {
			return err
		}
	}
	return nil
}

// tokens reads d into a token stream checked against the vocabulary.
func (r *run) tokens(d Data) (*dataset.IDs, error) {
	if d.Format != dataset.Tokens && r.tok == nil {
		var err error
		if r.tok, err = tokenizer.Load(r.job.Model, r.src.Cfg.Vocab, func(s string) { r.note("%s", s) }); err != nil {
			return nil, err
		}
	}
	opt := dataset.Options{Format: d.Format, TokenBytes: d.TokenBytes, Vocab: r.src.Cfg.Vocab}
	if d.Path == "" {
		return dataset.Parse(d.String(), d.Bytes, r.tok, opt)
	}
	// Held for the whole run: the stream stays until the job ends.
	if _, err := dataset.Reserve(r.ledger, d.Path, d.Format); err != nil {
		return nil, err
	}
	return dataset.Load(d.Path, r.tok, opt)
}

// resolveAllocation sets the sparsity of every pruned tensor (OWL's layer
// sparsities, or a file's lines) and checks each: 0 <= s < 1.
func (r *run) resolveAllocation(ctx context.Context) error {
	j := &r.job
	var layer func(tensor string) float64
	switch j.Allocation.Kind {
	case Uniform:
		return nil
	case OWL:
		per, err := admm.OWL(ctx, r.src, r.inputs, j.NSamples, r.seqLen, j.Sparsity, j.Allocation.OWLM, j.Allocation.OWLLambda, r.microBatch())
		if err != nil {
			return err
		}
		for l, s := range per {
			if !(s >= 0 && s < 1) {
				return invalidf("OWL (M %g, λ %g) gives layer %d sparsity %.4f, outside [0, 1): use a smaller λ", j.Allocation.OWLM, j.Allocation.OWLLambda, l, s)
			}
		}
		layer = func(tensor string) float64 { return per[stream.TensorLayer(tensor)] }
	case FromFile:
		b, err := fsguard.ReadFile(j.Allocation.File)
		if err != nil {
			return err
		}
		if layer, err = admm.ParseAllocation(string(b), j.Sparsity); err != nil {
			return fmt.Errorf("%s: %w", j.Allocation.File, err)
		}
	}
	r.targets = map[string]float64{}
	for _, name := range r.src.PrunedTensors() {
		s := layer(name)
		if !(s >= 0 && s < 1) {
			return invalidf("allocation %s gives %s sparsity %g, outside [0, 1)", j.Allocation, name, s)
		}
		r.targets[name] = s
	}
	return nil
}

// layerSparsity is the resolved allocation as admm takes it (nil: uniform).
func (r *run) layerSparsity() func(string) float64 {
	if r.targets == nil {
		return nil
	}
	return func(tensor string) float64 { return r.targets[tensor] }
}

// execute does the writing part: locks, metrics, the method, the output
// and its evaluation.
func (r *run) execute(ctx context.Context) (Result, error) {
	j := &r.job
	work := j.WorkDir()
	if err := os.MkdirAll(work, 0o755); err != nil {
		return Result{}, err
	}
	locks, err := r.lock()
	if err != nil {
		return Result{}, err
	}
	defer locks.release()
	flags := os.O_CREATE | os.O_WRONLY | os.O_TRUNC
	if j.Elsa.Resume {
		flags = os.O_CREATE | os.O_WRONLY | os.O_APPEND
	}
	if r.metrics, err = os.OpenFile(filepath.Join(work, "metrics.jsonl"), flags, 0o644); err != nil {
		return Result{}, err
	}
	defer r.metrics.Close()

	res := Result{Out: j.Out, Work: work, Settings: r.settings(), Budget: r.ledger.Limit(), ResumedAfter: -1}
	md, err := json.Marshal(res.Settings)
	if err != nil {
		return Result{}, err
	}
	w, err := shard.NewWriter(j.Out, admm.OutputOrder(r.src), shard.WriterOptions{MaxShardSize: j.MaxShardSize, Force: j.Force,
		FiniteOnly: true, Metadata: map[string]string{"elsa_stream": string(md)}})
	if err != nil {
		return Result{}, err
	}
	if j.Method.IsElsa() {
		res.Tensors, err = r.elsa(ctx, w, &res)
	} else {
		res.Tensors, err = r.oneShot(ctx, w)
	}
	if err != nil {
		w.Abort()
		if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			return Result{}, &Interrupted{Work: work, Committed: r.committed, Elsa: j.Method.IsElsa(), Cause: ctx.Err()}
		}
		return Result{}, err
	}
	res.count()
	sidecar, err := res.sparsityJSON()
	if err != nil {
		return Result{}, err
	}
	if err := w.AddFile("sparsity.json", sidecar); err != nil {
		return Result{}, err
	}
	for _, name := range shard.SideFiles {
		p := filepath.Join(j.Model, name)
		if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err := w.CopyFile(p); err != nil {
			return Result{}, err
		}
	}
	if err := w.Commit(); err != nil {
		return Result{}, err
	}
	if j.Pack != "" {
		mf, err := shard.Pack(j.Out, j.Pack, shard.PackOptions{MaxShardSize: j.MaxShardSize, Force: j.Force})
		if err != nil {
			return Result{}, fmt.Errorf("pack the output: %w (the Hugging Face folder %s is complete)", err, j.Out)
		}
		res.Packed = &Packed{Dir: j.Pack, DenseBytes: mf.DenseBytes, PackedBytes: mf.PackedBytes, Ratio: float64(mf.DenseBytes) / float64(max(1, mf.PackedBytes))}
	}
	res.Seconds = time.Since(r.start).Seconds()
	if r.evalIDs != nil {
		res.EvalData = j.Eval.String()
		for _, m := range []struct {
			dir string
			ppl *float64
		}{{j.Model, &res.DensePPL}, {j.Out, &res.PrunedPPL}} {
			if *m.ppl, err = evalPPL(ctx, m.dir, r.evalIDs, r.ledger.Limit()-r.ledger.Used()); err != nil {
				return Result{}, err
			}
		}
	}
	res.PeakRSS = budget.PeakRSS()
	res.Ranks = j.Comm.Size()
	if st := j.Comm.Stats(); res.Ranks > 1 {
		res.AllReduce = &AllReduce{Seconds: st.Seconds, Bytes: st.Bytes}
	}
	return res, nil
}

// holdPlan reserves what plan p holds for a phase and sets the runtime's
// memory limit for it.
func (r *run) holdPlan(name string, p *stream.Plan) (*budget.Reservation, error) {
	r.ledger.LimitRuntime(p.Mapped())
	return r.ledger.Reserve(name, p.Held())
}

func (r *run) oneShot(ctx context.Context, w admm.TensorSink) ([]admm.TensorStats, error) {
	j := &r.job
	hold, err := r.holdPlan(string(r.plan.Job)+" plan", r.plan)
	if err != nil {
		return nil, err
	}
	defer hold.Release()
	layers := r.src.Cfg.Layers
	r.progress("pruning", "layers", 0, layers)
	enc := json.NewEncoder(r.metrics)
	opt := admm.OneShotOptions{Method: j.Method, Sparsity: j.Sparsity, Pattern: j.Pattern, MicroBatch: r.microBatch(),
		LayerSparsity: r.layerSparsity(), Log: r.note,
		Progress: func(l int) {
			r.progress("pruning", "layers", l+1, layers)
			enc.Encode(map[string]any{"layer": l, "seconds": time.Since(r.start).Seconds(), "ledger_peak": r.ledger.Peak()})
		}}
	return admm.OneShot(ctx, r.src, r.inputs, j.NSamples, r.seqLen, opt, w)
}

// evalPPL is the perplexity of the model in dir on the token stream ids,
// in windows of its context.
func evalPPL(ctx context.Context, dir string, ids *dataset.IDs, limit int64) (float64, error) {
	src, err := stream.OpenWith(dir, stream.Options{Ledger: budget.New(limit)})
	if err != nil {
		return 0, err
	}
	defer src.Close()
	res, err := src.Sweeper().EvaluateWithin(ctx, ids, dataset.EvalWindows(ids, src.Cfg.MaxPositions), src.Cfg.MaxPositions, kernels.ComputeFP32)
	if err != nil {
		return 0, err
	}
	return res.PPL(), nil
}

// sameData reports whether two paths are the same file or hold the same
// bytes (standard input is never read for the comparison).
func sameData(a, b string) bool {
	if fsguard.IsStdin(a) || fsguard.IsStdin(b) {
		return false
	}
	ia, ea := os.Stat(a)
	ib, eb := os.Stat(b)
	if ea == nil && eb == nil && os.SameFile(ia, ib) {
		return true
	}
	fa, ea := fsguard.OpenRegular(a)
	fb, eb := fsguard.OpenRegular(b)
	if ea != nil || eb != nil {
		if fa != nil {
			fa.Close()
		}
		if fb != nil {
			fb.Close()
		}
		return false
	}
	defer fa.Close()
	defer fb.Close()
	sa, _ := fa.Stat()
	sb, _ := fb.Stat()
	if sa.Size() != sb.Size() {
		return false
	}
	ba, _ := io.ReadAll(fa)
	bb, _ := io.ReadAll(fb)
	return string(ba) == string(bb)
}
