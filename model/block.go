package model

import (
	"math"
	"runtime"

	k "github.com/elsa-stream/elsa-stream/internal/kernels"
)

// Block holds the parameters of one decoder layer (or their gradients).
// Bias slices are nil when the architecture has none.
type Block struct {
	AttnNorm []float32 // [D]
	Wq       []float32 // [H·hd × D]
	Wk, Wv   []float32 // [KV·hd × D]
	Bq       []float32 // [H·hd]
	Bk, Bv   []float32 // [KV·hd]
	Wo       []float32 // [D × H·hd]
	Bo       []float32 // [D]
	// QNorm and KNorm are Qwen3's per-head RMSNorm weights over head_dim,
	// applied to q and k before RoPE (nil without QKNorm).
	QNorm, KNorm []float32 // [hd]
	MLPNorm      []float32 // [D] (Gemma: pre_feedforward_layernorm)
	Wgate, Wup   []float32 // [F × D]
	Wdown        []float32 // [D × F]
	// PostAttnNorm and PostFFNorm are Gemma's sandwich norms on the
	// attention and MLP outputs (nil without SandwichNorms).
	PostAttnNorm, PostFFNorm []float32 // [D]
}

// Param names one block parameter with its HF tensor suffix and shape.
type Param struct {
	Suffix string // e.g. "self_attn.q_proj.weight"
	Shape  []int
	// Linear is true for the matrices that pruning sparsifies.
	Linear bool
	Get    func(*Block) *[]float32
	// Half is the sub-layer the parameter belongs to.
	Half Half
}

// Numel is the parameter's number of values.
func (p Param) Numel() int {
	n := 1
	for _, d := range p.Shape {
		n *= d
	}
	return n
}

// BlockParams lists the parameters of one block in HF naming order.
func (c Config) BlockParams() []Param {
	D, F, Q, KV := c.Hidden, c.Intermediate, c.QDim(), c.KVDim()
	ps := []Param{
		{"input_layernorm.weight", []int{D}, false, func(b *Block) *[]float32 { return &b.AttnNorm }, Attention},
		{"self_attn.q_proj.weight", []int{Q, D}, true, func(b *Block) *[]float32 { return &b.Wq }, Attention},
		{"self_attn.k_proj.weight", []int{KV, D}, true, func(b *Block) *[]float32 { return &b.Wk }, Attention},
		{"self_attn.v_proj.weight", []int{KV, D}, true, func(b *Block) *[]float32 { return &b.Wv }, Attention},
		{"self_attn.o_proj.weight", []int{D, Q}, true, func(b *Block) *[]float32 { return &b.Wo }, Attention},
		{c.mlpNormName(), []int{D}, false, func(b *Block) *[]float32 { return &b.MLPNorm }, MLP},
		{"mlp.gate_proj.weight", []int{F, D}, true, func(b *Block) *[]float32 { return &b.Wgate }, MLP},
		{"mlp.up_proj.weight", []int{F, D}, true, func(b *Block) *[]float32 { return &b.Wup }, MLP},
		{"mlp.down_proj.weight", []int{D, F}, true, func(b *Block) *[]float32 { return &b.Wdown }, MLP},
	}
	if c.QKVBias {
		ps = append(ps,
			Param{"self_attn.q_proj.bias", []int{Q}, false, func(b *Block) *[]float32 { return &b.Bq }, Attention},
			Param{"self_attn.k_proj.bias", []int{KV}, false, func(b *Block) *[]float32 { return &b.Bk }, Attention},
			Param{"self_attn.v_proj.bias", []int{KV}, false, func(b *Block) *[]float32 { return &b.Bv }, Attention})
	}
	if c.OBias {
		ps = append(ps, Param{"self_attn.o_proj.bias", []int{D}, false, func(b *Block) *[]float32 { return &b.Bo }, Attention})
	}
	if c.QKNorm {
		ps = append(ps,
			Param{"self_attn.q_norm.weight", []int{c.HeadDim}, false, func(b *Block) *[]float32 { return &b.QNorm }, Attention},
			Param{"self_attn.k_norm.weight", []int{c.HeadDim}, false, func(b *Block) *[]float32 { return &b.KNorm }, Attention})
	}
	if c.SandwichNorms {
		ps = append(ps,
			Param{"post_attention_layernorm.weight", []int{D}, false, func(b *Block) *[]float32 { return &b.PostAttnNorm }, Attention},
			Param{"post_feedforward_layernorm.weight", []int{D}, false, func(b *Block) *[]float32 { return &b.PostFFNorm }, MLP})
	}
	return ps
}

// mlpNormName is the HF name of the MLP's input norm: LLaMA's
// post_attention_layernorm, Gemma's pre_feedforward_layernorm.
func (c Config) mlpNormName() string {
	if c.SandwichNorms {
		return "pre_feedforward_layernorm.weight"
	}
	return "post_attention_layernorm.weight"
}

// normWeight is an RMSNorm's effective weight: w, or NormOffset + w
// (Gemma's (1 + w)) in dst. The gradient with respect to either is the
// same, so backward passes accumulate into the stored weight's gradient.
func (c Config) normWeight(dst *[]float32, w []float32) []float32 {
	if c.NormOffset == 0 || w == nil {
		return w
	}
	e := grow(dst, len(w))
	for i, v := range w {
		e[i] = v + c.NormOffset
	}
	return e
}

// set makes *field the effective weight of w (buffer i) and returns it.
func (nw *normWeights) set(field *[]float32, i int, c Config, w []float32) []float32 {
	*field = c.normWeight(&nw.buf[i], w)
	return *field
}

// normWeights are a block's effective norm weights for the pass under
// way (the weights themselves, or NormOffset + w in buf).
type normWeights struct {
	attn, mlp, q, k, postAttn, postFF []float32
	buf                               [6][]float32
}

// NewBlock allocates a zeroed block (for gradients or tests).
func (c Config) NewBlock() *Block {
	b := &Block{}
	for _, p := range c.BlockParams() {
		n := 1
		for _, d := range p.Shape {
			n *= d
		}
		*p.Get(b) = make([]float32, n)
	}
	return b
}

// BlockParamCount is the number of parameters of one block.
func (c Config) BlockParamCount() int {
	n := 0
	for _, p := range c.BlockParams() {
		m := 1
		for _, d := range p.Shape {
			m *= d
		}
		n += m
	}
	return n
}

// acts are the intermediates of one block forward over n = B·T tokens.
type acts struct {
	xn1, r1    []float32 // [n×D], [n]
	q          []float32 // [n×Q] after RoPE
	kk, v      []float32 // [n×KV] (k after RoPE)
	qraw, kraw []float32 // QKNorm: q [n×Q] and k [n×KV] before their norms
	rq, rk     []float32 // QKNorm: their inverse RMS per head [n·H], [n·KV]
	ao, mo     []float32 // SandwichNorms: attention and MLP outputs before their norms [n×D]
	aon, mon   []float32 // SandwichNorms: the normalized outputs [n×D]
	rpa, rpf   []float32 // SandwichNorms: their inverse RMS [n]
	att        []float32 // [n×Q] attention output before o_proj
	x1         []float32 // [n×D] residual after attention
	xn2, r2    []float32 // [n×D], [n]
	gate, up   []float32 // [n×F]
	act        []float32 // [n×F]
	scratchOut []float32 // [n×D]
}

// Workspace holds reusable buffers for block passes; the zero value is ready.
type Workspace struct {
	// Compute is the precision of the block's GEMMs (the linear layers and
	// attention's products); norms, softmax, the residual stream and every
	// other reduction stay float32 whatever it is.
	Compute k.Compute

	a    acts
	grad acts // gradient buffers of the same shapes
	pos  []int
	nw   normWeights // effective norm weights (NormOffset)
}

func grow(s *[]float32, n int) []float32 {
	if cap(*s) < n {
		*s = make([]float32, n)
	}
	*s = (*s)[:n]
	return *s
}

func (a *acts) size(c Config, B, T int) { a.sizeFor(c, B, T, Whole) }

// sizeFor grows the buffers a pass over half h needs (all for Whole).
func (a *acts) sizeFor(c Config, B, T int, h Half) {
	n := B * T
	D, F, Q, KV := c.Hidden, c.Intermediate, c.QDim(), c.KVDim()
	grow(&a.x1, n*D)
	grow(&a.scratchOut, n*D)
	if h != MLP {
		grow(&a.xn1, n*D)
		grow(&a.r1, n)
		grow(&a.q, n*Q)
		grow(&a.kk, n*KV)
		grow(&a.v, n*KV)
		grow(&a.att, n*Q)
		if c.QKNorm {
			grow(&a.qraw, n*Q)
			grow(&a.kraw, n*KV)
			grow(&a.rq, n*c.Heads)
			grow(&a.rk, n*c.KVHeads)
		}
		if c.SandwichNorms {
			grow(&a.ao, n*D)
			grow(&a.aon, n*D)
			grow(&a.rpa, n)
		}
	}
	if h != Attention && c.SandwichNorms {
		grow(&a.mo, n*D)
		grow(&a.mon, n*D)
		grow(&a.rpf, n)
	}
	if h != Attention {
		grow(&a.xn2, n*D)
		grow(&a.r2, n)
		grow(&a.gate, n*F)
		grow(&a.up, n*F)
		grow(&a.act, n*F)
	}
}

// BlockBytes is the working memory in bytes a block forward (or backward,
// which needs a second set for gradients) over B sequences of T tokens
// takes, excluding weights and the input/output activations themselves:
// UnitBytes(Whole, ...).
func (c Config) BlockBytes(B, T int, backward bool) int64 { return c.UnitBytes(Whole, B, T, backward) }

// UnitBytes is the working memory of a pass over half h of a block:
//
//	attention  n·(2D + 2Q + 2KV + 1)   + w·(4·T·hd + T²)  (forward)
//	MLP        n·(3D + 3F + 1)
//	whole      n·(4D + 2Q + 2KV + 3F + 2) + w·(4·T·hd + T²)
//
// floats, with n = B·T and w = GOMAXPROCS attention workers; backward
// doubles the activation term and its attention workers hold 7·T·hd + 2·T².
// The planner (package stream) uses it.
func (c Config) UnitBytes(h Half, B, T int, backward bool) int64 {
	n := B * T
	t := int64(T)
	D, F, Q, KV := int64(c.Hidden), int64(c.Intermediate), int64(c.QDim()), int64(c.KVDim())
	w := int64(runtime.GOMAXPROCS(0))
	var acts, workers int64
	if h != MLP {
		acts += int64(n) * (2*D + 2*Q + 2*KV + 1)
		if c.QKNorm { // q and k before their norms, and the inverse RMS per head
			acts += int64(n) * (Q + KV + int64(c.Heads+c.KVHeads))
		}
		if c.SandwichNorms {
			acts += int64(n) * (2*D + 1)
		}
		workers = w * (4*t*int64(c.HeadDim) + t*t)
		if backward {
			workers = w * (7*t*int64(c.HeadDim) + 2*t*t)
		}
	}
	if h != Attention {
		acts += int64(n) * (2*D + 3*F + 1)
		if c.SandwichNorms {
			acts += int64(n) * (2*D + 1)
		}
	}
	if h != Whole {
		acts += int64(n) * D // the half's own input/output copy
	}
	if c.AttnSoftcap != 0 && h != MLP {
		workers += w * t * t // the scores' tanh
	}
	if backward {
		acts *= 2
	}
	return 4 * (acts + workers)
}

func (ws *Workspace) positions(B, T int) []int {
	if cap(ws.pos) < B*T {
		ws.pos = make([]int, B*T)
	}
	ws.pos = ws.pos[:B*T]
	for b := 0; b < B; b++ {
		for t := 0; t < T; t++ {
			ws.pos[b*T+t] = t
		}
	}
	return ws.pos
}

// Forward runs one block in place on x [B·T × D]: B sequences of T tokens,
// positions 0..T−1 each.
//
//	h  = x + o_proj(Attn(RoPE(q), RoPE(k), v)),  q,k,v = proj(RMSNorm(x)·g1)
//	y  = h + down(silu(gate(RMSNorm(h)·g2)) ⊙ up(RMSNorm(h)·g2))
func (c Config) Forward(w *Block, rope *Rope, x []float32, B, T int, ws *Workspace) {
	c.forward(w, rope, x, B, T, ws)
	copy(x, ws.a.scratchOut)
}

// forward computes the block output into ws.a.scratchOut, keeping every
// intermediate in ws.a for the backward pass.
func (c Config) forward(w *Block, rope *Rope, x []float32, B, T int, ws *Workspace) {
	c.forwardAttn(w, rope, x, B, T, ws)
	c.forwardMLP(w, B, T, ws)
}

// forwardAttn computes the attention sub-layer: ws.a.x1 = x + o_proj(...).
func (c Config) forwardAttn(w *Block, rope *Rope, x []float32, B, T int, ws *Workspace) {
	if len(x) != B*T*c.Hidden || T > rope.N {
		panic("model: Forward: x is not [B·T × D] or T exceeds the RoPE table")
	}
	rope = c.rope(rope)
	a, mm := &ws.a, ws.Compute
	a.sizeFor(c, B, T, Attention)
	n := B * T
	D, Q, KV := c.Hidden, c.QDim(), c.KVDim()
	pos := ws.positions(B, T)

	nw := &ws.nw
	k.RMSNorm(a.xn1, a.r1, x, nw.set(&nw.attn, 0, c, w.AttnNorm), n, D, c.Eps)
	mm.NT(a.q, a.xn1, w.Wq, n, Q, D, false)
	mm.NT(a.kk, a.xn1, w.Wk, n, KV, D, false)
	mm.NT(a.v, a.xn1, w.Wv, n, KV, D, false)
	if c.QKVBias {
		addBias(a.q, w.Bq)
		addBias(a.kk, w.Bk)
		addBias(a.v, w.Bv)
	}
	if c.QKNorm { // per head, over head_dim, before RoPE (Qwen3)
		copy(a.qraw, a.q)
		copy(a.kraw, a.kk)
		k.RMSNorm(a.q, a.rq, a.qraw, nw.set(&nw.q, 1, c, w.QNorm), n*c.Heads, c.HeadDim, c.Eps)
		k.RMSNorm(a.kk, a.rk, a.kraw, nw.set(&nw.k, 2, c, w.KNorm), n*c.KVHeads, c.HeadDim, c.Eps)
	}
	k.RoPE(a.q, pos, rope.Cos, rope.Sin, c.Heads, c.HeadDim, false)
	k.RoPE(a.kk, pos, rope.Cos, rope.Sin, c.KVHeads, c.HeadDim, false)
	c.attention(mm, a, B, T)
	if c.SandwichNorms { // x1 = x + RMSNorm(o_proj(att))·(1 + w)
		mm.NT(a.ao, a.att, w.Wo, n, D, Q, false)
		if c.OBias {
			addBias(a.ao, w.Bo)
		}
		k.RMSNorm(a.aon, a.rpa, a.ao, nw.set(&nw.postAttn, 3, c, w.PostAttnNorm), n, D, c.Eps)
		for i, v := range x {
			a.x1[i] = v + a.aon[i]
		}
		return
	}
	copy(a.x1, x)
	mm.NT(a.x1, a.att, w.Wo, n, D, Q, true)
	if c.OBias {
		addBias(a.x1, w.Bo)
	}
}

// forwardMLP computes the MLP sub-layer on ws.a.x1:
// ws.a.scratchOut = x1 + down(silu(gate(RMSNorm(x1)·g2)) ⊙ up(RMSNorm(x1)·g2)).
func (c Config) forwardMLP(w *Block, B, T int, ws *Workspace) {
	a, mm := &ws.a, ws.Compute
	a.sizeFor(c, B, T, MLP)
	n := B * T
	D, F := c.Hidden, c.Intermediate
	nw := &ws.nw
	k.RMSNorm(a.xn2, a.r2, a.x1, nw.set(&nw.mlp, 4, c, w.MLPNorm), n, D, c.Eps)
	mm.NT(a.gate, a.xn2, w.Wgate, n, F, D, false)
	mm.NT(a.up, a.xn2, w.Wup, n, F, D, false)
	if c.GELU {
		k.GeGLU(a.act, a.gate, a.up)
	} else {
		k.SwiGLU(a.act, a.gate, a.up)
	}
	if c.SandwichNorms { // y = x1 + RMSNorm(down(act))·(1 + w)
		mm.NT(a.mo, a.act, w.Wdown, n, D, F, false)
		k.RMSNorm(a.mon, a.rpf, a.mo, nw.set(&nw.postFF, 5, c, w.PostFFNorm), n, D, c.Eps)
		for i, v := range a.x1 {
			a.scratchOut[i] = v + a.mon[i]
		}
		return
	}
	copy(a.scratchOut, a.x1)
	mm.NT(a.scratchOut, a.act, w.Wdown, n, D, F, true)
}

// Half names a sub-layer of a block, the unit a sweep loads when a whole
// layer does not fit: the attention half (input norm, q, k, v, o and their
// biases) or the MLP half (post-attention norm, gate, up, down).
type Half int

// The granularities of a block pass.
const (
	Whole Half = iota
	Attention
	MLP
)

// String names the half.
func (h Half) String() string { return [...]string{"layer", "attention", "mlp"}[h] }

// ForwardHalf runs one half of a block in place on x: the attention
// sub-layer x + o_proj(Attn(...)) or the MLP sub-layer x + down(...). w needs
// only that half's parameters. Whole is Forward.
func (c Config) ForwardHalf(h Half, w *Block, rope *Rope, x []float32, B, T int, ws *Workspace) {
	switch h {
	case Whole:
		c.Forward(w, rope, x, B, T, ws)
	case Attention:
		c.forwardAttn(w, rope, x, B, T, ws)
		copy(x, ws.a.x1)
	case MLP:
		ws.a.sizeFor(c, B, T, MLP)
		copy(ws.a.x1, x)
		c.forwardMLP(w, B, T, ws)
		copy(x, ws.a.scratchOut)
	}
}

// BackwardHalf is Backward for one half: it recomputes that half from its
// input x, adds its parameter gradients into g and turns dy into ∂L/∂x.
func (c Config) BackwardHalf(h Half, w, g *Block, rope *Rope, x, dy []float32, B, T int, ws *Workspace) {
	switch h {
	case Whole:
		c.Backward(w, g, rope, x, dy, B, T, ws)
	case Attention:
		c.forwardAttn(w, rope, x, B, T, ws)
		ws.grad.sizeFor(c, B, T, Attention)
		copy(ws.grad.x1, dy)
		c.backwardAttn(w, g, rope, x, dy, B, T, ws)
	case MLP:
		ws.a.sizeFor(c, B, T, MLP)
		copy(ws.a.x1, x)
		c.forwardMLP(w, B, T, ws)
		ws.grad.sizeFor(c, B, T, MLP)
		c.backwardMLP(w, g, dy, B, T, ws)
		copy(dy, ws.grad.x1)
	}
}

func addBias(y, b []float32) {
	d := len(b)
	for t := 0; t < len(y); t += d {
		row := y[t : t+d]
		for i := range row {
			row[i] += b[i]
		}
	}
}

// attention computes, per sequence b and head h (kv head h/(H/KV)):
// P = softmax(q·kᵀ/√hd + causal mask), att = P·v. Heads run in parallel,
// each with serial GEMMs on contiguous copies of its q, k and v.
func (c Config) attention(mm k.Compute, a *acts, B, T int) {
	H, hd := c.Heads, c.HeadDim
	group := H / c.KVHeads
	scale := c.scale()
	k.ParallelFor(B*H, 1, func(lo, hi int) {
		qh, kh, vh, oh := make([]float32, T*hd), make([]float32, T*hd), make([]float32, T*hd), make([]float32, T*hd)
		P := make([]float32, T*T)
		var th []float32
		if c.AttnSoftcap != 0 {
			th = make([]float32, T*T)
		}
		for bh := lo; bh < hi; bh++ {
			b, h := bh/H, bh%H
			kvh := h / group
			c.gatherHead(qh, a.q, b, h, T, c.QDim())
			c.gatherHead(kh, a.kk, b, kvh, T, c.KVDim())
			c.gatherHead(vh, a.v, b, kvh, T, c.KVDim())
			c.attnProbs(mm, P, th, qh, kh, T, scale)
			mm.NNSerial(oh, P, vh, T, hd, T, false)
			c.scatterHead(a.att, oh, b, h, T, c.QDim(), false)
		}
	})
}

// attnProbs sets P [T×T] to one head's attention probabilities: scores
// s_ij = scale·q_i·k_j, soft-capped to cap·tanh(s_ij/cap) with AttnSoftcap
// (th keeps tanh(s_ij/cap) for the backward), a softmax over the keys query
// i sees - j ≤ i, and i − W < j in a sliding window W - and 0 elsewhere.
// The probabilities are never stored across heads: the backward pass
// recomputes them (one T×T×hd GEMM), so a block needs T² floats per worker
// instead of B·H·T².
func (c Config) attnProbs(mm k.Compute, P, th, qh, kh []float32, T int, scale float32) {
	mm.NTSerial(P, qh, kh, T, T, c.HeadDim, false)
	cap := c.AttnSoftcap
	for i := 0; i < T; i++ {
		lo := c.windowStart(i)
		row := P[i*T : (i+1)*T]
		if cap == 0 {
			k.SoftmaxScaled(row[lo:i+1], scale)
		} else {
			for j := lo; j <= i; j++ {
				t := float32(math.Tanh(float64(row[j] * scale / cap)))
				th[i*T+j] = t
				row[j] = cap * t
			}
			k.SoftmaxScaled(row[lo:i+1], 1)
		}
		clear(row[:lo])
		clear(row[i+1:])
	}
}

// windowStart is the first key query i sees: 0, or i − W + 1 in a
// sliding window of W keys.
func (c Config) windowStart(i int) int {
	if c.SlidingWindow > 0 {
		return max(0, i-c.SlidingWindow+1)
	}
	return 0
}

// gatherHead copies head h of sequence b from x [B·T × width] into dst [T × hd].
func (c Config) gatherHead(dst, x []float32, b, h, T, width int) {
	hd := c.HeadDim
	for i := 0; i < T; i++ {
		copy(dst[i*hd:(i+1)*hd], x[(b*T+i)*width+h*hd:])
	}
}

// scatterHead writes (or adds) src [T × hd] into head h of sequence b of x.
func (c Config) scatterHead(x, src []float32, b, h, T, width int, add bool) {
	hd := c.HeadDim
	for i := 0; i < T; i++ {
		dst := x[(b*T+i)*width+h*hd : (b*T+i)*width+(h+1)*hd]
		if !add {
			copy(dst, src[i*hd:(i+1)*hd])
			continue
		}
		for e, v := range src[i*hd : (i+1)*hd] {
			dst[e] += v
		}
	}
}

// Backward recomputes the block from its input x [B·T × D], then, given
// dy = ∂L/∂y, adds the parameter gradients into g and overwrites dy with
// ∂L/∂x.
func (c Config) Backward(w, g *Block, rope *Rope, x, dy []float32, B, T int, ws *Workspace) {
	c.forward(w, rope, x, B, T, ws)
	ws.grad.size(c, B, T)
	c.backwardMLP(w, g, dy, B, T, ws)
	c.backwardAttn(w, g, rope, x, dy, B, T, ws)
}

// backwardMLP: y = x1 + act·Wdownᵀ. From dy it adds the MLP gradients into
// g and leaves ∂L/∂x1 in ws.grad.x1.
func (c Config) backwardMLP(w, g *Block, dy []float32, B, T int, ws *Workspace) {
	a, d, mm := &ws.a, &ws.grad, ws.Compute
	n := B * T
	D, F := c.Hidden, c.Intermediate
	dmo := dy // ∂L/∂(down's output)
	if c.SandwichNorms {
		clear(d.mo)
		k.RMSNormBackward(d.mo, g.PostFFNorm, dy, a.mo, ws.nw.postFF, a.rpf, n, D)
		dmo = d.mo
	}
	mm.TN(g.Wdown, dmo, a.act, D, F, n, true)
	mm.NN(d.act, dmo, w.Wdown, n, F, D, false)
	if c.GELU {
		k.GeGLUBackward(d.gate, d.up, d.act, a.gate, a.up)
	} else {
		k.SwiGLUBackward(d.gate, d.up, d.act, a.gate, a.up)
	}
	mm.TN(g.Wgate, d.gate, a.xn2, F, D, n, true)
	mm.TN(g.Wup, d.up, a.xn2, F, D, n, true)
	mm.NN(d.xn2, d.gate, w.Wgate, n, D, F, false)
	mm.NN(d.xn2, d.up, w.Wup, n, D, F, true)
	copy(d.x1, dy)
	k.RMSNormBackward(d.x1, g.MLPNorm, d.xn2, a.x1, ws.nw.mlp, a.r2, n, D)
}

// backwardAttn: x1 = x + att·Woᵀ (+ bo). From ∂L/∂x1 in ws.grad.x1 it adds
// the attention gradients into g and writes ∂L/∂x into dx.
func (c Config) backwardAttn(w, g *Block, rope *Rope, x, dx []float32, B, T int, ws *Workspace) {
	a, d, mm := &ws.a, &ws.grad, ws.Compute
	n := B * T
	D, Q, KV := c.Hidden, c.QDim(), c.KVDim()
	pos := ws.pos
	rope = c.rope(rope)
	dx1 := d.x1
	dao := dx1 // ∂L/∂(o_proj's output)
	if c.SandwichNorms {
		clear(d.ao)
		k.RMSNormBackward(d.ao, g.PostAttnNorm, dx1, a.ao, ws.nw.postAttn, a.rpa, n, D)
		dao = d.ao
	}
	mm.TN(g.Wo, dao, a.att, D, Q, n, true)
	if c.OBias {
		sumRows(g.Bo, dao)
	}
	mm.NN(d.att, dao, w.Wo, n, Q, D, false)
	c.attentionBackward(mm, a, d, B, T)
	k.RoPE(d.q, pos, rope.Cos, rope.Sin, c.Heads, c.HeadDim, true)
	k.RoPE(d.kk, pos, rope.Cos, rope.Sin, c.KVHeads, c.HeadDim, true)
	if c.QKNorm { // through the per-head norms: d.q, d.kk become ∂L/∂(q, k before the norms)
		clear(d.qraw)
		clear(d.kraw)
		k.RMSNormBackward(d.qraw, g.QNorm, d.q, a.qraw, ws.nw.q, a.rq, n*c.Heads, c.HeadDim)
		k.RMSNormBackward(d.kraw, g.KNorm, d.kk, a.kraw, ws.nw.k, a.rk, n*c.KVHeads, c.HeadDim)
		copy(d.q, d.qraw)
		copy(d.kk, d.kraw)
	}
	if c.QKVBias {
		sumRows(g.Bq, d.q)
		sumRows(g.Bk, d.kk)
		sumRows(g.Bv, d.v)
	}
	mm.TN(g.Wq, d.q, a.xn1, Q, D, n, true)
	mm.TN(g.Wk, d.kk, a.xn1, KV, D, n, true)
	mm.TN(g.Wv, d.v, a.xn1, KV, D, n, true)
	mm.NN(d.xn1, d.q, w.Wq, n, D, Q, false)
	mm.NN(d.xn1, d.kk, w.Wk, n, D, KV, true)
	mm.NN(d.xn1, d.v, w.Wv, n, D, KV, true)
	copy(dx, dx1)
	k.RMSNormBackward(dx, g.AttnNorm, d.xn1, x, ws.nw.attn, a.r1, n, D)
}

// sumRows adds Σ_t y[t,:] to g.
func sumRows(g, y []float32) {
	d := len(g)
	for t := 0; t < len(y); t += d {
		for i, v := range y[t : t+d] {
			g[i] += v
		}
	}
}

// attentionBackward: with S = q·kᵀ·s, P = softmax(S), O = P·v:
//
//	dP = dO·vᵀ, dv = Pᵀ·dO, dS = P ⊙ (dP − rowsum(dP ⊙ P)),
//	dq = dS·k·s, dk = dSᵀ·q·s
//
// summed over the query heads that share a kv head. Parallel over
// (sequence, kv head) so that no two goroutines write the same dk/dv rows.
func (c Config) attentionBackward(mm k.Compute, a, d *acts, B, T int) {
	H, hd, KV := c.Heads, c.HeadDim, c.KVHeads
	group := H / KV
	scale, cap := c.scale(), c.AttnSoftcap
	k.ParallelFor(B*KV, 1, func(lo, hi int) {
		buf := func() []float32 { return make([]float32, T*hd) }
		qh, kh, vh, dOh, dqh, dkh, dvh := buf(), buf(), buf(), buf(), buf(), buf(), buf()
		P, dP := make([]float32, T*T), make([]float32, T*T)
		var th []float32
		if cap != 0 {
			th = make([]float32, T*T)
		}
		for bk := lo; bk < hi; bk++ {
			b, kvh := bk/KV, bk%KV
			c.gatherHead(kh, a.kk, b, kvh, T, c.KVDim())
			c.gatherHead(vh, a.v, b, kvh, T, c.KVDim())
			clear(dkh)
			clear(dvh)
			for h := kvh * group; h < (kvh+1)*group; h++ {
				c.gatherHead(qh, a.q, b, h, T, c.QDim())
				c.gatherHead(dOh, d.att, b, h, T, c.QDim())
				c.attnProbs(mm, P, th, qh, kh, T, scale)
				mm.NTSerial(dP, dOh, vh, T, T, hd, false)
				mm.TNSerial(dvh, P, dOh, T, hd, T, true)
				for i := 0; i < T; i++ {
					w0 := c.windowStart(i)
					p, dp := P[i*T+w0:i*T+i+1], dP[i*T+w0:(i+1)*T]
					var dot float32
					for j, pj := range p {
						dot += pj * dp[j]
					}
					if cap == 0 {
						for j, pj := range p {
							dp[j] = pj * (dp[j] - dot) * scale
						}
					} else { // through cap·tanh(s/cap): × (1 − tanh²)
						t := th[i*T+w0:]
						for j, pj := range p {
							dp[j] = pj * (dp[j] - dot) * (1 - t[j]*t[j]) * scale
						}
					}
					clear(dP[i*T : i*T+w0])
					clear(dp[len(p):])
				}
				mm.NNSerial(dqh, dP, kh, T, hd, T, false)
				c.scatterHead(d.q, dqh, b, h, T, c.QDim(), false)
				mm.TNSerial(dkh, dP, qh, T, hd, T, true)
			}
			c.scatterHead(d.kk, dkh, b, kvh, T, c.KVDim(), false)
			c.scatterHead(d.v, dvh, b, kvh, T, c.KVDim(), false)
		}
	})
}

// LinearInputs are the inputs of a block's linear layers from the last
// Forward over n tokens (valid until the next pass): q, k and v read
// AttnIn [n×D], o reads AttnOut [n×Q], gate and up read MLPIn [n×D], down
// reads MLPAct [n×F]. Pruning methods (Wanda, SparseGPT) collect their
// calibration statistics from them.
type LinearInputs struct {
	AttnIn, AttnOut, MLPIn, MLPAct []float32
}

// Inputs returns the linear-layer inputs of the last forward pass.
func (ws *Workspace) Inputs() LinearInputs {
	a := &ws.a
	return LinearInputs{AttnIn: a.xn1, AttnOut: a.att, MLPIn: a.xn2, MLPAct: a.act}
}

// InputOf names which LinearInputs field feeds the linear parameter with
// the given HF suffix ("self_attn.q_proj.weight" → AttnIn).
func InputOf(suffix string) func(LinearInputs) []float32 {
	switch suffix {
	case "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight":
		return func(l LinearInputs) []float32 { return l.AttnIn }
	case "self_attn.o_proj.weight":
		return func(l LinearInputs) []float32 { return l.AttnOut }
	case "mlp.gate_proj.weight", "mlp.up_proj.weight":
		return func(l LinearInputs) []float32 { return l.MLPIn }
	case "mlp.down_proj.weight":
		return func(l LinearInputs) []float32 { return l.MLPAct }
	}
	return nil
}

// keptFields are the activations a pass over half h leaves in a that its
// backward reads: what sizeFor grows for h, but the output scratch.
func (a *acts) keptFields(c Config, h Half) []*[]float32 {
	var f []*[]float32
	if h != MLP {
		f = append(f, &a.xn1, &a.r1, &a.q, &a.kk, &a.v, &a.att)
		if c.QKNorm {
			f = append(f, &a.qraw, &a.kraw, &a.rq, &a.rk)
		}
		if c.SandwichNorms {
			f = append(f, &a.ao, &a.aon, &a.rpa)
		}
	}
	f = append(f, &a.x1)
	if h != Attention {
		f = append(f, &a.xn2, &a.r2, &a.gate, &a.up, &a.act)
		if c.SandwichNorms {
			f = append(f, &a.mo, &a.mon, &a.rpf)
		}
	}
	return f
}

// KeptFloats is how many floats KeepActivations stores for a pass over
// half h of B windows of T tokens.
func (c Config) KeptFloats(h Half, B, T int) int {
	var a acts
	a.sizeFor(c, B, T, h)
	n := 0
	for _, f := range a.keptFields(c, h) {
		n += len(*f)
	}
	return n
}

// KeepActivations copies the activations the last ForwardHalf(h, ...) left
// in ws into dst (KeptFloats long), so that BackwardHalfKept can skip the
// recomputation: a quarter of a training step's FLOPs, for memory.
func (c Config) KeepActivations(h Half, ws *Workspace, dst []float32) {
	off := 0
	for _, f := range ws.a.keptFields(c, h) {
		off += copy(dst[off:], *f)
	}
}

// BackwardHalfKept is BackwardHalf from the activations KeepActivations
// kept of the same forward (same weights, same input): the same gradients,
// bit for bit, without recomputing the forward.
func (c Config) BackwardHalfKept(h Half, w, g *Block, rope *Rope, x, dy, kept []float32, B, T int, ws *Workspace) {
	if len(x) != B*T*c.Hidden || T > rope.N {
		panic("model: BackwardHalfKept: x is not [B·T × D] or T exceeds the RoPE table")
	}
	ws.a.sizeFor(c, B, T, h)
	off := 0
	for _, f := range ws.a.keptFields(c, h) {
		off += copy(*f, kept[off:])
	}
	ws.nw.setAll(c, w)
	ws.positions(B, T) // the RoPE positions the attention backward rotates by
	switch h {
	case Whole:
		ws.grad.size(c, B, T)
		c.backwardMLP(w, g, dy, B, T, ws)
		c.backwardAttn(w, g, rope, x, dy, B, T, ws)
	case Attention:
		ws.grad.sizeFor(c, B, T, Attention)
		copy(ws.grad.x1, dy)
		c.backwardAttn(w, g, rope, x, dy, B, T, ws)
	case MLP:
		ws.grad.sizeFor(c, B, T, MLP)
		c.backwardMLP(w, g, dy, B, T, ws)
		copy(dy, ws.grad.x1)
	}
}

// setAll sets every effective norm weight of w, as the forward passes do.
func (nw *normWeights) setAll(c Config, w *Block) {
	nw.set(&nw.attn, 0, c, w.AttnNorm)
	nw.set(&nw.q, 1, c, w.QNorm)
	nw.set(&nw.k, 2, c, w.KNorm)
	nw.set(&nw.postAttn, 3, c, w.PostAttnNorm)
	nw.set(&nw.mlp, 4, c, w.MLPNorm)
	nw.set(&nw.postFF, 5, c, w.PostFFNorm)
}
