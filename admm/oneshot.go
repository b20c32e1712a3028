package admm

import (
	"context"
	"fmt"
	"math"
	"sort"
	"strings"

	"github.com/elsa-stream/elsa-stream/internal/kernels"
	"github.com/elsa-stream/elsa-stream/model"
	"github.com/elsa-stream/elsa-stream/shard"
	"github.com/elsa-stream/elsa-stream/stream"
)

// Method is a one-shot baseline.
type Method string

// The methods: the one-shot baselines, and Elsa with exact (fp32) or
// low-precision (Elsa-L) state.
const (
	MethodMagnitude Method = "magnitude"
	MethodWanda     Method = "wanda"
	MethodSparseGPT Method = "sparsegpt"
	MethodElsa      Method = "elsa"
	MethodElsaL     Method = "elsa-l"
)

// ParseMethod validates a method name.
func ParseMethod(s string) (Method, error) {
	switch m := Method(s); m {
	case MethodMagnitude, MethodWanda, MethodSparseGPT, MethodElsa, MethodElsaL:
		return m, nil
	}
	return "", fmt.Errorf("method %q: want magnitude, wanda, sparsegpt, elsa or elsa-l", s)
}

// IsElsa reports whether the method is Elsa or Elsa-L (trained, not one-shot).
func (m Method) IsElsa() bool { return m == MethodElsa || m == MethodElsaL }

// IsOneShot reports whether the method is one of the one-shot baselines.
func (m Method) IsOneShot() bool {
	return m == MethodMagnitude || m == MethodWanda || m == MethodSparseGPT
}

// NeedsCalibration reports whether the method reads calibration inputs.
func (m Method) NeedsCalibration() bool { return m != MethodMagnitude }

// TensorSink receives output tensors in order (shard.Writer implements
// it): whole, or in consecutive pieces of whole elements that emit writes
// before it returns (a tensor never whole in memory).
type TensorSink interface {
	WriteTensor(name string, data []byte) error
	WriteTensorPieces(name string, write func(emit func([]byte) error) error) error
}

// CopyTensor writes tensor name of src to out unchanged, in pieces.
func CopyTensor(src *stream.Source, out TensorSink, name string) (TensorStats, error) {
	t, _ := src.Model.Tensor(name)
	st := TensorStats{Name: name, Params: t.NumElements()}
	err := out.WriteTensorPieces(name, func(emit func([]byte) error) error {
		return src.CopyRaw(name, func(b []byte) error {
			st.Zeros += countZeros(b, t.DType)
			return emit(b)
		})
	})
	return st, err
}

// OneShotOptions configure a one-shot pruning run.
type OneShotOptions struct {
	Method   Method
	Sparsity float64
	Pattern  Pattern
	// LayerSparsity, when set, overrides Sparsity per tensor name
	// (from OWL or an allocation file); unstructured only.
	LayerSparsity func(tensor string) float64
	SparseGPT     SparseGPTOptions
	// MicroBatch windows per calibration forward (0: all).
	MicroBatch int
	Log        func(format string, args ...any)
	// Progress is called after each layer.
	Progress func(layer int)
}

// TensorStats is the sparsity of one output tensor.
type TensorStats struct {
	Name   string  `json:"name"`
	Params int64   `json:"params"`
	Zeros  int64   `json:"zeros"`
	Target float64 `json:"target_sparsity"`
}

// OutputOrder lists the checkpoint's tensors in the order a one-shot run
// writes them: the embedding, each layer's parameters, the final norm, the
// lm_head, then anything else; with shapes and dtypes unchanged.
func OutputOrder(src *stream.Source) []shard.Spec {
	var specs []shard.Spec
	seen := map[string]bool{}
	add := func(name string) {
		if t, ok := src.Model.Tensor(name); ok && !seen[name] {
			seen[name] = true
			specs = append(specs, shard.Spec{Name: name, DType: t.DType, Shape: t.Shape})
		}
	}
	add(stream.EmbedTensor)
	for l := 0; l < src.Cfg.Layers; l++ {
		for _, p := range src.Cfg.BlockParams() {
			add(stream.LayerTensor(l, p.Suffix))
		}
	}
	add(stream.NormTensor)
	add(stream.LMHeadTensor)
	for _, n := range src.Model.Names {
		add(n)
	}
	return specs
}

// OneShot prunes every linear weight of the decoder blocks (q, k, v, o,
// gate, up, down; never embeddings, norms or lm_head) layer by layer and
// streams the whole checkpoint to out in OutputOrder. Wanda and SparseGPT
// are layer-sequential as in their reference code: the calibration windows
// (calib, B windows of T tokens) run through the already pruned layers; each
// layer's statistics come from one forward of the dense layer, then it is
// pruned and the calibration activations are recomputed through it.
// Unpruned tensors are copied byte for byte; magnitude and Wanda zero bytes
// in place, so kept weights are bit-identical; SparseGPT's updated weights
// are rounded to the checkpoint's dtype.
func OneShot(ctx context.Context, src *stream.Source, calib []int, B, T int, opt OneShotOptions, out TensorSink) ([]TensorStats, error) {
	c := src.Cfg
	if err := opt.Pattern.Fits(c); err != nil {
		return nil, err
	}
	logf := opt.Log
	if logf == nil {
		logf = func(string, ...any) {}
	}
	var stats []TensorStats
	copyRaw := func(name string) error {
		if _, ok := src.Model.Tensor(name); !ok {
			return nil
		}
		st, err := CopyTensor(src, out, name)
		stats = append(stats, st)
		return err
	}
	if err := copyRaw(stream.EmbedTensor); err != nil {
		return nil, err
	}

	var x []float32
	var rope *model.Rope
	if opt.Method.NeedsCalibration() {
		x = make([]float32, B*T*c.Hidden)
		if err := src.EmbedRows(x, calib); err != nil {
			return nil, err
		}
		rope = model.NewRope(c, T)
	}
	mb := opt.MicroBatch
	if mb <= 0 || mb > B {
		mb = B
	}
	var ws model.Workspace
	err := src.Sweeper().Blocks(ctx, func(l int, blk *model.Block) error {
		var st *layerStats
		if opt.Method.NeedsCalibration() {
			st = collect(c.ForLayer(l), blk, rope, x, B, T, mb, &ws, opt.Method == MethodSparseGPT)
		}
		for _, p := range c.BlockParams() {
			name := stream.LayerTensor(l, p.Suffix)
			if !p.Linear {
				if err := copyRaw(name); err != nil {
					return err
				}
				continue
			}
			s := opt.Sparsity
			if opt.LayerSparsity != nil {
				s = opt.LayerSparsity(name)
			}
			s = opt.Pattern.Sparsity(s)
			w := *p.Get(blk)
			rows, cols := p.Shape[0], p.Shape[1]
			switch opt.Method {
			case MethodMagnitude:
				Magnitude(w, rows, cols, s, opt.Pattern)
			case MethodWanda:
				Wanda(w, rows, cols, st.colSq[p.Suffix], s, opt.Pattern)
			case MethodSparseGPT:
				o := opt.SparseGPT
				o.Log = func(f string, a ...any) { logf("%s: "+f, append([]any{name}, a...)...) }
				if err := SparseGPT(w, rows, cols, st.h[p.Suffix], s, opt.Pattern, o); err != nil {
					return fmt.Errorf("%s: %w", name, err)
				}
			default:
				return fmt.Errorf("admm: unknown method %q", opt.Method)
			}
			data, zeros, err := encodePruned(src, name, w, opt.Method != MethodSparseGPT)
			if err != nil {
				return err
			}
			stats = append(stats, TensorStats{Name: name, Params: int64(len(w)), Zeros: zeros, Target: s})
			if err := out.WriteTensor(name, data); err != nil {
				return err
			}
		}
		if opt.Method.NeedsCalibration() { // the next layer sees this pruned one
			for b0 := 0; b0 < B; b0 += mb {
				nb := min(mb, B-b0)
				c.ForLayer(l).Forward(blk, rope, x[b0*T*c.Hidden:(b0+nb)*T*c.Hidden], nb, T, &ws)
			}
		}
		if opt.Progress != nil {
			opt.Progress(l)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, name := range []string{stream.NormTensor, stream.LMHeadTensor} {
		if err := copyRaw(name); err != nil {
			return nil, err
		}
	}
	written := map[string]bool{}
	for _, s := range stats {
		written[s.Name] = true
	}
	for _, sp := range OutputOrder(src) {
		if !written[sp.Name] {
			if err := copyRaw(sp.Name); err != nil {
				return nil, err
			}
		}
	}
	return stats, nil
}

// layerStats are one layer's calibration statistics per linear input:
// Σ x_j² (Wanda) and H = XᵀX/n (SparseGPT).
type layerStats struct {
	colSq map[string][]float64
	h     map[string][]float64
}

// collect runs the dense layer over the calibration windows and gathers the
// statistics of every linear's input.
func collect(c model.Config, blk *model.Block, rope *model.Rope, x []float32, B, T, mb int, ws *model.Workspace, hessian bool) *layerStats {
	st := &layerStats{colSq: map[string][]float64{}, h: map[string][]float64{}}
	y := make([]float32, mb*T*c.Hidden)
	type acc struct {
		sq, h []float64
		n     int
	}
	accs := map[string]*acc{} // keyed by the input feeding the linear
	inputKey := map[string]string{}
	for _, p := range c.BlockParams() {
		if p.Linear {
			inputKey[p.Suffix] = inputName(p.Suffix)
		}
	}
	for b0 := 0; b0 < B; b0 += mb {
		nb := min(mb, B-b0)
		copy(y, x[b0*T*c.Hidden:(b0+nb)*T*c.Hidden])
		c.Forward(blk, rope, y[:nb*T*c.Hidden], nb, T, ws)
		in := ws.Inputs()
		for _, p := range c.BlockParams() {
			if !p.Linear {
				continue
			}
			key := inputKey[p.Suffix]
			a := accs[key]
			cols := p.Shape[1]
			if a == nil {
				a = &acc{sq: make([]float64, cols)}
				if hessian {
					a.h = make([]float64, cols*cols)
				}
				accs[key] = a
			} else if a.n >= (b0+nb)*T {
				continue // already accumulated this micro-batch for a sibling
			}
			xs := model.InputOf(p.Suffix)(in)[:nb*T*cols]
			for t := 0; t < nb*T; t++ {
				for j, v := range xs[t*cols : (t+1)*cols] {
					a.sq[j] += float64(v) * float64(v)
				}
			}
			if hessian {
				// XᵀX of the micro-batch by GEMM in float32 (as the
				// reference accumulates H), summed across micro-batches in
				// float64.
				hb := make([]float32, cols*cols)
				kernels.MatMulTN(hb, xs, xs, cols, cols, nb*T, false)
				for i, v := range hb {
					a.h[i] += float64(v)
				}
			}
			a.n += nb * T
		}
	}
	for suffix, key := range inputKey {
		a := accs[key]
		st.colSq[suffix] = a.sq
		if hessian {
			h := make([]float64, len(a.h))
			for i, v := range a.h {
				h[i] = v / float64(a.n)
			}
			st.h[suffix] = h
		}
	}
	return st
}

func inputName(suffix string) string {
	switch {
	case strings.HasPrefix(suffix, "self_attn.o_proj"):
		return "attn_out"
	case strings.HasPrefix(suffix, "self_attn."):
		return "attn_in"
	case strings.HasPrefix(suffix, "mlp.down_proj"):
		return "mlp_act"
	}
	return "mlp_in"
}

// encodePruned renders the pruned float32 weight in the checkpoint's dtype.
// With zeroInPlace the original bytes are kept and only pruned positions
// zeroed (kept weights stay bit-identical); otherwise the values are
// rounded to the dtype (nearest even).
func encodePruned(src *stream.Source, name string, w []float32, zeroInPlace bool) ([]byte, int64, error) {
	t, _ := src.Model.Tensor(name)
	var data []byte
	if zeroInPlace {
		data = make([]byte, t.NumBytes())
		if err := src.ReadRaw(name, data); err != nil {
			return nil, 0, err
		}
		sz := int(t.DType.Size())
		for i, v := range w {
			if v == 0 {
				clear(data[i*sz : (i+1)*sz])
			}
		}
	} else {
		var err error
		if data, err = shard.EncodeFloat32(make([]byte, 0, t.NumBytes()), w, t.DType); err != nil {
			return nil, 0, fmt.Errorf("%s: %w", name, err)
		}
	}
	return data, countZeros(data, t.DType), nil
}

// countZeros counts elements equal to ±0 in little-endian float data.
func countZeros(b []byte, d shard.DType) int64 {
	sz := int(d.Size())
	var n int64
	for i := 0; i+sz <= len(b); i += sz {
		zero := true
		for k := 0; k < sz; k++ {
			v := b[i+k]
			if k == sz-1 {
				v &= 0x7f // sign bit
			}
			zero = zero && v == 0
		}
		if zero {
			n++
		}
	}
	return n
}

// OWL computes outlier-weighted layer-wise sparsity (Yin et al. 2024): for
// each layer the share of Wanda scores above M times the layer's mean score
// (the layer outlier distribution); shares are min-max normalised to
// [0, 2λ], centred so that the mean kept ratio is 1 − s, and each layer gets
// sparsity 1 − ratio. The calibration windows run through the dense model.
func OWL(ctx context.Context, src *stream.Source, calib []int, B, T int, s, m, lambda float64, mb int) ([]float64, error) {
	c := src.Cfg
	x := make([]float32, B*T*c.Hidden)
	if err := src.EmbedRows(x, calib); err != nil {
		return nil, err
	}
	rope := model.NewRope(c, T)
	if mb <= 0 || mb > B {
		mb = B
	}
	var ws model.Workspace
	lod := make([]float64, c.Layers)
	err := src.Sweeper().Blocks(ctx, func(l int, blk *model.Block) error {
		st := collect(c.ForLayer(l), blk, rope, x, B, T, mb, &ws, false)
		var all []float32
		for _, p := range c.BlockParams() {
			if p.Linear {
				all = append(all, WandaScores(*p.Get(blk), p.Shape[0], p.Shape[1], st.colSq[p.Suffix])...)
			}
		}
		var mean float64
		for _, v := range all {
			mean += float64(v)
		}
		mean /= float64(len(all))
		out := 0
		for _, v := range all {
			if float64(v) > m*mean {
				out++
			}
		}
		lod[l] = float64(out) / float64(len(all))
		for b0 := 0; b0 < B; b0 += mb {
			nb := min(mb, B-b0)
			c.ForLayer(l).Forward(blk, rope, x[b0*T*c.Hidden:(b0+nb)*T*c.Hidden], nb, T, &ws)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	lo, hi := lod[0], lod[0]
	for _, v := range lod {
		lo, hi = math.Min(lo, v), math.Max(hi, v)
	}
	ratio := make([]float64, len(lod))
	var mean float64
	for i, v := range lod {
		if hi > lo {
			ratio[i] = (v - lo) / (hi - lo) * 2 * lambda
		}
		mean += ratio[i]
	}
	mean /= float64(len(ratio))
	out := make([]float64, len(ratio))
	for i := range ratio {
		out[i] = 1 - (ratio[i] - mean + (1 - s))
	}
	return out, nil
}

// ParseAllocation reads "module: sparsity" lines (blank lines and # comments
// ignored). A module names a tensor or any prefix of one
// ("model.layers.3", "model.layers.3.mlp"); the longest prefix wins, and
// tensors no line names keep def. Every sparsity must be in [0, 1).
func ParseAllocation(text string, def float64) (func(string) float64, error) {
	type rule struct {
		prefix string
		s      float64
	}
	var rules []rule
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, val, ok := strings.Cut(line, ":")
		var s float64
		if _, err := fmt.Sscan(strings.TrimSpace(val), &s); !ok || err != nil || !(s >= 0 && s < 1) || strings.TrimSpace(name) == "" {
			return nil, fmt.Errorf("allocation line %d %q: want \"module: sparsity\" with 0 <= sparsity < 1", i+1, line)
		}
		rules = append(rules, rule{strings.TrimSpace(name), s})
	}
	sort.Slice(rules, func(a, b int) bool { return len(rules[a].prefix) > len(rules[b].prefix) })
	return func(tensor string) float64 {
		for _, r := range rules {
			if tensor == r.prefix || strings.HasPrefix(tensor, r.prefix+".") {
				return r.s
			}
		}
		return def
	}, nil
}
