package admm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"time"

	"github.com/elsa-stream/elsa-stream/dataset"
	"github.com/elsa-stream/elsa-stream/internal/kernels"
	"github.com/elsa-stream/elsa-stream/lowmem"
	"github.com/elsa-stream/elsa-stream/shard"

	"github.com/elsa-stream/elsa-stream/model"
	"github.com/elsa-stream/elsa-stream/stream"
)

// ElsaOptions are Elsa's knobs (docs/design.md, Elsa; defaults in DefaultElsa).
type ElsaOptions struct {
	Steps, Batch, SeqLen int
	LR                   float64
	Lambda, LambdaFinal  float64
	// Schedule moves λ from Lambda to LambdaFinal.
	Schedule Schedule
	Interval int
	Clip     float64
	// Projection scores entries by |v| (ProjectMagnitude) or m2·v² with m2
	// Adam's second moment (ProjectObjective, the paper's recommended mode).
	Projection Projection
	Sparsity   float64
	Pattern    Pattern
	// LayerSparsity overrides Sparsity per tensor (OWL, allocation file).
	LayerSparsity func(tensor string) float64
	// TrainDense trains embeddings, norms and lm_head with the same Adam
	// (no penalty).
	TrainDense bool
	Seed       uint64
	// Adam is the optimizer's configuration (zero: ReferenceAdam).
	Adam Adam
	// Step is called after every step with its metrics.
	Step func(StepMetrics)
	// State holds every trainable tensor's optimizer state, committed
	// after every step. Codecs encode it (zero value: lowmem.FP32State,
	// Elsa; lowmem.ElsaLState is Elsa-L); the run always continues from
	// exactly what is stored.
	State  *lowmem.Store
	Codecs lowmem.StateCodecs
	// Resident keeps the decoded state and gradients in RAM as well (for
	// models whose 24 B/param fit): the store is then only written.
	Resident bool
	// Grads holds the spilled gradients between a backward sweep and the
	// next forward sweep (streamed runs).
	Grads *lowmem.Spill
	// InitFrom, when set, is a one-shot baseline's output: z starts from
	// its tensors (--init wanda|sparsegpt) instead of the magnitude
	// projection of W0.
	InitFrom *stream.Source
	// The sweep's layout (stream.SweepOptions).
	Granularity model.Half
	MicroBatch  int
	SpillDir    string
	// Resume continues from State's last committed step; the result is
	// bit-identical to an uninterrupted run with the same options.
	Resume bool

	stopAfter int // tests: return after committing this step (0: run all)
	// KeepActivations: the backward sweep reuses the forward's activations
	// instead of recomputing them (stream.SweepOptions).
	KeepActivations bool
	// Parallel, with more than one process, trains data parallel: every
	// process draws the same batches, computes its share of each step's
	// windows and gets the step's summed gradient (stream.SweepOptions.
	// Parallel), then applies the same update to its own copy of the
	// state, so all of them hold the same model.
	Parallel stream.Reducer
	// Compute is the precision of the sweeps' GEMMs (kernels.ComputeBF16:
	// bf16 operands, float32 accumulation); the update is float32 always.
	Compute kernels.Compute

	onBatch func(starts []int) // tests: the windows each step draws (their first tokens)
}

// DefaultElsa returns the defaults for small models at 90%, the best
// perplexity for the compute found on stories260K (README, "Choosing
// Elsa's defaults"); Batch, SeqLen and LR are resolved per model and
// target by prune (DefaultBatch, DefaultSeqLen, DefaultLR), which gives 4
// windows of the context where this says 16 × 128. A dual update every 16
// steps beat or tied every 32 in each cell measured with 3 seeds on both
// shipped models (−4% at 90% on stories260K), and 64 lost in each.
func DefaultElsa() ElsaOptions {
	return ElsaOptions{Steps: 560, Batch: 16, SeqLen: 128, LR: DefaultLR(0, 0.9), Lambda: 0.01, LambdaFinal: 0.01,
		Schedule: Constant, Interval: 16, Clip: 1, Projection: ProjectObjective, Sparsity: 0.9, TrainDense: true}
}

// DefaultSeqLen is the training window for a model with the given context:
// the context, at most 2048 (the reference's windows). Windows shorter
// than the evaluation context train a model that fails at its end: on
// stories260K (context 512), 560 steps, 3 seeds, the same tokens per step,
// 4 x 512 gave a median 10.70 [10.21-11.04] at 80% and 14.05
// [13.60-14.28] at 90%, 16 x 128 12.25 [12.11-13.08] and 14.40
// [13.46-17.27] (README, "Choosing Elsa's defaults"), for 1.6x the time.
func DefaultSeqLen(context int) int {
	return max(1, min(context, 2048))
}

// DefaultBatch is the windows per step for a model with the given context
// and training window: four contexts of tokens, at most the reference's
// 8 x 2048 = 16384 (stories260K: 4 x 512; LLaMA-2: 8 x 2048).
func DefaultBatch(context, window int) int {
	return max(1, min(4*context, 16384)/window)
}

// DefaultLR is Adam's learning rate for a model of n parameters pruned to
// the given sparsity: the size rule times the sparsity rule.
//
// Size (the rate from 70% sparsity up): 5e-3 up to 10M parameters, the
// reference's 2e-4 from 1B parameters (its LLaMA-2-7B setting), log-linear
// in between; only the two ends are measured.
//
// Sparsity: 0.6x at 50% and below, 1x from 70%, log-linear in between. A
// step that is too long damages a model that has little to recover, one
// too short leaves the weights short of where a high target needs them.
// Medians of 3 seeds on the first 100 validation stories (README,
// "Choosing Elsa's defaults"), lr 1e-3 / 3e-3 / 5e-3 / 1e-2:
//
//	stories260K 50%: 6.23 / 4.99 /   —  / 6.97
//	            70%:   —  / 7.74 / 7.60 / 9.32
//	            80%:   —  / 11.12 / 9.70 / 10.70
//	            90%:   —  /   —  / 13.58 / 14.05
//	charllama   50%:   —  / 3.12 /   —  / 3.37 (SparseGPT 3.14)
//	            90%:   —  /   —  / 4.34 / 7.37 (SparseGPT 18.16)
func DefaultLR(n int64, sparsity float64) float64 {
	return sizeLR(n) * sparsityLR(sparsity)
}

func sizeLR(n int64) float64 {
	const small, large = 1e7, 1e9
	switch {
	case n <= small:
		return 5e-3
	case n >= large:
		return 2e-4
	}
	return logLerp(5e-3, 2e-4, math.Log(float64(n)/small)/math.Log(large/small))
}

func sparsityLR(s float64) float64 {
	const low, high = 0.5, 0.7
	if s >= high { // exactly 1 at 70% (s-low rounds below high-low)
		return 1
	}
	return logLerp(0.6, 1, (s-low)/(high-low))
}

// logLerp is a^(1−f)·b^f, exactly a at f ≤ 0 and b at f ≥ 1.
func logLerp(a, b, f float64) float64 {
	switch {
	case f <= 0:
		return a
	case f >= 1:
		return b
	}
	return math.Exp(math.Log(a) + f*(math.Log(b)-math.Log(a)))
}

// StepMetrics is one line of the run's metrics.
type StepMetrics struct {
	Step      int     `json:"step"`
	Loss      float64 `json:"loss"`
	GradNorm  float64 `json:"grad_norm"`
	Primal    float64 `json:"primal_residual"` // ‖W − z‖ / ‖W‖
	Dual      float64 `json:"dual_residual"`   // λ·‖z − z_prev‖ / ‖W‖ at dual updates
	Lambda    float64 `json:"lambda"`
	LR        float64 `json:"lr"`
	TokensSec float64 `json:"tokens_per_second"`
	// IOWait is how long the step's compute waited for a unit's weights
	// (state read, update, state written, in the prefetch goroutine);
	// StateIO the seconds spent reading and writing state and gradient
	// files during the step's sweep (overlapped with compute or not).
	IOWait  float64 `json:"io_wait_seconds"`
	StateIO float64 `json:"state_io_seconds"`
	// Error is set on the line of a step that stopped the run (a
	// non-finite loss or gradient norm).
	Error string `json:"error,omitempty"`
}

// MarshalJSON writes non-finite numbers as null: encoding/json refuses NaN
// and ±Inf, and the line of a step that diverged must still be written.
func (m StepMetrics) MarshalJSON() ([]byte, error) {
	type plain StepMetrics
	b, err := json.Marshal(plain(m))
	if err == nil {
		return b, nil
	}
	out := map[string]any{}
	if b, err = json.Marshal(plain(StepMetrics{Step: m.Step, Error: m.Error})); err != nil {
		return nil, err
	}
	json.Unmarshal(b, &out)
	for k, v := range map[string]float64{"loss": m.Loss, "grad_norm": m.GradNorm, "primal_residual": m.Primal,
		"dual_residual": m.Dual, "lambda": m.Lambda, "lr": m.LR, "tokens_per_second": m.TokensSec,
		"io_wait_seconds": m.IOWait, "state_io_seconds": m.StateIO} {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			out[k] = nil
		} else {
			out[k] = v
		}
	}
	return json.Marshal(out)
}

// ErrDiverged is wrapped when training produced a non-finite loss, gradient
// norm or weight: the run stops with the last good step committed and
// writes no model.
var ErrDiverged = errors.New("training diverged")

// tensor is one trainable tensor of a run, or one part of it: a dense
// tensor larger than partElems is updated in parts of at most partElems
// values, so that the optimizer never decodes more than that of it at
// once; the embedding's and lm_head's parts are whole rows, the sweep's
// vocabulary chunks. Pruned tensors are one part (the projection ranks
// the whole tensor).
type tensor struct {
	name       string // the checkpoint tensor
	block      string // the store's name for this part's state
	off, n     int    // the part's values: name's [off, off+n)
	k          int    // position in the run: seeds Elsa-L's stochastic rounding
	pruned     bool
	rows, cols int
	s          float64 // target sparsity
	pat        Pattern
}

// partElems is the most values of a dense tensor updated at once, and
// vocabChunk the lm_head rows the sweep's head works on at once (variables
// for tests).
var (
	partElems  = stream.PartElems
	vocabChunk = stream.DefaultVocabChunk
)

// state is one tensor's decoded optimizer state: master weights W, Adam's
// moments, and for pruned tensors the split z and scaled dual u.
type state = lowmem.TensorState

// trainer runs Elsa's steps over a model that need not fit in RAM.
//
// Every trainable tensor's state is in the store, two blocks per tensor per
// step: "<name>.w" (master weights, which the backward sweep rereads alone)
// and "<name>.opt" (m, v and z/u). With Resident the decoded state also
// stays in RAM and the store is only written (for resume).
//
// The update of step s is applied lazily. Its backward sweep spills every
// tensor's gradient and sums its squares; the global clip scale is known
// only when the sweep ends. The next forward sweep (or the final pass)
// then loads each tensor's state just before the forward needs its
// weights, applies the clipped Adam step with the prox term and, every
// Interval steps, the z/u update, writes the state of step s and hands the
// new W to the forward. Clipping stays exact though no step ever holds
// the whole model, and the forward of step s+1 sees exactly the weights an
// all-resident run would: the result does not depend on Resident, the
// granularity or activation spilling. (The micro-batch does change it in
// the last bits: it sets the order in which a gradient's terms are summed.)
type trainer struct {
	src     *stream.Source
	opt     ElsaOptions
	tensors []*tensor
	byName  map[string][]*tensor // a checkpoint tensor's parts

	headRows int                  // rows of an embedding or lm_head part: the sweep's vocabulary chunk
	ram      map[string]*state    // Resident: every part's decoded state, by block
	grads    map[string][]float32 // Resident: whole gradients kept in RAM
	scratch  state                // the streamed tensor being updated
	gbuf     []float32            // its spilled gradient
	vbuf     []float32            // v = W + u of a dual update
	score    []float32            // projection scores
	outBuf   []float32            // a pruned tensor being projected for the output
	obytes   []byte               // a part being written, in the checkpoint's dtype
	gbytes   []byte               // a gradient being spilled
	gread    []byte               // a spilled gradient read back
	sqnorm   []float64            // per tensor: squared norm of the step's gradient
	// The embedding's gradient is nonzero only on the rows of the step's
	// input tokens: ids (ascending, the sweep's), and for the pending
	// update gradIDs and their rows embGrad, complete (with tied
	// embeddings, lm_head's share included; lmRows keeps that share of
	// those rows until the embedding's own arrives).
	ids, gradIDs    []int
	embGrad, lmRows []float32

	step    int // the step being run: its weights are the state of step-1
	pending int // the step whose update awaits (-1: none)
	applied int // the step whose update the forward applied, not yet committed (-1: none)
	clip    float32
	lambda  float64 // λ of the pending step's prox term
	met     StepMetrics
	res     residuals
	since   time.Time    // when the pending step started
	next    time.Time    // when the step after it started (zero: not yet)
	ioNanos atomic.Int64 // state and gradient file I/O of the sweep (both goroutines)
}

// timed runs the file operation f and adds its duration to the sweep's I/O
// time.
func (tr *trainer) timed(f func() error) error {
	start := time.Now()
	err := f()
	tr.ioNanos.Add(int64(time.Since(start)))
	return err
}

// residuals accumulate ‖W − z‖², ‖W‖² and ‖z − z_prev‖² over a pass.
type residuals struct{ primal, w, dz float64 }

// Elsa prunes the model of src by surrogate-free ADMM on the
// language-modelling loss over windows drawn from the calibration stream
// ids and writes the pruned checkpoint to out in OutputOrder. Every step
// is a full forward and backward pass; the global gradient norm is clipped
// to Clip, then λ(W − z + u) is added to the pruned weights' gradients;
// Adam (β 0.9, 0.95, ε 1e-8, no weight decay, lr decaying linearly to 0);
// after steps 0, I, 2I, ... v = W + u, z = Proj(v), u = v − z (u first
// rescaled by λ_old/λ_new when λ moves); finally W = Proj(W). The state
// goes through opt.State every step (see trainer).
func Elsa(ctx context.Context, src *stream.Source, ids *dataset.IDs, opt ElsaOptions, out TensorSink) ([]TensorStats, error) {
	if opt.Steps <= 0 || opt.Batch <= 0 || opt.SeqLen <= 0 || opt.Interval <= 0 || opt.LR <= 0 {
		return nil, fmt.Errorf("admm: Elsa needs positive steps, batch, seqlen, interval and lr")
	}
	if opt.State == nil {
		return nil, fmt.Errorf("admm: Elsa needs a state store")
	}
	// A state write may still be running when training stops early.
	defer opt.State.Flush()
	if _, err := ParseSchedule(string(opt.Schedule)); err != nil {
		return nil, fmt.Errorf("admm: %w", err)
	}
	if _, err := ParseProjection(string(opt.Projection)); err != nil {
		return nil, fmt.Errorf("admm: %w", err)
	}
	if err := opt.Pattern.Fits(src.Cfg); err != nil {
		return nil, err
	}
	if opt.Codecs.Master == nil {
		opt.Codecs = lowmem.FP32State
	}
	if !opt.Resident && opt.Grads == nil {
		return nil, fmt.Errorf("admm: streamed Elsa needs a gradient spill folder")
	}
	if ids.Len() <= opt.SeqLen {
		return nil, fmt.Errorf("admm: %d calibration tokens, need more than one window of %d", ids.Len(), opt.SeqLen)
	}
	tr := newTrainer(src, opt)
	r := rand.New(rand.NewPCG(opt.Seed, 0xe15a))
	tr.lambda, tr.pending, tr.applied, tr.step = opt.Lambda, -1, -1, 0
	if last := opt.State.LastStep(); last >= 0 {
		if !opt.Resume {
			return nil, fmt.Errorf("admm: the state store already holds steps up to %d: resume it, or start over with an empty work dir", last)
		}
		// Replay what the finished steps consumed: the batch draws and the
		// λ schedule up to the last dual update.
		for s := 0; s <= last; s++ {
			drawBatch(r, ids, opt.Batch, opt.SeqLen)
			if s%opt.Interval == 0 {
				tr.lambda = scheduleLambda(opt, s)
			}
		}
		tr.step = last + 1
	}
	sw := src.Sweeper()
	// The sweep's vocabulary chunks are whole parts of the head.
	vc := max(1, vocabChunk(src.Cfg)/tr.headRows) * tr.headRows
	sweep := stream.SweepOptions{Weights: tr, MicroBatch: opt.MicroBatch, SpillDir: opt.SpillDir, Granularity: opt.Granularity, VocabChunk: vc, Parallel: opt.Parallel,
		KeepActivations: opt.KeepActivations, Compute: opt.Compute}
	for ; tr.step < opt.Steps; tr.step++ {
		start := time.Now()
		tr.next = start
		inputs, targets, starts := drawBatch(r, ids, opt.Batch, opt.SeqLen)
		if opt.onBatch != nil {
			opt.onBatch(starts)
		}
		sw.IOWait = 0
		tr.ioNanos.Store(0)
		clear(tr.sqnorm)
		if err := ctx.Err(); err != nil { // a safe point: the last step is committed
			return nil, err
		}
		res, err := sw.GradientSweep(ctx, inputs, targets, opt.Batch, opt.SeqLen, sweep, gradSink{tr})
		if err != nil {
			return nil, err
		}
		if tr.pending >= 0 {
			return nil, fmt.Errorf("admm: step %d's update was not applied by the forward sweep", tr.pending)
		}
		// The update applied by this forward is committed only once the
		// loss it leads to is known to be finite: a diverged update is
		// never the state a resume starts from.
		loss := res.SumNLL / float64(res.Tokens)
		if !finite(loss) {
			return nil, tr.diverged(StepMetrics{Step: tr.step, Loss: loss, GradNorm: math.NaN()}, "the loss is %v", loss)
		}
		if tr.applied >= 0 {
			if err := tr.commit(); err != nil {
				return nil, err
			}
		}
		if opt.stopAfter > 0 && opt.State.LastStep() == opt.stopAfter {
			return nil, nil
		}
		// Global clipping of the loss gradient, before the prox term.
		var sq float64
		for _, x := range tr.sqnorm { // in tensor order: independent of the sweep's
			sq += x
		}
		norm := math.Sqrt(sq)
		if !finite(norm) {
			return nil, tr.diverged(StepMetrics{Step: tr.step, Loss: loss, GradNorm: norm}, "the gradient norm is %v", norm)
		}
		tr.clip = 1
		if opt.Clip > 0 && norm > opt.Clip {
			tr.clip = float32(opt.Clip / norm)
		}
		tr.pending, tr.since, tr.next = tr.step, start, time.Time{}
		tr.met = StepMetrics{Step: tr.step, Loss: loss, GradNorm: norm, IOWait: sw.IOWait.Seconds(),
			StateIO: time.Duration(tr.ioNanos.Swap(0)).Seconds()}
	}
	// The last step's update, then the final hard projection of W itself.
	if tr.pending >= 0 {
		for _, t := range tr.tensors {
			if _, err := tr.update(t); err != nil {
				return nil, err
			}
		}
		tr.applied, tr.pending = tr.pending, -1
		if err := tr.commit(); err != nil {
			return nil, err
		}
	}
	return tr.write(out)
}

func finite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }

// diverged reports step m.Step's non-finite result: its metrics line is
// written (with the error), nothing of the diverged update is committed,
// and the error says which step the store holds and what to change.
func (tr *trainer) diverged(m StepMetrics, format string, args ...any) error {
	what := fmt.Sprintf(format, args...)
	cause := "with the initial weights: the model itself overflows on this data"
	if tr.applied >= 0 {
		cause = fmt.Sprintf("after the update of step %d (learning rate %g: too large?)", tr.applied, tr.opt.LR)
	}
	m.Error = what
	if tr.opt.Step != nil {
		if tr.applied >= 0 { // its loss and gradient were finite; its update is what failed
			prev := tr.met
			prev.Error = fmt.Sprintf("update not committed: step %d diverged", m.Step)
			tr.opt.Step(prev)
		}
		tr.opt.Step(m)
	}
	kept := "no step is committed"
	if last := tr.opt.State.LastStep(); last >= 0 {
		kept = fmt.Sprintf("the state of step %d is committed", last)
	}
	return fmt.Errorf("step %d: %s %s; stopped, %s and no model was written: %w", m.Step, what, cause, kept, ErrDiverged)
}

func newTrainer(src *stream.Source, opt ElsaOptions) *trainer {
	c := src.Cfg
	tr := &trainer{src: src, opt: opt, byName: map[string][]*tensor{}, ram: map[string]*state{}, grads: map[string][]float32{},
		headRows: max(1, min(c.Vocab, partElems/c.Hidden))}
	add := func(name string, n int, pruned bool, shape []int) {
		if pruned {
			t := &tensor{name: name, block: name, k: len(tr.tensors), n: n, pruned: true, rows: shape[0], cols: shape[1], pat: opt.Pattern}
			t.s = opt.Sparsity
			if opt.LayerSparsity != nil {
				t.s = opt.LayerSparsity(name)
			}
			t.s = opt.Pattern.Sparsity(t.s)
			tr.tensors = append(tr.tensors, t)
			tr.byName[name] = []*tensor{t}
			return
		}
		part := partElems
		if name == stream.EmbedTensor || name == stream.LMHeadTensor {
			part = tr.headRows * c.Hidden
		}
		for off := 0; off < n; off += part {
			t := &tensor{name: name, block: name, k: len(tr.tensors), off: off, n: min(part, n-off)}
			if n > part {
				t.block = fmt.Sprintf("%s.part%d", name, off/part)
			}
			tr.tensors = append(tr.tensors, t)
			tr.byName[name] = append(tr.byName[name], t)
		}
	}
	for l := 0; l < c.Layers; l++ {
		for _, bp := range c.BlockParams() {
			if bp.Linear || opt.TrainDense {
				add(stream.LayerTensor(l, bp.Suffix), bp.Numel(), bp.Linear, bp.Shape)
			}
		}
	}
	if opt.TrainDense {
		add(stream.EmbedTensor, c.Vocab*c.Hidden, false, nil)
		add(stream.NormTensor, c.Hidden, false, nil)
		if !c.TiedEmbeddings {
			add(stream.LMHeadTensor, c.Vocab*c.Hidden, false, nil)
		}
	}
	tr.sqnorm = make([]float64, len(tr.tensors))
	return tr
}

// Head implements stream.Weights: it applies the pending update to every
// part of the embedding, the final norm and lm_head (each decoded, updated
// and stored in turn) and hands the sweep the norm and the embedding rows
// of the step's tokens; lm_head is then read back a chunk at a time
// (LMHeadRows). A frozen head comes from the checkpoint.
func (tr *trainer) Head(ids []int, rows, norm []float32) error {
	D := tr.src.Cfg.Hidden
	tr.ids = ids
	if !tr.opt.TrainDense {
		if err := tr.src.ReadRange(stream.NormTensor, 0, norm); err != nil {
			return err
		}
		return tr.src.ReadRows(stream.EmbedTensor, ids, rows)
	}
	for _, name := range []string{stream.EmbedTensor, stream.NormTensor, stream.LMHeadTensor} {
		for _, t := range tr.byName[name] {
			st, err := tr.current(t)
			if err != nil {
				return err
			}
			switch name {
			case stream.NormTensor:
				copy(norm, st.W)
			case stream.EmbedTensor:
				lo := t.off / D
				first, in := rowsIn(ids, lo, lo+t.n/D)
				for i, id := range in {
					copy(rows[(first+i)*D:(first+i+1)*D], st.W[(id-lo)*D:])
				}
			}
		}
	}
	return nil
}

// rowsIn returns the ids (ascending) in rows [lo, hi) and the index of
// the first of them in ids.
func rowsIn(ids []int, lo, hi int) (int, []int) {
	first, _ := slices.BinarySearch(ids, lo)
	end, _ := slices.BinarySearch(ids, hi)
	return first, ids[first:end]
}

// LMHeadRows implements stream.Weights: lm_head rows [lo, hi) (whole
// parts) as of the running step (updated by Head), the master weights
// read back alone.
func (tr *trainer) LMHeadRows(lo, hi int, dst []float32) error {
	name, D := tr.src.LMHeadName(), tr.src.Cfg.Hidden
	parts := tr.byName[name]
	if parts == nil {
		return tr.src.ReadRange(name, lo*D, dst)
	}
	for _, t := range parts[lo/tr.headRows : (hi+tr.headRows-1)/tr.headRows] {
		w := dst[t.off-lo*D : t.off-lo*D+t.n]
		var err error
		switch {
		case tr.opt.Resident:
			copy(w, tr.ram[t.block].W)
		case tr.step == 0: // the initial weights: the checkpoint's
			err = tr.readInitial(tr.src, t, w)
		default:
			err = tr.readState(t, tr.step-1, &state{W: w}, true)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Unit implements stream.Weights: in the forward sweep it applies the
// pending update to u's tensors (committing the step after the last unit);
// in the backward sweep it rereads the weights the forward used.
func (tr *trainer) Unit(u stream.Unit, forward bool, dst *model.Block) error {
	for _, bp := range tr.src.UnitParams(u) {
		name := stream.LayerTensor(u.Layer, bp.Suffix)
		parts := tr.byName[name]
		if parts == nil || (!forward && !tr.opt.Resident && tr.step == 0) {
			// Not trained, or the initial weights: the checkpoint's.
			if err := tr.src.ReadTensor(name, bp.Get(dst)); err != nil {
				return err
			}
			continue
		}
		for _, t := range parts {
			w := (*bp.Get(dst))[t.off : t.off+t.n]
			switch {
			case forward:
				st, err := tr.current(t)
				if err != nil {
					return err
				}
				copy(w, st.W)
			case tr.opt.Resident:
				copy(w, tr.ram[t.block].W)
			default: // the master weights of the step before, alone
				if err := tr.readState(t, tr.step-1, &state{W: w}, true); err != nil {
					return err
				}
			}
		}
	}
	if forward && tr.pending >= 0 && u.Layer == tr.src.Cfg.Layers-1 && u.Half != model.Attention {
		tr.applied, tr.pending = tr.pending, -1 // committed once its loss is known (Elsa)
	}
	return nil
}

// current returns t's state for the running step: the pending update
// applied, or the state the step starts from.
func (tr *trainer) current(t *tensor) (*state, error) {
	if tr.pending >= 0 {
		return tr.update(t)
	}
	return tr.load(t, tr.step-1)
}

// load returns t's state as of step (-1: the initial state). A Resident
// run decodes each tensor once and then keeps it current in RAM.
func (tr *trainer) load(t *tensor, step int) (*state, error) {
	if st := tr.ram[t.block]; tr.opt.Resident && st != nil {
		return st, nil
	}
	st := tr.buffers(t)
	if step >= 0 {
		return st, tr.readState(t, step, st, false)
	}
	// Initial state: W0 from the checkpoint, zero moments, z from the
	// initial mask (magnitude of W0, or a one-shot baseline's output),
	// u = 0.
	if err := tr.readInitial(tr.src, t, st.W); err != nil {
		return nil, err
	}
	clear(st.M)
	clear(st.V)
	if t.pruned {
		clear(st.U)
		if tr.opt.InitFrom != nil {
			if err := tr.readInitial(tr.opt.InitFrom, t, st.Z); err != nil {
				return nil, fmt.Errorf("initial z: %w", err)
			}
		} else {
			copy(st.Z, st.W)
		}
		tr.score = absScore(tr.score, st.Z)
		project(st.Z, tr.score, t)
	}
	return st, nil
}

// update applies the pending step's update to t and stores the result.
func (tr *trainer) update(t *tensor) (*state, error) {
	s, opt := tr.pending, tr.opt
	st, err := tr.load(t, s-1)
	if err != nil {
		return nil, err
	}
	g, err := tr.grad(t)
	if err != nil {
		return nil, err
	}
	stepArithmetic(g, tr.clip, st, float32(tr.lambda), t.pruned, opt.Adam.orReference(), LinearDecay(opt.LR, s, opt.Steps), s)
	if t.pruned && s%opt.Interval == 0 {
		if nl := scheduleLambda(opt, s); nl != tr.lambda {
			scale := float32(tr.lambda / nl)
			for i := range st.U {
				st.U[i] *= scale
			}
		}
		tr.res.dz += tr.dualUpdate(t, st)
	}
	if t.pruned {
		for i, w := range st.W {
			e := float64(w - st.Z[i])
			tr.res.primal += e * e
			tr.res.w += float64(w) * float64(w)
		}
	}
	if i := nonFinite(st.W); i >= 0 {
		return nil, fmt.Errorf("step %d: the update made %s[%d] %v (learning rate %g: too large?); stopped before saving it, no model was written: %w",
			s, t.name, t.off+i, st.W[i], opt.LR, ErrDiverged)
	}
	return st, tr.save(t, st, s)
}

// nonFinite is the index of the first NaN or ±Inf in x, or -1.
func nonFinite(x []float32) int {
	for i, v := range x {
		if v-v != 0 { // NaN - NaN and Inf - Inf are NaN; finite v - v is 0
			return i
		}
	}
	return -1
}

// commit records the applied step as complete and reports its metrics.
func (tr *trainer) commit() error {
	s, opt := tr.applied, tr.opt
	if err := tr.opt.State.Commit(s); err != nil {
		return err
	}
	m := tr.met
	m.Lambda, m.LR = tr.lambda, LinearDecay(opt.LR, s, opt.Steps)
	if s%opt.Interval == 0 {
		nl := scheduleLambda(opt, s)
		m.Dual = nl * math.Sqrt(tr.res.dz) / math.Sqrt(max(tr.res.w, 1e-30))
		tr.lambda = nl
	}
	m.Primal = math.Sqrt(tr.res.primal) / math.Sqrt(max(tr.res.w, 1e-30))
	// The step's period: from its start to the next step's (or to now, at
	// the final pass).
	end := tr.next
	if end.IsZero() {
		end = time.Now()
	}
	m.TokensSec = float64(opt.Batch*opt.SeqLen) / end.Sub(tr.since).Seconds()
	tr.applied, tr.res = -1, residuals{}
	if opt.Step != nil {
		opt.Step(m)
	}
	return nil
}

// dualUpdate does v = W + u, z = Proj(v), u = v − z for t and returns
// ‖z − z_prev‖².
func (tr *trainer) dualUpdate(t *tensor, st *state) float64 {
	tr.vbuf = resize(tr.vbuf, t.n)
	v := tr.vbuf
	for i := range v {
		v[i] = st.W[i] + st.U[i]
	}
	tr.setScore(v, st.V)
	var dz float64
	// z_new = v on the kept support: project a copy of v into u's buffer,
	// then swap roles.
	copy(st.U, v)
	project(st.U, tr.score, t)
	for i := range v {
		d := float64(st.U[i] - st.Z[i])
		dz += d * d
		st.Z[i] = st.U[i]
		st.U[i] = v[i] - st.Z[i]
	}
	return dz
}

// buffers returns where t's decoded state is loaded: its RAM copy
// (Resident) or the scratch state.
func (tr *trainer) buffers(t *tensor) *state {
	st := &tr.scratch
	if tr.opt.Resident {
		if st = tr.ram[t.block]; st == nil {
			st = &state{}
			tr.ram[t.block] = st
		}
	}
	st.W, st.M, st.V = resize(st.W, t.n), resize(st.M, t.n), resize(st.V, t.n)
	if t.pruned {
		st.Z, st.U = resize(st.Z, t.n), resize(st.U, t.n)
	}
	return st
}

// readInitial reads t's values from a checkpoint into dst.
func (tr *trainer) readInitial(src *stream.Source, t *tensor, dst []float32) error {
	if len(tr.byName[t.name]) == 1 {
		return src.ReadTensor(t.name, &dst)
	}
	return src.ReadRange(t.name, t.off, dst)
}

func resize(b []float32, n int) []float32 {
	if cap(b) < n {
		return make([]float32, n)
	}
	return b[:n]
}

// masterCodec is the codec of the master weights written at step s; a
// stochastic-rounding codec is seeded by the run's seed, step and tensor,
// so a resumed run rounds exactly as the uninterrupted one.
func (tr *trainer) masterCodec(t *tensor, s int) lowmem.Codec {
	if b, ok := tr.opt.Codecs.Master.(lowmem.BF16); ok && b.Stochastic {
		b.Seed = tr.opt.Seed ^ uint64(s)<<20 ^ uint64(t.k)
		return b
	}
	return tr.opt.Codecs.Master
}

// save rounds t's state through its codecs (the run continues from exactly
// what is stored) and writes it as step s.
func (tr *trainer) save(t *tensor, st *state, s int) error {
	return tr.timed(func() error {
		err := tr.opt.State.WriteTensorState(s, t.block, tr.opt.Codecs, tr.masterCodec(t, s), st, t.pruned)
		if err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		return nil
	})
}

// readState decodes t's state of step s into st: the master weights, and
// unless weightsOnly the moments and z/u.
func (tr *trainer) readState(t *tensor, s int, st *state, weightsOnly bool) error {
	return tr.timed(func() error {
		if err := tr.opt.State.ReadTensorState(s, t.block, tr.opt.Codecs, st, t.pruned, weightsOnly); err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		return nil
	})
}

// gradSink receives the backward sweep's gradients (stream.GradConsumer).
type gradSink struct{ *trainer }

func (gs gradSink) Block(u stream.Unit, w, g *model.Block) error {
	for _, bp := range gs.src.UnitParams(u) {
		if err := gs.keepGrad(stream.LayerTensor(u.Layer, bp.Suffix), *bp.Get(g), 0); err != nil {
			return err
		}
	}
	return nil
}

// LMHead keeps lm_head's gradient rows [lo, hi), one part; with tied
// embeddings the rows of the step's tokens are also kept aside, to be
// summed with the embedding's own.
func (gs gradSink) LMHead(lo, hi int, g []float32) error {
	name := gs.src.LMHeadName()
	if gs.src.Cfg.TiedEmbeddings && gs.byName[name] != nil {
		D := gs.src.Cfg.Hidden
		gs.lmRows = resize(gs.lmRows, len(gs.ids)*D)
		first, in := rowsIn(gs.ids, lo, hi)
		for i, id := range in {
			copy(gs.lmRows[(first+i)*D:(first+i+1)*D], g[(id-lo)*D:])
		}
	}
	return gs.keepGrad(name, g, lo*gs.src.Cfg.Hidden)
}

// Head keeps the final norm's gradient and the embedding's rows: the
// embedding's gradient is zero elsewhere (tied: lm_head's there), so its
// squared norm per part is lm_head's plus, on the step's rows r,
// ‖a_r + b_r‖² − ‖a_r‖² (a lm_head's, b the embedding's share).
func (gs gradSink) Head(norm []float32, ids []int, rows []float32) error {
	if err := gs.keepGrad(stream.NormTensor, norm, 0); err != nil {
		return err
	}
	parts := gs.byName[stream.EmbedTensor]
	if parts == nil {
		return nil
	}
	D, tied := gs.src.Cfg.Hidden, gs.src.Cfg.TiedEmbeddings
	gs.gradIDs = append(gs.gradIDs[:0], ids...)
	gs.embGrad = append(gs.embGrad[:0], rows...)
	for i, id := range ids {
		t := parts[id/gs.headRows]
		b := gs.embGrad[i*D : (i+1)*D]
		if tied {
			a := gs.lmRows[i*D : (i+1)*D]
			gs.sqnorm[t.k] -= sumSquares(a)
			for j := range b {
				b[j] += a[j]
			}
		}
		gs.sqnorm[t.k] += sumSquares(b)
	}
	return nil
}

func sumSquares(x []float32) float64 {
	var sq float64
	for _, v := range x {
		sq += float64(v) * float64(v)
	}
	return sq
}

// keepGrad records the squared norm of each part of tensor name's
// gradient g, whose first value is the tensor's off-th, and keeps g,
// through the gradient codec, until the next forward sweep applies it: in
// RAM (Resident) or in one spill file per part. Untrained tensors are
// ignored.
func (tr *trainer) keepGrad(name string, g []float32, off int) error {
	for _, t := range tr.byName[name] {
		if t.off < off || t.off+t.n > off+len(g) {
			continue
		}
		x := g[t.off-off : t.off-off+t.n]
		tr.sqnorm[t.k] = sumSquares(x)
		tr.gbytes = tr.opt.Codecs.Grad.Encode(tr.gbytes[:0], x)
		if tr.opt.Resident {
			parts := tr.byName[name]
			last := parts[len(parts)-1]
			buf := resize(tr.grads[name], last.off+last.n)
			tr.grads[name] = buf
			if err := tr.opt.Codecs.Grad.Decode(buf[t.off:t.off+t.n], tr.gbytes); err != nil {
				return err
			}
			continue
		}
		if err := tr.timed(func() error { return tr.opt.Grads.Put(t.block, tr.gbytes) }); err != nil {
			return err
		}
	}
	return nil
}

// grad returns t's gradient of the pending step. An embedding part's is
// lm_head's (tied) or zero, with the rows of the step's tokens set from
// embGrad.
func (tr *trainer) grad(t *tensor) ([]float32, error) {
	g, err := tr.keptGrad(t)
	if err != nil || t.name != stream.EmbedTensor {
		return g, err
	}
	D := tr.src.Cfg.Hidden
	lo := t.off / D
	first, in := rowsIn(tr.gradIDs, lo, lo+t.n/D)
	for i, id := range in {
		copy(g[(id-lo)*D:(id-lo+1)*D], tr.embGrad[(first+i)*D:])
	}
	return g, nil
}

// keptGrad returns what keepGrad kept of t's gradient (zeros for the
// embedding of untied embeddings, which keeps nothing).
func (tr *trainer) keptGrad(t *tensor) ([]float32, error) {
	if t.name == stream.EmbedTensor && !tr.src.Cfg.TiedEmbeddings {
		tr.gbuf = resize(tr.gbuf, t.n)
		clear(tr.gbuf)
		return tr.gbuf, nil
	}
	if g, ok := tr.grads[t.name]; ok {
		return g[t.off : t.off+t.n], nil
	}
	if err := tr.timed(func() (err error) { tr.gread, err = tr.opt.Grads.Get(t.block, tr.gread); return err }); err != nil {
		return nil, err
	}
	tr.gbuf = resize(tr.gbuf, t.n)
	if err := tr.opt.Codecs.Grad.Decode(tr.gbuf, tr.gread); err != nil {
		return nil, fmt.Errorf("gradient of %s: %w", t.block, err)
	}
	return tr.gbuf, nil
}

// write streams the pruned checkpoint to out in OutputOrder: each trained
// tensor's final master weights, part by part, pruned tensors
// hard-projected (W = Proj(W), scored like the dual updates), rounded to
// the checkpoint's dtype; everything else copied byte for byte.
func (tr *trainer) write(out TensorSink) ([]TensorStats, error) {
	var stats []TensorStats
	for _, sp := range OutputOrder(tr.src) {
		parts := tr.byName[sp.Name]
		if parts == nil {
			st, err := CopyTensor(tr.src, out, sp.Name)
			if err != nil {
				return nil, err
			}
			stats = append(stats, st)
			continue
		}
		src, _ := tr.src.Model.Tensor(sp.Name)
		st := TensorStats{Name: sp.Name, Params: src.NumElements()}
		err := out.WriteTensorPieces(sp.Name, func(emit func([]byte) error) error {
			for _, t := range parts {
				state, err := tr.load(t, tr.opt.Steps-1)
				if err != nil {
					return err
				}
				w := state.W
				if t.pruned { // one part
					tr.outBuf = append(tr.outBuf[:0], w...)
					w = tr.outBuf
					tr.setScore(state.W, state.V)
					project(w, tr.score, t)
					st.Target = t.s
				}
				if tr.obytes, err = shard.EncodeFloat32(tr.obytes[:0], w, src.DType); err != nil {
					return fmt.Errorf("%s: %w", sp.Name, err)
				}
				st.Zeros += countZeros(tr.obytes, src.DType)
				if err := emit(tr.obytes); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		stats = append(stats, st)
	}
	return stats, nil
}

// setScore puts the projection's scores of x in tr.score: m2·x² with m2
// Adam's second moment ("objective"), or |x|.
func (tr *trainer) setScore(x, m2 []float32) {
	if tr.opt.Projection == ProjectObjective {
		tr.score = objectiveScore(tr.score, x, m2)
	} else {
		tr.score = absScore(tr.score, x)
	}
}

// absScore returns |x| in dst (resized).
func absScore(dst, x []float32) []float32 {
	dst = resize(dst, len(x))
	for i, v := range x {
		dst[i] = float32(math.Abs(float64(v)))
	}
	return dst
}

// objectiveScore returns m2·x² in dst (resized), m2 Adam's second moment.
func objectiveScore(dst, x, m2 []float32) []float32 {
	dst = resize(dst, len(x))
	for i, v := range x {
		dst[i] = m2[i] * v * v
	}
	return dst
}

// project keeps the top entries of x by score (per tensor, or N:M per row
// group) and zeroes the rest.
func project(x, score []float32, t *tensor) {
	if t.pat.IsNM() {
		Apply(x, MaskRows(score, t.rows, t.cols, t.s, t.pat))
		return
	}
	Apply(x, MaskTensor(score, t.rows, t.cols, t.s))
}

// drawBatch samples B windows of T+1 tokens with uniform random starts
// (returned too).
func drawBatch(r *rand.Rand, ids *dataset.IDs, B, T int) (in, tg, starts []int) {
	in, tg = make([]int, 0, B*T), make([]int, 0, B*T)
	for b := 0; b < B; b++ {
		w := dataset.Window{Start: r.IntN(ids.Len() - T), Len: T}
		wi, wt := ids.Window(w)
		in, tg, starts = append(in, wi...), append(tg, wt...), append(starts, w.Start)
	}
	return in, tg, starts
}

// scheduleLambda is λ at step s of the run.
func scheduleLambda(opt ElsaOptions, s int) float64 {
	return opt.Schedule.At(opt.Lambda, opt.LambdaFinal, s, opt.Steps)
}
