package model

import (
	"math"

	k "github.com/elsa-stream/elsa-stream/internal/kernels"
)

// Linear is a weight matrix a decoding step multiplies one vector by: a
// kernels.DenseRows, BitmapRows or GapsRows over the checkpoint's mapped
// bytes, never converted.
type Linear interface {
	MatVec(y []float32, x *k.Vector)
}

// DecodeBlock is one layer for decoding: its matrices as Linear, its norms
// and biases as float32 (nil where the architecture has none).
type DecodeBlock struct {
	Wq, Wk, Wv, Wo, Wgate, Wup, Wdown Linear

	AttnNorm, MLPNorm, QNorm, KNorm, PostAttnNorm, PostFFNorm []float32
	Bq, Bk, Bv, Bo                                            []float32
}

// DecodeHead is the final norm and the matrix of the logits.
type DecodeHead struct {
	Norm   []float32
	LMHead Linear
}

// KVCache holds every layer's rotated keys and values of the tokens
// decoded so far: K[l][t·KV·hd ...] for position t.
type KVCache struct {
	K, V [][]float32
	Len  int // positions filled
	Cap  int
}

// NewKVCache allocates a cache for n positions.
func (c Config) NewKVCache(n int) *KVCache {
	kv := &KVCache{Cap: n}
	for l := 0; l < c.Layers; l++ {
		kv.K = append(kv.K, make([]float32, n*c.KVDim()))
		kv.V = append(kv.V, make([]float32, n*c.KVDim()))
	}
	return kv
}

// KVCacheBytes is the memory of a cache of n positions.
func (c Config) KVCacheBytes(n int) int64 {
	return 2 * 4 * int64(c.Layers) * int64(n) * int64(c.KVDim())
}

// DecodeWorkspaceBytes is what a DecodeWorkspace grows to for a context of
// n positions: its float32 vectors, the padded input vector in two layouts,
// and the scores of every head.
func (c Config) DecodeWorkspaceBytes(n int) int64 {
	D, Q, KVD, F := c.Hidden, c.QDim(), c.KVDim(), c.Intermediate
	widest := int64(32 * ((max(D, Q, F) + 31) / 32))
	return 4 * (int64(max(D, Q)+2*Q+KVD+D+3*F) + 2*widest + int64(c.Heads)*int64(n))
}

// DecodeWorkspace holds a decoding step's buffers (one token: a few
// vectors of the model's widths, and the attention scores of every head).
type DecodeWorkspace struct {
	xn, q, kv, att, ao, gate, up, act, scores []float32
	vec                                       k.Vector
	nw                                        normWeights
}

// DecodeStep runs the token whose (scaled) embedding is x [D] at position
// kv.Len through every block, appends its keys and values to kv, and
// writes the logits [V]. It is Forward for the last row of a sequence,
// attending to the cached positions instead of recomputing them.
func (c Config) DecodeStep(blocks []*DecodeBlock, head *DecodeHead, rope *Rope, kv *KVCache, x, logits []float32, ws *DecodeWorkspace) {
	pos := kv.Len
	if pos >= kv.Cap || pos >= rope.N {
		panic("model: DecodeStep: the KV cache or the RoPE table is full")
	}
	D, Q, KVD, F := c.Hidden, c.QDim(), c.KVDim(), c.Intermediate
	ws.xn, ws.q, ws.kv, ws.att = grow(&ws.xn, max(D, Q)), grow(&ws.q, Q), grow(&ws.kv, KVD), grow(&ws.att, Q)
	ws.ao, ws.gate, ws.up, ws.act = grow(&ws.ao, D), grow(&ws.gate, F), grow(&ws.up, F), grow(&ws.act, F)
	nw := &ws.nw
	for l, b := range blocks {
		lc := c.ForLayer(l)
		r := lc.rope(rope)
		k.RMSNorm(ws.xn, nil, x, nw.set(&nw.attn, 0, c, b.AttnNorm), 1, D, c.Eps)
		ws.vec.Set(ws.xn[:D])
		kc, vc := kv.K[l][pos*KVD:(pos+1)*KVD], kv.V[l][pos*KVD:(pos+1)*KVD]
		b.Wq.MatVec(ws.q, &ws.vec)
		b.Wk.MatVec(kc, &ws.vec)
		b.Wv.MatVec(vc, &ws.vec)
		if c.QKVBias {
			addBias(ws.q, b.Bq)
			addBias(kc, b.Bk)
			addBias(vc, b.Bv)
		}
		if c.QKNorm {
			copy(ws.xn, ws.q)
			k.RMSNorm(ws.q, nil, ws.xn[:Q], nw.set(&nw.q, 1, c, b.QNorm), c.Heads, c.HeadDim, c.Eps)
			copy(ws.kv, kc)
			k.RMSNorm(kc, nil, ws.kv, nw.set(&nw.k, 2, c, b.KNorm), c.KVHeads, c.HeadDim, c.Eps)
		}
		at := []int{pos}
		k.RoPE(ws.q, at, r.Cos, r.Sin, c.Heads, c.HeadDim, false)
		k.RoPE(kc, at, r.Cos, r.Sin, c.KVHeads, c.HeadDim, false)
		lc.attendCached(ws, kv.K[l], kv.V[l], pos)
		ws.vec.Set(ws.att)
		b.Wo.MatVec(ws.ao, &ws.vec)
		if c.OBias {
			addBias(ws.ao, b.Bo)
		}
		c.addResidual(x, ws.ao, nw.set(&nw.postAttn, 3, c, b.PostAttnNorm), ws)

		k.RMSNorm(ws.xn, nil, x, nw.set(&nw.mlp, 4, c, b.MLPNorm), 1, D, c.Eps)
		ws.vec.Set(ws.xn[:D])
		b.Wgate.MatVec(ws.gate, &ws.vec)
		b.Wup.MatVec(ws.up, &ws.vec)
		if c.GELU {
			k.GeGLU(ws.act, ws.gate, ws.up)
		} else {
			k.SwiGLU(ws.act, ws.gate, ws.up)
		}
		ws.vec.Set(ws.act)
		b.Wdown.MatVec(ws.ao, &ws.vec)
		c.addResidual(x, ws.ao, nw.set(&nw.postFF, 5, c, b.PostFFNorm), ws)
	}
	kv.Len++
	k.RMSNorm(ws.xn, nil, x, c.normWeight(&ws.nw.buf[0], head.Norm), 1, D, c.Eps)
	ws.vec.Set(ws.xn[:D])
	head.LMHead.MatVec(logits, &ws.vec)
	if c.FinalSoftcap != 0 {
		softcap(logits[:c.Vocab], c.FinalSoftcap)
	}
}

// addResidual sets x += y, or x += RMSNorm(y)·post with sandwich norms.
func (c Config) addResidual(x, y, post []float32, ws *DecodeWorkspace) {
	if c.SandwichNorms {
		k.RMSNorm(ws.xn, nil, y, post, 1, c.Hidden, c.Eps)
		y = ws.xn
	}
	for i := range x {
		x[i] += y[i]
	}
}

// decodeHeadWork is the multiply-adds of attention a goroutine gets at
// least (a variable so the tests can run every head on its own).
var decodeHeadWork = 1 << 15

// attendCached sets ws.att to the attention of the query ws.q at position
// pos over the cached keys and values, head by head (kv head h/(H/KV)):
// the scores of the keys it sees (attnProbs' window and soft-capping), a
// softmax, and the values they weigh.
func (c Config) attendCached(ws *DecodeWorkspace, K, V []float32, pos int) {
	hd, KVD := c.HeadDim, c.KVDim()
	group := c.Heads / c.KVHeads
	lo := c.windowStart(pos)
	n := pos + 1 - lo
	ws.scores = grow(&ws.scores, c.Heads*n)
	scale, cap := c.scale(), c.AttnSoftcap
	// Heads are independent (each its own scores): spread them over the
	// cores once a head's work (2·n·hd multiply-adds) is worth a goroutine.
	k.ParallelFor(c.Heads, max(1, decodeHeadWork/(2*n*hd)), func(h0, h1 int) {
		for h := h0; h < h1; h++ {
			q := ws.q[h*hd : (h+1)*hd]
			off := (h / group) * hd
			s := ws.scores[h*n : (h+1)*n]
			for j := range s {
				r := (lo + j) * KVD
				s[j] = k.Dot(q, K[r+off:r+off+hd])
			}
			if cap == 0 {
				k.SoftmaxScaled(s, scale)
			} else {
				for j, v := range s {
					s[j] = cap * float32(math.Tanh(float64(v*scale/cap)))
				}
				k.SoftmaxScaled(s, 1)
			}
			out := ws.att[h*hd : (h+1)*hd]
			clear(out)
			for j, p := range s {
				r := (lo + j) * KVD
				k.Axpy(p, V[r+off:r+off+hd], out)
			}
		}
	})
}
