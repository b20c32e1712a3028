package model

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	k "github.com/elsa-stream/elsa-stream/internal/kernels"
)

func randSlice(r *rand.Rand, n int, s float64) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64() * s)
	}
	return v
}

// fdCheck compares an analytic gradient with central finite differences of
// f along random directions and at random coordinates of param. f must be
// deterministic. The bound is relative to the gradient norm, tight enough
// that a wrong transpose or a missing term (an O(1) error) fails.
func fdCheck(t *testing.T, name string, param, grad []float32, f func() float64) {
	t.Helper()
	r := rand.New(rand.NewPCG(7, uint64(len(param))))
	const h = 1e-2
	var gnorm float64
	for _, g := range grad {
		gnorm += float64(g) * float64(g)
	}
	gnorm = math.Sqrt(gnorm)
	if gnorm == 0 {
		t.Fatalf("%s: zero analytic gradient; the check would be vacuous", name)
	}
	eval := func(dir []float32, s float64) float64 {
		for i := range param {
			param[i] += float32(s) * dir[i]
		}
		v := f()
		for i := range param {
			param[i] -= float32(s) * dir[i]
		}
		return v
	}
	for trial := 0; trial < 3; trial++ {
		dir := randSlice(r, len(param), 1)
		var dn float64
		for _, d := range dir {
			dn += float64(d) * float64(d)
		}
		dn = math.Sqrt(dn)
		for i := range dir {
			dir[i] /= float32(dn)
		}
		var analytic float64
		for i := range dir {
			analytic += float64(dir[i]) * float64(grad[i])
		}
		numeric := (eval(dir, h) - eval(dir, -h)) / (2 * h)
		if err := math.Abs(analytic - numeric); err > 2e-3*gnorm+1e-5 {
			t.Errorf("%s: directional derivative %.6g, finite difference %.6g (|g| %.3g)", name, analytic, numeric, gnorm)
		}
	}
	// Single coordinates catch errors confined to a few entries.
	for trial := 0; trial < 4; trial++ {
		i := r.IntN(len(param))
		dir := make([]float32, len(param))
		dir[i] = 1
		numeric := (eval(dir, h) - eval(dir, -h)) / (2 * h)
		if err := math.Abs(float64(grad[i]) - numeric); err > 2e-3*gnorm+1e-5 {
			t.Errorf("%s[%d]: analytic %.6g, finite difference %.6g", name, i, grad[i], numeric)
		}
	}
}

// weighted returns Σ w_i y_i in float64: a scalar loss whose gradient with
// respect to y is w.
func weighted(y, w []float32) float64 {
	var s float64
	for i := range y {
		s += float64(y[i]) * float64(w[i])
	}
	return s
}

func TestRMSNormGradient(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	rows, d := 3, 8
	x, g, w := randSlice(r, rows*d, 1), randSlice(r, d, 1), randSlice(r, rows*d, 1)
	y, inv := make([]float32, rows*d), make([]float32, rows)
	f := func() float64 { k.RMSNorm(y, inv, x, g, rows, d, 1e-5); return weighted(y, w) }
	f()
	dx, dg := make([]float32, rows*d), make([]float32, d)
	k.RMSNormBackward(dx, dg, w, x, g, inv, rows, d)
	fdCheck(t, "rmsnorm dx", x, dx, f)
	fdCheck(t, "rmsnorm dg", g, dg, f)
}

// TestGLUGradients: SwiGLU (LLaMA) and GeGLU (Gemma's gelu_tanh) against
// finite differences.
func TestGLUGradients(t *testing.T) {
	for i, glu := range []struct {
		name     string
		forward  func(act, gate, up []float32)
		backward func(dgate, dup, dact, gate, up []float32)
	}{{"swiglu", k.SwiGLU, k.SwiGLUBackward}, {"geglu", k.GeGLU, k.GeGLUBackward}} {
		r := rand.New(rand.NewPCG(1, uint64(2+i)))
		n := 20
		gate, up, w := randSlice(r, n, 2), randSlice(r, n, 1), randSlice(r, n, 1)
		act := make([]float32, n)
		f := func() float64 { glu.forward(act, gate, up); return weighted(act, w) }
		dg, du := make([]float32, n), make([]float32, n)
		glu.backward(dg, du, w, gate, up)
		fdCheck(t, glu.name+" dgate", gate, dg, f)
		fdCheck(t, glu.name+" dup", up, du, f)
	}
}

func TestRoPEGradient(t *testing.T) {
	c := Config{HeadDim: 8, RopeTheta: 10000}
	rope := NewRope(c, 16)
	r := rand.New(rand.NewPCG(1, 3))
	pos := []int{0, 3, 15}
	x, w := randSlice(r, 3*2*8, 1), randSlice(r, 3*2*8, 1)
	y := make([]float32, len(x))
	f := func() float64 {
		copy(y, x)
		k.RoPE(y, pos, rope.Cos, rope.Sin, 2, 8, false)
		return weighted(y, w)
	}
	dx := append([]float32(nil), w...)
	k.RoPE(dx, pos, rope.Cos, rope.Sin, 2, 8, true)
	fdCheck(t, "rope dx", x, dx, f)
}

func smallConfig(bias, tied bool) Config {
	return Config{Hidden: 16, Intermediate: 24, Layers: 2, Heads: 4, KVHeads: 2, HeadDim: 4,
		Vocab: 11, MaxPositions: 8, Eps: 1e-5, RopeTheta: 10000, QKVBias: bias, OBias: bias, TiedEmbeddings: tied}
}

func randomWeights(c Config, seed uint64) *Weights {
	r := rand.New(rand.NewPCG(seed, 5))
	w := c.NewWeights()
	fill := func(s []float32, scale float64) {
		copy(s, randSlice(r, len(s), scale))
	}
	fill(w.Head.Embed, 1)
	if !c.TiedEmbeddings {
		fill(w.Head.LMHead, 0.3)
	}
	for i := range w.Head.Norm {
		w.Head.Norm[i] = 1 + float32(r.NormFloat64()*0.1)
	}
	for _, b := range w.Blocks {
		for _, p := range c.BlockParams() {
			s := *p.Get(b)
			if p.Linear {
				fill(s, 0.5/math.Sqrt(float64(p.Shape[1])))
			} else if len(p.Shape) == 1 && p.Suffix[len(p.Suffix)-6:] == "weight" {
				for i := range s {
					s[i] = 1 + float32(r.NormFloat64()*0.1)
				}
			} else {
				fill(s, 0.1)
			}
		}
	}
	return w
}

// gemma2Config is smallConfig with every Gemma-2 op active: (1 + w) norms,
// sandwich norms, GeGLU, query_pre_attn_scalar, attention and final
// soft-capping small enough that tanh bends (2 and 3), √D embedding scale,
// and a 3-key sliding window on layer 0 (T = 5 exceeds it), global on
// layer 1; head_dim 6 ≠ 16/4.
func gemma2Config() Config {
	c := smallConfig(false, true)
	c.HeadDim, c.NormOffset, c.SandwichNorms, c.GELU = 6, 1, true, true
	c.QueryScale, c.AttnSoftcap, c.FinalSoftcap, c.EmbedScale = 1/math.Sqrt(5), 2, 3, 4
	c.SlidingWindow, c.SlidingLayers = 3, []bool{true, false}
	return c
}

// gemma3Config is gemma2Config as Gemma-3 has it: (1 + w) q/k norms, no
// soft-capping, and a RoPE base of its own (100) on the sliding layer.
func gemma3Config() Config {
	c := gemma2Config()
	c.QKNorm, c.AttnSoftcap, c.FinalSoftcap, c.LocalRopeTheta = true, 0, 0, 100
	return c
}

// qwen3Config is smallConfig with Qwen3's per-head q/k norms and a
// head_dim that is not hidden/heads (4 heads × 6 = 24 ≠ 16).
func qwen3Config() Config {
	c := smallConfig(false, true)
	c.QKNorm, c.HeadDim = true, 6
	return c
}

// TestBlockGradient checks every parameter gradient of one block and the
// input gradient, with and without biases, and with Qwen3's q/k norms.
func TestBlockGradient(t *testing.T) {
	for _, c := range []Config{smallConfig(false, true), smallConfig(true, true), qwen3Config(), gemma2Config().ForLayer(0), gemma2Config().ForLayer(1),
		gemma3Config().ForLayer(0), gemma3Config().ForLayer(1)} {
		w := randomWeights(c, 9).Blocks[0]
		rope := NewRope(c, 8)
		r := rand.New(rand.NewPCG(2, 2))
		B, T := 2, 5
		x, dyW := randSlice(r, B*T*c.Hidden, 1), randSlice(r, B*T*c.Hidden, 1)
		var ws Workspace
		y := make([]float32, len(x))
		f := func() float64 {
			copy(y, x)
			c.Forward(w, rope, y, B, T, &ws)
			return weighted(y, dyW)
		}
		g := c.NewBlock()
		dx := append([]float32(nil), dyW...)
		c.Backward(w, g, rope, x, dx, B, T, &ws)
		fdCheck(t, "block dx", x, dx, f)
		if c.QKNorm && (len(g.QNorm) != c.HeadDim || len(g.KNorm) != c.HeadDim) {
			t.Fatal("q/k norm gradients missing")
		}
		for _, p := range c.BlockParams() {
			fdCheck(t, "block "+p.Suffix, *p.Get(w), *p.Get(g), f)
		}
	}
}

// TestModelGradient checks the whole model (embedding, blocks, head,
// cross-entropy) including tied and untied heads and ignored targets.
func TestModelGradient(t *testing.T) {
	for _, c := range []Config{smallConfig(false, true), smallConfig(false, false), gemma2Config(), gemma3Config()} {
		tied := c.TiedEmbeddings
		w := randomWeights(c, 3)
		rope := NewRope(c, 8)
		B, T := 2, 6
		r := rand.New(rand.NewPCG(4, 4))
		inputs, targets := make([]int, B*T), make([]int, B*T)
		for i := range inputs {
			inputs[i], targets[i] = r.IntN(c.Vocab), r.IntN(c.Vocab)
		}
		targets[3] = -1
		f := func() float64 { s, _ := c.Loss(w, rope, inputs, targets, B, T, nil, 0); return s }
		g := c.NewWeights()
		s1, n := c.Loss(w, rope, inputs, targets, B, T, g, 1)
		if n != B*T-1 || math.Abs(s1-f()) > 1e-9*math.Abs(s1) {
			t.Fatalf("count %d, loss with grads %v vs without %v", n, s1, f())
		}
		fdCheck(t, "embed", w.Head.Embed, g.Head.Embed, f)
		fdCheck(t, "final norm", w.Head.Norm, g.Head.Norm, f)
		if !tied {
			fdCheck(t, "lm_head", w.Head.LMHead, g.Head.LMHead, f)
		}
		for l := range w.Blocks {
			for _, p := range c.BlockParams() {
				fdCheck(t, "layer "+p.Suffix, *p.Get(w.Blocks[l]), *p.Get(g.Blocks[l]), f)
			}
		}
	}
}

// TestCausal: changing a later token must not change earlier logits' loss.
func TestCausal(t *testing.T) {
	c := smallConfig(false, true)
	w := randomWeights(c, 5)
	rope := NewRope(c, 8)
	in := []int{1, 2, 3, 4, 5, 6}
	tg := []int{2, 3, -1, -1, -1, -1}
	a, _ := c.Loss(w, rope, in, tg, 1, 6, nil, 0)
	in[4] = 9
	b, _ := c.Loss(w, rope, in, tg, 1, 6, nil, 0)
	if a != b {
		t.Fatalf("future token changed the loss of earlier positions: %v vs %v", a, b)
	}
}

// TestHalvesComposeToBlock: the attention half then the MLP half give the
// block's output, and their backward passes (MLP first) give the block's
// gradients and input gradient, bit for bit.
func TestHalvesComposeToBlock(t *testing.T) {
	c := smallConfig(true, true)
	w := randomWeights(c, 11).Blocks[0]
	rope := NewRope(c, 8)
	r := rand.New(rand.NewPCG(6, 6))
	B, T := 2, 5
	x, dy := randSlice(r, B*T*c.Hidden, 1), randSlice(r, B*T*c.Hidden, 1)
	var ws Workspace

	whole := append([]float32(nil), x...)
	c.Forward(w, rope, whole, B, T, &ws)
	mid := append([]float32(nil), x...)
	c.ForwardHalf(Attention, w, rope, mid, B, T, &ws)
	out := append([]float32(nil), mid...)
	c.ForwardHalf(MLP, w, rope, out, B, T, &ws)
	for i := range out {
		if out[i] != whole[i] {
			t.Fatalf("halves forward differs at %d: %v vs %v", i, out[i], whole[i])
		}
	}

	gWhole, gHalves := c.NewBlock(), c.NewBlock()
	dWhole := append([]float32(nil), dy...)
	c.Backward(w, gWhole, rope, x, dWhole, B, T, &ws)
	dHalves := append([]float32(nil), dy...)
	c.BackwardHalf(MLP, w, gHalves, rope, mid, dHalves, B, T, &ws)
	c.BackwardHalf(Attention, w, gHalves, rope, x, dHalves, B, T, &ws)
	for i := range dHalves {
		if dHalves[i] != dWhole[i] {
			t.Fatalf("halves input gradient differs at %d", i)
		}
	}
	for _, p := range c.BlockParams() {
		a, b := *p.Get(gHalves), *p.Get(gWhole)
		for i := range a {
			if a[i] != b[i] {
				t.Fatalf("%s gradient differs at %d: %v vs %v", p.Suffix, i, a[i], b[i])
			}
		}
	}
}

// TestHeadNLLEqualsHeadLoss: the vocabulary streamed in chunks (3, and one
// that does not divide the vocabulary) with an online log-sum-exp gives
// HeadLoss's sum, soft-capped or not, with ignored targets.
func TestHeadNLLEqualsHeadLoss(t *testing.T) {
	for _, c := range []Config{smallConfig(false, false), gemma2Config()} {
		c.Vocab = 11
		w := randomWeights(c, 5)
		r := rand.New(rand.NewPCG(6, 6))
		n := 7
		x := randSlice(r, n*c.Hidden, 1)
		targets := []int{3, 0, 10, -1, 5, 5, 9}
		var ws HeadWorkspace
		want, wn := c.HeadLoss(&w.Head, x, targets, nil, nil, 0, &ws)
		for _, vc := range []int{3, 4, 11, 50} {
			rows := func(lo, hi int, dst []float32) error { copy(dst, w.Head.LMHead[lo*c.Hidden:hi*c.Hidden]); return nil }
			var ws2 HeadWorkspace
			got, gn, err := c.HeadNLL(w.Head.Norm, slices.Clone(x), targets, vc, rows, &ws2) // x is normalized in place
			if err != nil || gn != wn || math.Abs(got-want) > 1e-5*math.Abs(want) {
				t.Fatalf("vc %d: %v over %d, HeadLoss %v over %d (%v)", vc, got, gn, want, wn, err)
			}
		}
	}
}

// TestHeadLossChunkedEqualsHeadLoss: the head's loss and every gradient
// (norm, lm_head, x) with the vocabulary in chunks of 3 and 4 rows (the
// two-pass path) equal HeadLoss's within float32 noise, soft-capped or
// not, with ignored targets; with one chunk they are HeadLoss's exactly.
func TestHeadLossChunkedEqualsHeadLoss(t *testing.T) {
	for _, c := range []Config{smallConfig(false, false), gemma2Config()} {
		c.Vocab = 11
		D := c.Hidden
		w := randomWeights(c, 5)
		r := rand.New(rand.NewPCG(6, 6))
		n := 7
		x := randSlice(r, n*D, 1)
		targets := []int{3, 0, 10, -1, 5, 5, 9}
		var ws HeadWorkspace
		g := &Head{Norm: make([]float32, D), LMHead: make([]float32, c.Vocab*D)}
		dx := make([]float32, n*D)
		want, wn := c.HeadLoss(&w.Head, x, targets, g, dx, 0.25, &ws)
		for _, vc := range []int{3, 4, 11} {
			rows := func(lo, hi int, dst []float32) error { copy(dst, w.Head.LMHead[lo*D:hi*D]); return nil }
			gLM := make([]float32, c.Vocab*D)
			calls := 0
			grad := func(lo, hi int, gw []float32) error {
				calls++
				copy(gLM[lo*D:hi*D], gw)
				return nil
			}
			gNorm, gdx := make([]float32, D), make([]float32, n*D)
			var ws2 HeadWorkspace
			got, gn, err := c.HeadLossChunked(w.Head.Norm, x, targets, gNorm, gdx, 0.25, vc, rows, grad, &ws2)
			if err != nil || gn != wn || math.Abs(got-want) > 1e-5*math.Abs(want) || calls != (c.Vocab+vc-1)/vc {
				t.Fatalf("vc %d: %v over %d in %d chunks, HeadLoss %v over %d (%v)", vc, got, gn, calls, want, wn, err)
			}
			exact := vc >= c.Vocab
			for _, p := range []struct {
				name      string
				got, want []float32
			}{{"norm", gNorm, g.Norm}, {"lm_head", gLM, g.LMHead}, {"dx", gdx, dx}} {
				for i := range p.want {
					if d := math.Abs(float64(p.got[i] - p.want[i])); (exact && d != 0) || d > 1e-5*(1+math.Abs(float64(p.want[i]))) {
						t.Fatalf("vc %d: ∂%s[%d] = %v, HeadLoss %v", vc, p.name, i, p.got[i], p.want[i])
					}
				}
			}
		}
	}
}
