package stream

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"time"
	"unsafe"

	"github.com/elsa-stream/elsa-stream/dataset"
	"github.com/elsa-stream/elsa-stream/internal/budget"
	"github.com/elsa-stream/elsa-stream/internal/kernels"
	"github.com/elsa-stream/elsa-stream/model"
	"github.com/elsa-stream/elsa-stream/shard"
)

// Job is what a plan is made for.
type Job string

// The jobs the planner knows. Eval is a forward sweep. Grad is one training
// step's forward and backward sweep with the block gradient handed to a
// consumer. Elsa and ElsaL add the optimizer state of the block being
// updated (fp32, or low precision: Elsa-L).
const (
	Eval  Job = "eval"
	Grad  Job = "grad"
	Elsa  Job = "elsa"
	ElsaL Job = "elsa-l"
	// Prune is a one-shot baseline: a calibration forward per layer plus
	// the method's statistics (Hessians for SparseGPT).
	Prune Job = "prune"
)

// StateCost is what an optimizer keeps per trained parameter, as its
// codecs encode it (admm.StateCost computes it from the state codecs the
// run actually uses): the state on disk per step generation, the master
// weights alone within it (reread by the backward sweep), and the gradient
// spilled between a backward sweep and the next forward.
type StateCost struct {
	PerParam, Master, Grad float64
}

// PlanInput describes the run.
type PlanInput struct {
	Cfg model.Config
	// WeightBytes is the checkpoint's bytes per parameter (2 for bf16/fp16, 4 for fp32).
	WeightBytes float64
	Batch       int // windows per step (eval: all windows)
	SeqLen      int
	Budget      int64
	Job         Job
	// GFLOPS is the measured GEMM speed of this machine (0: measure it).
	GFLOPS float64
	// Compute is the GEMM precision the job runs (and GFLOPS is measured) in.
	Compute kernels.Compute
	// Rates are the per-core speeds the whole job's estimate scales to
	// Cores (zero Rates: the step estimate only).
	Rates Rates
	// Cores is the machine the job estimate is for (0: this one).
	Cores int
	// Steps is the job's optimizer steps (Elsa; 0: one step).
	Steps int
	// Hessians marks a Prune job that keeps XᵀX per linear input
	// (SparseGPT).
	Hessians bool
	// State is the optimizer's cost per parameter (Elsa and Elsa-L jobs).
	State StateCost
	// FrozenHead: Elsa trains only the blocks (--train-dense=false); the
	// embedding, final norm and lm_head are read once, never updated.
	FrozenHead bool
}

// Component is one line of a plan.
type Component struct {
	Name  string `json:"name"`
	Bytes int64  `json:"bytes"`
	// Owner names who reserves the line in the ledger while it is used
	// (OwnerSource: mapped pages; OwnerStore: state read buffers); empty
	// lines are held by the caller for the whole run.
	Owner Owner `json:"-"`
}

// Owner is who reserves a plan line in the ledger itself.
type Owner int

// The self-reserving owners of plan lines.
const (
	OwnerCaller Owner = iota
	OwnerSource       // Source.read: a tensor's mapped pages while it converts
	OwnerStore        // lowmem.Store: its read buffers
)

// Plan is how a run fits its budget, with the numbers it rests on.
type Plan struct {
	Job              Job        `json:"job"`
	Budget           int64      `json:"budget"`
	Granularity      string     `json:"granularity"` // Units, for people
	Units            model.Half `json:"-"`           // model.Whole (layers) or model.Attention (halves)
	MicroBatch       int        `json:"micro_batch"`
	PrefetchDepth    int        `json:"prefetch_depth"`
	SpillActivations bool       `json:"spill_activations"`
	// KeepActivations: the backward sweep reuses the forward's
	// activations (model.KeepActivations) instead of recomputing them.
	KeepActivations bool        `json:"keep_activations"`
	RAM             []Component `json:"ram"`
	RAMTotal        int64       `json:"ram_total"`
	Disk            []Component `json:"disk"`
	ReadBytes       int64       `json:"read_bytes_per_step"`
	WriteBytes      int64       `json:"write_bytes_per_step"`
	FLOPs           float64     `json:"flops_per_step"`
	GFLOPS          float64     `json:"measured_gflops"`
	ComputeSeconds  float64     `json:"compute_seconds_per_step"`
	IOSeconds       float64     `json:"io_seconds_per_step"`
	// UpdateSeconds is the optimizer's state update of a step (decode,
	// prox, Adam, encode, beside the compute); StepSeconds the
	// step (compute, I/O and update overlap: the slowest of them);
	// JobSeconds Steps of it, on Cores cores.
	UpdateSeconds float64 `json:"update_seconds_per_step"`
	StepSeconds   float64 `json:"step_seconds"`
	Steps         int     `json:"steps"`
	Cores         int     `json:"cores"`
	JobSeconds    float64 `json:"job_seconds"`
	MinBudget     int64   `json:"min_budget"`
	Params        int64   `json:"params"`
	BlockParams   int64   `json:"block_params"`
}

// Mapped is the plan's line for the mapped pages of the tensor being
// converted: RAM outside Go's heap (for the runtime's memory limit).
func (p *Plan) Mapped() int64 {
	for _, c := range p.RAM {
		if c.Owner == OwnerSource {
			return c.Bytes
		}
	}
	return 0
}

// Held is what the caller reserves for the whole run: every line but those
// their owners reserve as they use them.
func (p *Plan) Held() int64 {
	h := p.RAMTotal
	for _, c := range p.RAM {
		if c.Owner != OwnerCaller {
			h -= c.Bytes
		}
	}
	return h
}

// Bytes per second assumed for cold sequential reads and writes (measured
// on this machine class: mmap sequential read ~1.45 GB/s cold, docs/design.md, This machine class).
const diskBytesPerSecond = 1.45e9

// Plan lines the eval budget split refers to.
const (
	lineMapped      = "mapped pages of the tensor being converted"
	lineActivations = "activations x (all windows of the step)"
	lineWorkspace   = "block workspace (one micro-batch)"
)

// PartElems is the most values of a dense tensor (an embedding, an
// lm_head) whose optimizer state is decoded at once: such tensors are
// updated in parts (a multiple of the state codecs' block sizes).
const PartElems = 1 << 22

// LineStateIO is the plan line of the state store's I/O buffers, which the
// store reserves in the ledger itself: a read's file and decompressed
// chunks, beside the file image of the write still in flight.
const LineStateIO = "state store I/O buffers (largest tensor: file + decompressed, one write in flight)"

// runtimeOverhead covers the Go runtime, binary, stacks and small buffers
// that no ledger line names.
const runtimeOverhead = 96 << 20

// MakePlan chooses the micro-batch, prefetch depth and activation spilling
// for in. When even one window at the finest granularity cannot fit it
// returns an error that names the smallest budget that works.
func MakePlan(in PlanInput) (*Plan, error) {
	if in.Batch <= 0 || in.SeqLen <= 0 {
		return nil, fmt.Errorf("plan: batch %d and seqlen %d must be positive", in.Batch, in.SeqLen)
	}
	if (in.Job == Elsa || in.Job == ElsaL) != (in.State.PerParam > 0) {
		return nil, fmt.Errorf("plan: a %s job needs a state cost exactly when it trains (got %+v)", in.Job, in.State)
	}
	if in.GFLOPS <= 0 {
		in.GFLOPS = MeasureGFLOPS(in.Compute)
	}
	var best *Plan
	// Prefer whole layers, then no spilling, then the largest micro-batch:
	// halves and spilling cost I/O, small micro-batches cost GEMM speed.
search:
	for _, g := range []model.Half{model.Whole, model.Attention} {
		if in.Job == Prune && g != model.Whole {
			break // one-shot pruning works a whole layer at a time
		}
		for _, spill := range []bool{false, true} {
			if (in.Job == Eval || in.Job == Prune) && spill {
				break // eval keeps one group's activations; grouping bounds them
			}
			for mb := in.Batch; mb >= 1; mb = shrink(mb) {
				if p := layout(in, mb, spill, g, false); p.RAMTotal <= in.Budget {
					best = p
					// With room to spare the backward sweep keeps the
					// forward's activations instead of recomputing them.
					if k := layout(in, mb, spill, g, true); !spill && k.KeepActivations && k.RAMTotal <= in.Budget {
						best = k
					}
					break search
				}
			}
		}
	}
	finest := model.Attention
	if in.Job == Prune {
		finest = model.Whole
	}
	minimal := layout(in, 1, in.Job != Eval && in.Job != Prune, finest, false)
	if best == nil {
		how := "one window per pass, " + map[bool]string{true: "one layer", false: "half a layer"}[in.Job == Prune] + " resident"
		if in.Job != Eval && in.Job != Prune {
			how += ", activations spilled"
		}
		return minimal, fmt.Errorf("%w: %s of %s at %d tokens needs at least %s (%s), budget is %s",
			budget.ErrOverBudget, in.Job, describe(in.Cfg), in.SeqLen, budget.Format(minimal.RAMTotal), how, budget.Format(in.Budget))
	}
	best.MinBudget = minimal.RAMTotal
	return best, nil
}

func shrink(mb int) int {
	if mb <= 1 {
		return 0
	}
	return mb / 2
}

func describe(c model.Config) string {
	return fmt.Sprintf("%d layers × hidden %d", c.Layers, c.Hidden)
}

// layout itemizes the RAM of one configuration. Eval: Batch windows form
// one group of activations (the sweep groups larger sets).
func layout(in PlanInput, mb int, spill bool, g model.Half, keep bool) *Plan {
	c := in.Cfg
	T, B := int64(in.SeqLen), int64(in.Batch)
	D, V := int64(c.Hidden), int64(c.Vocab)
	bp := int64(c.BlockParamCount())
	unit, units, workspace := bp, int64(c.Layers), c.UnitBytes(model.Whole, mb, int(T), in.Job != Eval)
	if g != model.Whole {
		var attn int64
		for _, p := range c.BlockParams() {
			if p.Half == model.Attention {
				n := int64(1)
				for _, d := range p.Shape {
					n *= int64(d)
				}
				attn += n
			}
		}
		unit, units = max(attn, bp-attn), 2*units
		workspace = max(c.UnitBytes(model.Attention, mb, int(T), in.Job != Eval), c.UnitBytes(model.MLP, mb, int(T), in.Job != Eval))
	}
	headParams := V * D
	if !c.TiedEmbeddings {
		headParams *= 2
	}
	p := &Plan{Job: in.Job, Budget: in.Budget, Granularity: map[bool]string{true: "layer", false: "attention/MLP halves"}[g == model.Whole], Units: g, MicroBatch: mb, PrefetchDepth: 1,
		SpillActivations: spill, BlockParams: bp, Params: bp*int64(c.Layers) + headParams + D}
	add := func(name string, b int64) { p.RAM = append(p.RAM, Component{Name: name, Bytes: b}) }
	backward := in.Job != Eval && in.Job != Prune
	add("unit weights fp32 (current + prefetched)", 2*4*unit)
	// The head is read in vocabulary chunks and rows, never whole.
	vc := int64(DefaultVocabChunk(c))
	mappedElems := max(largestBlockTensor(c), vc*D)
	p.RAM = append(p.RAM, Component{Name: lineMapped, Bytes: int64(float64(mappedElems)*in.WeightBytes) + rangeSlack, Owner: OwnerSource})
	optimizing := in.State.PerParam > 0
	n := B * T
	if backward {
		// The head works on a vocabulary chunk of lm_head at a time
		// (model.HeadLossChunked) and on the embedding rows of the step's
		// tokens: their weights and gradient and, tied and trained,
		// lm_head's share of that gradient (admm's trainer).
		add("streamed head: lm_head chunk and its gradient, normalized tokens and their gradient", c.HeadLossChunkedBytes(int(n), int(vc)))
		rowSets := int64(2)
		if optimizing && c.TiedEmbeddings && !in.FrozenHead {
			rowSets = 3
		}
		add("embedding rows of the step's tokens, final norm", 4*rowSets*min(n, V)*D+8*D)
	}
	if optimizing {
		// The optimizer decodes one tensor's state, or one part of the
		// embedding's or lm_head's, at a time.
		largest := max(largestBlockTensor(c), min(V*D, PartElems))
		// W, m, v, z, u, gradient, W + u, scores (selected in place) and
		// the mask: 8 × 4 + 1 B.
		add("state of the tensor being updated, decoded (33 B/param)", 33*largest)
		p.RAM = append(p.RAM, Component{Name: LineStateIO, Bytes: int64(3 * in.State.PerParam * float64(largest)), Owner: OwnerStore})
		// Writing a tensor's state holds its encoded chunks, the file image
		// and the zstd output at once, plus the previous block's garbage.
		add("state store write buffers (largest tensor: chunks + file image + zstd)", int64(2.5*in.State.PerParam*float64(largest)))
	} else if in.Job == Eval {
		add("streamed head: lm_head vocabulary chunk, normalized tokens, logits block", c.HeadNLLBytes(int(B*T), DefaultVocabChunk(c)))
	} else if in.Job == Prune { // embedding rows go straight into x; the head is copied to the output in pieces
		add("a tensor copied to the output: one piece", RawPiece)
	}
	add(lineActivations, 4*n*D)
	add(lineWorkspace, workspace)
	if backward {
		add("gradient dx", 4*n*D)
		add("unit gradient fp32", 4*unit)
		if !spill {
			add("unit-boundary checkpoints", 4*n*D*units)
		}
		if keep {
			kept := 4 * int64(c.KeptFloats(g, int(B), int(T))) * int64(c.Layers)
			if g != model.Whole {
				kept = 4 * int64(c.KeptFloats(model.Attention, int(B), int(T))+c.KeptFloats(model.MLP, int(B), int(T))) * int64(c.Layers)
			}
			add("kept activations (the backward does not recompute the forward)", kept)
			p.KeepActivations = true
		}
	}
	if in.Job == Prune {
		Q, F := int64(c.QDim()), int64(c.Intermediate)
		add("calibration micro-batch output", 4*int64(mb)*T*D)
		add("pruned tensor being encoded", int64(float64(largestBlockTensor(c))*in.WeightBytes))
		if in.Hessians {
			add("Hessians XᵀX of the layer (float64)", 8*(D*D*2+Q*Q+F*F))
			add("SparseGPT working set (W, H⁻¹ factors, float64)", 8*(D*F+2*F*F))
		}
	}
	add("runtime and small buffers", runtimeOverhead)
	for _, c := range p.RAM {
		p.RAMTotal += c.Bytes
	}

	weights := int64(float64(p.Params) * in.WeightBytes)
	p.ReadBytes = weights
	switch {
	case optimizing:
		p.ReadBytes = 0 // the weights come from the state (below)
	case backward:
		p.ReadBytes = 2 * weights // forward and backward sweeps each read every block
	}
	if spill {
		ck := 4 * n * D * units
		p.Disk = append(p.Disk, Component{Name: "spilled checkpoints", Bytes: ck})
		p.WriteBytes += ck
		p.ReadBytes += ck
	}
	if s := in.State.PerParam; s > 0 {
		trained := p.Params // with a frozen head only the blocks have state
		if in.FrozenHead {
			trained = bp * int64(c.Layers)
		}
		st := int64(s * float64(trained))
		p.Disk = append(p.Disk, Component{Name: "optimizer state, two step generations", Bytes: 2 * st})
		g := int64(in.State.Grad * float64(trained))
		p.Disk = append(p.Disk, Component{Name: "spilled gradients", Bytes: g})
		// Read by the update and, the master weights alone, again by the
		// backward sweep; written once.
		p.ReadBytes += st + int64(in.State.Master*float64(trained)) + g
		p.WriteBytes += st + g
	}
	fwd := 2*float64(n)*float64(bp*int64(c.Layers)) + 2*float64(B)*float64(c.Heads)*float64(T*T)*float64(c.HeadDim)*float64(c.Layers) + 2*float64(n)*float64(V*D)
	p.FLOPs = fwd
	if backward {
		p.FLOPs = 4 * fwd // forward, recomputed forward, and backward (2x)
		if p.KeepActivations {
			p.FLOPs = 3 * fwd
		}
	}
	p.GFLOPS = in.GFLOPS
	if in.Cores > 0 && in.Rates.CoreGFLOPS > 0 {
		// Another machine: this one's per-core GEMM speed times its cores,
		// at this machine's parallel efficiency.
		p.GFLOPS = in.Rates.CoreGFLOPS * float64(in.Cores) * in.Rates.Efficiency()
	}
	p.ComputeSeconds = p.FLOPs / (p.GFLOPS * 1e9)
	p.IOSeconds = float64(p.ReadBytes+p.WriteBytes) / diskBytesPerSecond
	if optimizing && in.Rates.UpdateNanos > 0 {
		trained := p.Params
		if in.FrozenHead {
			trained = bp * int64(c.Layers)
		}
		p.UpdateSeconds = float64(trained) * in.Rates.UpdateNanos / 1e9
	}
	p.StepSeconds = max(p.ComputeSeconds, p.IOSeconds, p.UpdateSeconds)
	p.Steps, p.Cores = max(1, in.Steps), in.Cores
	if p.Cores == 0 {
		p.Cores = in.Rates.Cores
	}
	p.JobSeconds = float64(p.Steps) * p.StepSeconds
	return p
}

// Rates are the speeds the job estimate rests on, measured on the spot:
// this machine's GEMM on one core and on all, and the optimizer's update
// per parameter on the machine the estimate is for (admm.UpdateCost).
type Rates struct {
	Cores       int     `json:"cores"`
	CoreGFLOPS  float64 `json:"core_gflops"`
	AllGFLOPS   float64 `json:"all_gflops"`
	UpdateNanos float64 `json:"update_ns_per_param"`
}

// Efficiency is the all-core GEMM speed over cores × the one-core speed.
func (r Rates) Efficiency() float64 {
	if r.CoreGFLOPS <= 0 || r.Cores <= 0 || r.AllGFLOPS <= 0 {
		return 1
	}
	return min(1, r.AllGFLOPS/(r.CoreGFLOPS*float64(r.Cores)))
}

func largestBlockTensor(c model.Config) int64 {
	var m int64
	for _, p := range c.BlockParams() {
		n := int64(1)
		for _, d := range p.Shape {
			n *= int64(d)
		}
		m = max(m, n)
	}
	return m
}

// MeasureGFLOPS times a forward-shaped GEMM (256×2048×2048) in precision
// c on all cores, the speed the plan's time estimate rests on.
func MeasureGFLOPS(c kernels.Compute) float64 { return measureGEMM(c, runtime.GOMAXPROCS(0)) }

// MeasureCoreGFLOPS is MeasureGFLOPS on one core.
func MeasureCoreGFLOPS(c kernels.Compute) float64 { return measureGEMM(c, 1) }

func measureGEMM(compute kernels.Compute, threads int) float64 {
	const m, n, k = 256, 2048, 2048
	r := rand.New(rand.NewPCG(1, 1))
	a, b, c := make([]float32, m*k), make([]float32, n*k), make([]float32, m*n)
	for i := range a {
		a[i] = float32(r.NormFloat64())
	}
	for i := range b {
		b[i] = float32(r.NormFloat64())
	}
	gemm := func() {
		if threads == 1 {
			compute.NTSerial(c, a, b, m, n, k, false)
		} else {
			compute.NT(c, a, b, m, n, k, false)
		}
	}
	gemm()
	best := time.Duration(1 << 62)
	for i := 0; i < 3; i++ {
		t := time.Now()
		gemm()
		best = min(best, time.Since(t))
	}
	return 2 * m * n * k / best.Seconds() / 1e9
}

// EvalBudget splits a budget for an eval sweep. After the fixed lines of
// the plan (two blocks, head, runtime) and the mapped pages of one tensor
// (which the Source reserves itself while converting), the rest bounds the
// activation group and the block workspace. It returns the options and the
// bytes the caller should hold in the ledger for the sweep, or an error
// naming the smallest budget that works when one window does not fit.
func EvalBudget(cfg model.Config, weightBytes float64, seqlen int, total int64) (EvalOptions, int64, error) {
	p, err := MakePlan(PlanInput{Cfg: cfg, WeightBytes: weightBytes, Batch: 1, SeqLen: seqlen, Budget: total, Job: Eval, GFLOPS: 1})
	if err != nil {
		return EvalOptions{}, 0, err
	}
	gran := p.Units
	var fixed, mapped int64
	for _, c := range p.RAM {
		switch {
		case c.Name == lineActivations || c.Name == lineWorkspace:
		case c.Owner == OwnerSource:
			mapped = c.Bytes
		default:
			fixed += c.Bytes
		}
	}
	left := total - fixed - mapped
	ws := max(min(256<<20, left/2), cfg.UnitBytes(gran, 1, seqlen, false))
	opt := EvalOptions{ActivationBytes: left - ws, WorkspaceBytes: ws, Granularity: gran}
	return opt, fixed + opt.ActivationBytes + opt.WorkspaceBytes, nil
}

// WeightBytes is a checkpoint's bytes per parameter from its torch_dtype
// (4 for float32, else 2: bf16 and fp16 checkpoints).
func WeightBytes(c *shard.Config) float64 {
	if c.TorchDType == "float32" {
		return 4
	}
	return 2
}

// EvaluateWithin is Evaluate inside the Source's ledger: the budget split
// of EvalBudget held for the whole sweep (a tensor's mapped pages are
// reserved by the Source while it converts them) and the Go memory limit
// set for it; the GEMMs run in precision compute.
func (s *Sweeper) EvaluateWithin(ctx context.Context, stream *dataset.IDs, windows []dataset.Window, seqlen int, compute kernels.Compute) (EvalResult, error) {
	if s.Ledger == nil {
		return EvalResult{}, fmt.Errorf("stream: EvaluateWithin needs a Source with a ledger")
	}
	// The window list itself: 16 B a window, 64 MiB for a 2 GB token file.
	list, err := s.Ledger.Reserve("eval windows", int64(len(windows))*int64(unsafe.Sizeof(dataset.Window{})))
	if err != nil {
		return EvalResult{}, err
	}
	defer list.Release()
	opt, hold, err := EvalBudget(s.Cfg, WeightBytes(s.Model.Config), seqlen, s.Ledger.Limit()-s.Ledger.Used())
	if err != nil {
		return EvalResult{}, err
	}
	s.Ledger.LimitRuntime(s.Ledger.Limit() - hold)
	held, err := s.Ledger.Reserve("eval plan", hold)
	if err != nil {
		return EvalResult{}, err
	}
	defer held.Release()
	opt.Compute = compute
	return s.Evaluate(ctx, stream, windows, opt)
}
