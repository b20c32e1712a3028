package admm

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/elsa-stream/elsa-stream/lowmem"

	"github.com/elsa-stream/elsa-stream/model"
	"github.com/elsa-stream/elsa-stream/stream"
)

// ElsaOptions are Elsa's knobs (DESIGN.md §3; defaults in DefaultElsa).
type ElsaOptions struct {
	Steps, Batch, SeqLen int
	LR                   float64
	Lambda, LambdaFinal  float64
	// Schedule is constant, linear, cosine or exponential (λ0 → λ1).
	Schedule string
	Interval int
	Clip     float64
	// Projection scores entries by |v| ("magnitude") or m2·v² with m2
	// Adam's second moment ("objective", the paper's recommended mode).
	Projection string
	Sparsity   float64
	Pattern    Pattern
	// LayerSparsity overrides Sparsity per tensor (OWL, allocation file).
	LayerSparsity func(tensor string) float64
	// TrainDense trains embeddings, norms and lm_head with the same Adam
	// (no penalty).
	TrainDense bool
	Seed       uint64
	// Step is called after every step with its metrics.
	Step func(StepMetrics)
	// State, when set, receives the optimizer state after every step (one
	// file per layer plus "head", committed per step). With LowPrecision
	// (Elsa-L) each trainable tensor's master weights, Adam moments and,
	// for pruned tensors, z/u go through the lowmem.ElsaLState codecs and
	// the next step uses exactly the stored state; otherwise they are
	// stored exactly (fp32).
	State        *lowmem.Store
	LowPrecision bool
	// Resume continues from State's last committed step; the result is
	// bit-identical to an uninterrupted run with the same options.
	Resume bool

	stopAfter int // tests: return after committing this step (0: run all)
}

// DefaultElsa returns the defaults for small models found on stories260K
// (see the README's table); the reference's lr 2e-4 is for 7B models.
func DefaultElsa() ElsaOptions {
	return ElsaOptions{Steps: 500, Batch: 8, SeqLen: 256, LR: 1e-2, Lambda: 0.01, LambdaFinal: 0.01,
		Schedule: "constant", Interval: 8, Clip: 1, Projection: "magnitude", Sparsity: 0.9, TrainDense: true}
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
	IOWait    float64 `json:"io_wait_seconds"`
}

// param is one trainable tensor with its optimizer state.
type param struct {
	name   string
	w      []float32 // the live weights (resident model)
	g      []float32 // gradient of the step
	m, v   []float32 // Adam moments
	pruned bool
	rows   int
	cols   int
	s      float64 // target sparsity
	pat    Pattern
	z, u   []float32 // ADMM split and scaled dual (pruned only)
}

// Elsa prunes the model held by src (made resident) by surrogate-free ADMM
// on the language-modelling loss over windows drawn from the calibration
// stream ids: every step is a full forward and backward pass; the global
// gradient norm is clipped to Clip, then λ(W − z + u) is added to the
// pruned weights' gradients; Adam (β 0.9, 0.95, ε 1e-8, no weight decay,
// lr decaying linearly to 0); after steps 0, I, 2I, ... v = W + u,
// z = Proj(v), u = v − z (u first rescaled by λ_old/λ_new when λ moves);
// finally W = Proj(W). On return src's resident weights are the pruned
// model.
func Elsa(src *stream.Source, ids []int, opt ElsaOptions) error {
	if opt.Steps <= 0 || opt.Batch <= 0 || opt.SeqLen <= 0 || opt.Interval <= 0 || opt.LR <= 0 {
		return fmt.Errorf("admm: Elsa needs positive steps, batch, seqlen, interval and lr")
	}
	if err := src.MakeResident(); err != nil {
		return err
	}
	w := src.Resident() // trained in place
	c := src.Cfg
	var params []*param
	add := func(name string, t []float32, pruned bool, shape []int) {
		p := &param{name: name, w: t, g: make([]float32, len(t)), m: make([]float32, len(t)), v: make([]float32, len(t)), pruned: pruned}
		if pruned {
			p.rows, p.cols = shape[0], shape[1]
			p.s = opt.Sparsity
			if opt.LayerSparsity != nil {
				p.s = opt.LayerSparsity(name)
			}
			p.s = opt.Pattern.Sparsity(p.s)
			p.pat = opt.Pattern
			p.z = make([]float32, len(t))
			p.u = make([]float32, len(t))
		}
		params = append(params, p)
	}
	blockParams := map[int]map[string]*param{}
	for l, b := range w.Blocks {
		blockParams[l] = map[string]*param{}
		for _, bp := range c.BlockParams() {
			if !bp.Linear && !opt.TrainDense {
				continue
			}
			add(stream.LayerTensor(l, bp.Suffix), *bp.Get(b), bp.Linear, bp.Shape)
			blockParams[l][bp.Suffix] = params[len(params)-1]
		}
	}
	var headParams []*param
	if opt.TrainDense {
		add(stream.EmbedTensor, w.Head.Embed, false, nil)
		headParams = append(headParams, params[len(params)-1])
		add(stream.NormTensor, w.Head.Norm, false, nil)
		headParams = append(headParams, params[len(params)-1])
		if !c.TiedEmbeddings {
			add(stream.LMHeadTensor, w.Head.LMHead, false, nil)
			headParams = append(headParams, params[len(params)-1])
		}
	}
	lambda := opt.Lambda
	r := rand.New(rand.NewPCG(opt.Seed, 0xe15a))
	first := 0
	if opt.State != nil && opt.State.LastStep() >= 0 {
		last := opt.State.LastStep()
		if !opt.Resume {
			return fmt.Errorf("admm: the state store already holds steps up to %d: resume it, or start over with an empty work dir", last)
		}
		if err := loadState(params, opt, last); err != nil {
			return err
		}
		// Replay what the finished steps consumed: the batch draws and the
		// λ schedule up to the last dual update.
		for s := 0; s <= last; s++ {
			drawBatch(r, ids, opt.Batch, opt.SeqLen)
			if s%opt.Interval == 0 {
				lambda = scheduleLambda(opt, s)
			}
		}
		first = last + 1
	} else {
		// Init: z = Proj(W0) by magnitude, u = 0.
		for _, p := range params {
			if p.pruned {
				copy(p.z, p.w)
				project(p.z, absScore(p.z), p)
			}
		}
	}
	grads := &gradSink{c: c, blocks: blockParams, head: headParams}
	for step := first; step < opt.Steps; step++ {
		start := time.Now()
		inputs, targets := drawBatch(r, ids, opt.Batch, opt.SeqLen)
		src.IOWait = 0
		res, err := src.GradientSweep(inputs, targets, opt.Batch, opt.SeqLen, stream.SweepOptions{}, grads)
		if err != nil {
			return err
		}
		// Global clipping of the loss gradient, before the prox term.
		var sq float64
		for _, p := range params {
			for _, g := range p.g {
				sq += float64(g) * float64(g)
			}
		}
		norm := math.Sqrt(sq)
		clipScale := float32(1)
		if opt.Clip > 0 && norm > opt.Clip {
			clipScale = float32(opt.Clip / norm)
		}
		lr := opt.LR * (1 - float64(step)/float64(opt.Steps))
		bc1 := 1 - math.Pow(0.9, float64(step+1))
		bc2 := 1 - math.Pow(0.95, float64(step+1))
		for _, p := range params {
			adam(p, clipScale, float32(lambda), lr, bc1, bc2)
		}
		met := StepMetrics{Step: step, Loss: res.SumNLL / float64(res.Tokens), GradNorm: norm, Lambda: lambda, LR: lr}
		if step%opt.Interval == 0 {
			if nl := scheduleLambda(opt, step); nl != lambda {
				for _, p := range params {
					if p.pruned {
						scale := float32(lambda / nl)
						for i := range p.u {
							p.u[i] *= scale
						}
					}
				}
				lambda = nl
			}
			met.Dual = dualUpdate(params, opt.Projection, lambda)
		}
		if opt.State != nil {
			if err := saveState(params, opt, step); err != nil {
				return err
			}
			if opt.stopAfter > 0 && step == opt.stopAfter {
				return nil
			}
		}
		met.Primal = primalResidual(params)
		met.TokensSec = float64(opt.Batch*opt.SeqLen) / time.Since(start).Seconds()
		met.IOWait = src.IOWait.Seconds()
		if opt.Step != nil {
			opt.Step(met)
		}
	}
	// Final hard projection of W itself.
	for _, p := range params {
		if p.pruned {
			score := absScore(p.w)
			if opt.Projection == "objective" {
				score = objectiveScore(p.w, p.v)
			}
			project(p.w, score, p)
		}
	}
	return nil
}

// stateCodecs are the codecs of the stored state: Elsa-L's (master weights
// bf16 with stochastic rounding seeded by seed, step and tensor; Adam m/v
// dynamic 8-bit; z/u as one int8-block v plus mask) or exact fp32.
func stateCodecs(opt ElsaOptions, step, k int) (w, m, v lowmem.Codec, zu lowmem.ZU) {
	if !opt.LowPrecision {
		return lowmem.FP32{}, lowmem.FP32{}, lowmem.FP32{}, lowmem.ZU{Values: lowmem.FP32{}}
	}
	st := lowmem.ElsaLState
	return lowmem.BF16{Stochastic: true, Seed: opt.Seed ^ uint64(step)<<20 ^ uint64(k)}, st.M, st.V, st.ZU
}

// stateFile names the store file holding a tensor's state.
func stateFile(name string) string {
	if strings.HasPrefix(name, "model.layers.") {
		return "layer-" + strings.SplitN(strings.TrimPrefix(name, "model.layers."), ".", 2)[0]
	}
	return "head"
}

// saveState rounds every trainable tensor's state through its codec (a
// no-op for fp32) and commits it to the store as step.
func saveState(params []*param, opt ElsaOptions, step int) error {
	files := map[string][]lowmem.Chunk{}
	for k, p := range params {
		cw, cm, cv, czu := stateCodecs(opt, step, k)
		chunks := []lowmem.Chunk{
			roundTrip(p.name+".w", cw, p.w),
			roundTrip(p.name+".m", cm, p.m),
			roundTrip(p.name+".v", cv, p.v),
		}
		if p.pruned {
			zu, err := czu.EncodeZU(nil, p.z, p.u)
			if err != nil {
				return fmt.Errorf("%s: %w", p.name, err)
			}
			if err := czu.DecodeZU(p.z, p.u, zu); err != nil {
				return err
			}
			chunks = append(chunks, lowmem.Chunk{Name: p.name + ".zu", Codec: czu.Name(), N: len(p.z), Data: zu, Compress: true})
		}
		files[stateFile(p.name)] = append(files[stateFile(p.name)], chunks...)
	}
	s := opt.State
	for name, chunks := range files {
		if err := s.WriteBlock(step, name, chunks); err != nil {
			return err
		}
	}
	return s.Commit(step)
}

// loadState restores every trainable tensor's state from step.
func loadState(params []*param, opt ElsaOptions, step int) error {
	files := map[string]map[string]lowmem.Chunk{}
	for k, p := range params {
		f := stateFile(p.name)
		if files[f] == nil {
			chunks, err := opt.State.ReadBlock(step, f)
			if err != nil {
				return err
			}
			files[f] = chunks
		}
		cw, cm, cv, czu := stateCodecs(opt, step, k)
		for _, x := range []struct {
			suffix string
			c      lowmem.Codec
			dst    []float32
		}{{".w", cw, p.w}, {".m", cm, p.m}, {".v", cv, p.v}} {
			ch, ok := files[f][p.name+x.suffix]
			if !ok || ch.Codec != x.c.Name() {
				return fmt.Errorf("admm: state of %s%s missing or written with codec %q, this run uses %q", p.name, x.suffix, ch.Codec, x.c.Name())
			}
			if err := x.c.Decode(x.dst, ch.Data); err != nil {
				return fmt.Errorf("%s%s: %w", p.name, x.suffix, err)
			}
		}
		if p.pruned {
			ch, ok := files[f][p.name+".zu"]
			if !ok || ch.Codec != czu.Name() {
				return fmt.Errorf("admm: state of %s.zu missing or written with another codec", p.name)
			}
			if err := czu.DecodeZU(p.z, p.u, ch.Data); err != nil {
				return fmt.Errorf("%s.zu: %w", p.name, err)
			}
		}
	}
	return nil
}

// roundTrip encodes x with c, decodes it back into x, and returns the chunk.
func roundTrip(name string, c lowmem.Codec, x []float32) lowmem.Chunk {
	b := c.Encode(nil, x)
	if err := c.Decode(x, b); err != nil {
		panic("admm: codec round trip: " + err.Error()) // a codec bug, not bad input
	}
	return lowmem.Chunk{Name: name, Codec: c.Name(), N: len(x), Data: b}
}

// gradSink copies each unit's gradient into the params' buffers.
type gradSink struct {
	c      model.Config
	blocks map[int]map[string]*param
	head   []*param
}

func (s *gradSink) Block(u stream.Unit, w, g *model.Block) error {
	for _, bp := range s.c.BlockParams() {
		if u.Half != model.Whole && bp.Half != u.Half {
			continue
		}
		if p := s.blocks[u.Layer][bp.Suffix]; p != nil {
			copy(p.g, *bp.Get(g))
		}
	}
	return nil
}

func (s *gradSink) Head(w, g *model.Head) error {
	for _, p := range s.head {
		switch p.name {
		case stream.EmbedTensor:
			copy(p.g, g.Embed)
		case stream.NormTensor:
			copy(p.g, g.Norm)
		case stream.LMHeadTensor:
			copy(p.g, g.LMHead)
		}
	}
	return nil
}

// adam applies one Adam step with the clipped gradient plus, for pruned
// weights, the prox term λ(W − z + u).
func adam(p *param, clip, lambda float32, lr, bc1, bc2 float64) {
	const b1, b2, eps = 0.9, 0.95, 1e-8
	stepSize := float32(lr / bc1)
	sqrtBC2 := float32(math.Sqrt(bc2))
	for i, g := range p.g {
		g *= clip
		if p.pruned {
			g += lambda * (p.w[i] - p.z[i] + p.u[i])
		}
		p.m[i] = b1*p.m[i] + (1-b1)*g
		p.v[i] = b2*p.v[i] + (1-b2)*g*g
		denom := float32(math.Sqrt(float64(p.v[i])))/sqrtBC2 + eps
		p.w[i] -= stepSize * p.m[i] / denom
	}
}

// dualUpdate does v = W + u, z = Proj(v), u = v − z for every pruned
// tensor and returns λ·‖z − z_prev‖/‖W‖ over all of them.
func dualUpdate(params []*param, projection string, lambda float64) float64 {
	var dz, wn float64
	for _, p := range params {
		if !p.pruned {
			continue
		}
		vv := make([]float32, len(p.w))
		for i := range vv {
			vv[i] = p.w[i] + p.u[i]
		}
		score := absScore(vv)
		if projection == "objective" {
			score = objectiveScore(vv, p.v)
		}
		z := append([]float32(nil), vv...)
		project(z, score, p)
		for i := range z {
			d := float64(z[i] - p.z[i])
			dz += d * d
			wn += float64(p.w[i]) * float64(p.w[i])
			p.u[i] = vv[i] - z[i]
		}
		p.z = z
	}
	return lambda * math.Sqrt(dz) / math.Sqrt(max(wn, 1e-30))
}

func primalResidual(params []*param) float64 {
	var d, n float64
	for _, p := range params {
		if p.pruned {
			for i, w := range p.w {
				e := float64(w - p.z[i])
				d += e * e
				n += float64(w) * float64(w)
			}
		}
	}
	return math.Sqrt(d) / math.Sqrt(max(n, 1e-30))
}

func absScore(x []float32) []float32 {
	s := make([]float32, len(x))
	for i, v := range x {
		s[i] = float32(math.Abs(float64(v)))
	}
	return s
}

// objectiveScore is m2·x² with m2 Adam's second moment.
func objectiveScore(x, m2 []float32) []float32 {
	s := make([]float32, len(x))
	for i, v := range x {
		s[i] = m2[i] * v * v
	}
	return s
}

// project keeps the top entries of x by score (per tensor, or N:M per row
// group) and zeroes the rest.
func project(x, score []float32, p *param) {
	if p.pat.IsNM() {
		Apply(x, MaskRows(score, p.rows, p.cols, p.s, p.pat))
		return
	}
	Apply(x, MaskTensor(score, p.rows, p.cols, p.s))
}

// drawBatch samples B windows of T+1 tokens with uniform random starts.
func drawBatch(r *rand.Rand, ids []int, B, T int) ([]int, []int) {
	in, tg := make([]int, 0, B*T), make([]int, 0, B*T)
	for b := 0; b < B; b++ {
		s := r.IntN(len(ids) - T)
		in = append(in, ids[s:s+T]...)
		tg = append(tg, ids[s+1:s+T+1]...)
	}
	return in, tg
}

// scheduleLambda is λ at step s: constant, or from λ0 to λ1 linearly, by
// a half cosine, or exponentially (geometric interpolation).
func scheduleLambda(opt ElsaOptions, s int) float64 {
	f := float64(s) / float64(max(1, opt.Steps-1))
	l0, l1 := opt.Lambda, opt.LambdaFinal
	switch opt.Schedule {
	case "linear":
		return l0 + (l1-l0)*f
	case "cosine":
		return l1 + (l0-l1)*(1+math.Cos(math.Pi*f))/2
	case "exponential":
		return l0 * math.Pow(l1/l0, f)
	}
	return l0
}

// WriteResident streams src's resident weights (after Elsa) to out in
// OutputOrder, each tensor rounded to its checkpoint dtype; tensors the
// model does not use are copied byte for byte. It returns the sparsity
// statistics of every tensor.
func WriteResident(src *stream.Source, opt ElsaOptions, out TensorSink) ([]TensorStats, error) {
	w := src.Resident()
	c := src.Cfg
	vals := map[string][]float32{stream.EmbedTensor: w.Head.Embed, stream.NormTensor: w.Head.Norm}
	if !c.TiedEmbeddings {
		vals[stream.LMHeadTensor] = w.Head.LMHead
	}
	target := map[string]float64{}
	for l, b := range w.Blocks {
		for _, bp := range c.BlockParams() {
			name := stream.LayerTensor(l, bp.Suffix)
			vals[name] = *bp.Get(b)
			if bp.Linear {
				s := opt.Sparsity
				if opt.LayerSparsity != nil {
					s = opt.LayerSparsity(name)
				}
				target[name] = opt.Pattern.Sparsity(s)
			}
		}
	}
	var stats []TensorStats
	for _, sp := range OutputOrder(src) {
		t, _ := src.Model.Tensor(sp.Name)
		var data []byte
		var err error
		if v, ok := vals[sp.Name]; ok {
			data, _, err = encodePruned(src, sp.Name, v, false)
		} else {
			data = make([]byte, t.NumBytes())
			err = t.ReadBytes(data)
		}
		if err != nil {
			return nil, err
		}
		stats = append(stats, TensorStats{Name: sp.Name, Params: t.NumElements(), Zeros: countZeros(data, t.DType), Target: target[sp.Name]})
		if err := out.WriteTensor(sp.Name, data); err != nil {
			return nil, err
		}
	}
	return stats, nil
}
