// Package model is the LLaMA-family decoder as pure functions over float32
// buffers: one block = one decoder layer (RMSNorm, RoPE attention with GQA
// and optional q/k/v biases, SwiGLU MLP), plus the embedding and the head
// (final RMSNorm, lm_head, cross-entropy). Backward passes recompute the
// block from its input, so a sweep only keeps block-boundary activations.
//
// Shapes are written as comments on flat row-major slices: a linear weight
// W [out×in] maps x [n×in] to y = x·Wᵀ [n×out], as nn.Linear does.
package model

import (
	"fmt"
	"math"
)

// Config holds the hyper-parameters of a decoder.
type Config struct {
	Hidden       int // D
	Intermediate int // F
	Layers       int
	Heads        int // H
	KVHeads      int // KV
	HeadDim      int // hd
	Vocab        int // V
	MaxPositions int
	Eps          float32
	RopeTheta    float64
	// Llama-3 rope scaling (Factor 0: none). Linear scaling sets only Factor
	// with LowFreq = HighFreq = 0.
	RopeFactor, RopeLowFreq, RopeHighFreq float64
	RopeOrigMax                           int
	QKVBias, OBias                        bool
	// QKNorm: RMSNorm over head_dim of every q and k head before RoPE,
	// with weights q_norm, k_norm (Qwen3).
	QKNorm         bool
	TiedEmbeddings bool
	// SlidingWindow is the attention window of the layers SlidingLayers
	// marks (all layers when it is nil; 0: global attention everywhere):
	// query i sees keys j with i − W < j ≤ i.
	SlidingWindow int
	SlidingLayers []bool

	// Gemma-2 (docs/design.md, Other architectures):
	// NormOffset 1 makes every RMSNorm x·rsqrt(mean x² + ε)·(1 + w).
	NormOffset float32
	// SandwichNorms adds a norm on the attention output before its
	// residual (post_attention_layernorm) and one on the MLP output
	// (post_feedforward_layernorm); the MLP's input norm is then
	// pre_feedforward_layernorm.
	SandwichNorms bool
	// GELU: the MLP is down(gelu_tanh(gate(x)) ⊙ up(x)) instead of SwiGLU.
	GELU bool
	// QueryScale scales attention scores (0: head_dim^−½; Gemma-2:
	// query_pre_attn_scalar^−½).
	QueryScale float64
	// AttnSoftcap and FinalSoftcap bound scores and logits by
	// cap·tanh(s/cap) (0: none).
	AttnSoftcap, FinalSoftcap float32
	// EmbedScale multiplies the embedding rows (0: 1; Gemma: √hidden
	// rounded to the checkpoint's dtype).
	EmbedScale float32
	// LocalRopeTheta is the RoPE base of the sliding layers (Gemma-3's
	// rope_local_base_freq, without scaling; 0: the layers share RopeTheta).
	LocalRopeTheta float64

	localRope bool // ForLayer: this layer rotates with the local table
}

// ForLayer is the configuration block l runs with: its attention window
// (0 on the layers that attend globally).
func (c Config) ForLayer(l int) Config {
	if c.SlidingLayers != nil && (l >= len(c.SlidingLayers) || !c.SlidingLayers[l]) {
		c.SlidingWindow = 0
	}
	c.SlidingLayers = nil
	c.localRope = c.LocalRopeTheta > 0 && c.SlidingWindow > 0
	return c
}

// localConfig is c with the local RoPE base in place of the global one.
func (c Config) localConfig() Config {
	c.RopeTheta, c.LocalRopeTheta = c.LocalRopeTheta, 0
	c.RopeFactor, c.RopeLowFreq, c.RopeHighFreq, c.RopeOrigMax = 0, 0, 0, 0
	return c
}

// rope is the table a layer of this configuration rotates with.
func (c Config) rope(r *Rope) *Rope {
	if c.localRope && r.Local != nil {
		return r.Local
	}
	return r
}

// CheckSeqLen refuses a window of T tokens the model cannot be run on
// faithfully: longer than its context (RoPE positions it never saw).
func (c Config) CheckSeqLen(T int) error {
	if T > c.MaxPositions {
		return fmt.Errorf("%d tokens is longer than the model's context (max_position_embeddings %d)", T, c.MaxPositions)
	}
	return nil
}

// scale is the attention scores' scale: QueryScale, or head_dim^−½.
func (c Config) scale() float32 {
	if c.QueryScale > 0 {
		return float32(c.QueryScale)
	}
	return float32(1 / math.Sqrt(float64(c.HeadDim)))
}

// Validate checks that the shapes are consistent.
func (c Config) Validate() error {
	if c.Hidden <= 0 || c.Intermediate <= 0 || c.Layers <= 0 || c.Heads <= 0 || c.KVHeads <= 0 || c.HeadDim <= 0 || c.Vocab <= 0 {
		return fmt.Errorf("model: every dimension must be positive: %+v", c)
	}
	if c.Heads%c.KVHeads != 0 || c.HeadDim%2 != 0 {
		return fmt.Errorf("model: heads %d must be a multiple of kv heads %d and head_dim %d even", c.Heads, c.KVHeads, c.HeadDim)
	}
	return nil
}

// QDim is H·hd, the width of q and of the attention output.
func (c Config) QDim() int { return c.Heads * c.HeadDim }

// KVDim is KV·hd, the width of k and v.
func (c Config) KVDim() int { return c.KVHeads * c.HeadDim }

// InvFreq returns the RoPE inverse frequencies θ^(−2i/hd), i < hd/2, with
// Llama-3 (or linear) scaling applied as transformers does.
func (c Config) InvFreq() []float64 {
	half := c.HeadDim / 2
	f := make([]float64, half)
	for i := range f {
		f[i] = 1 / math.Pow(c.RopeTheta, float64(2*i)/float64(c.HeadDim))
	}
	switch {
	case c.RopeFactor > 0 && c.RopeHighFreq > 0:
		lowWavelen := float64(c.RopeOrigMax) / c.RopeLowFreq
		highWavelen := float64(c.RopeOrigMax) / c.RopeHighFreq
		for i, inv := range f {
			wavelen := 2 * math.Pi / inv
			switch {
			case wavelen < highWavelen:
			case wavelen > lowWavelen:
				f[i] = inv / c.RopeFactor
			default:
				smooth := (float64(c.RopeOrigMax)/wavelen - c.RopeLowFreq) / (c.RopeHighFreq - c.RopeLowFreq)
				f[i] = (1-smooth)*inv/c.RopeFactor + smooth*inv
			}
		}
	case c.RopeFactor > 0:
		for i := range f {
			f[i] /= c.RopeFactor
		}
	}
	return f
}

// Rope holds cos and sin tables [positions × hd/2].
type Rope struct {
	Cos, Sin []float32
	N        int
	// Local is the table of the sliding layers when they have a base of
	// their own (Config.LocalRopeTheta), nil otherwise.
	Local *Rope
}

// NewRope tabulates RoPE angles p·invfreq_i for positions [0, n).
func NewRope(c Config, n int) *Rope {
	inv := c.InvFreq()
	half := len(inv)
	r := &Rope{Cos: make([]float32, n*half), Sin: make([]float32, n*half), N: n}
	for p := 0; p < n; p++ {
		for i, f := range inv {
			a := float64(p) * f
			r.Cos[p*half+i] = float32(math.Cos(a))
			r.Sin[p*half+i] = float32(math.Sin(a))
		}
	}
	if c.LocalRopeTheta > 0 {
		r.Local = NewRope(c.localConfig(), n)
	}
	return r
}
