package model

import (
	"math"

	k "github.com/elsa-stream/elsa-stream/internal/kernels"
)

// Linear is a weight matrix a decoding step multiplies by: a
// kernels.DenseRows, BitmapRows or GapsRows over the checkpoint's mapped
// bytes, never converted; one vector at a time (a token), or a batch of up
// to kernels.BatchTokens (a prompt's tokens).
type Linear interface {
	MatVec(y []float32, x *k.Vector)
	MatMul(y []float32, x *k.Batch)
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
// n positions: its float32 vectors for a batch of kernels.BatchTokens
// tokens, the padded input vector in two layouts, the batch's input in
// three, and the scores of every head.
func (c Config) DecodeWorkspaceBytes(n int) int64 {
	D, Q, KVD, F := c.Hidden, c.QDim(), c.KVDim(), c.Intermediate
	widest := max(D, Q, F)
	vectors := int64(max(D, Q)+2*Q+KVD+D+3*F) * k.BatchTokens
	return 4*(vectors+int64(2*32*k.Chunks(widest))+int64(c.Heads)*int64(n)) + k.BatchBytes(widest)
}

// DecodeWorkspace holds a decoding step's buffers (a few vectors of the
// model's widths for each token of the step, the input of a product, and
// the attention scores of every head).
type DecodeWorkspace struct {
	xn, q, kv, att, ao, gate, up, act, scores []float32
	vec                                       k.Vector
	batch                                     k.Batch
	nw                                        normWeights
}

// DecodeStep runs the token whose (scaled) embedding is x [D] at position
// kv.Len through every block, appends its keys and values to kv, and
// writes the logits [V]. It is Forward for the last row of a sequence,
// attending to the cached positions instead of recomputing them.
func (c Config) DecodeStep(blocks []*DecodeBlock, head *DecodeHead, rope *Rope, kv *KVCache, x, logits []float32, ws *DecodeWorkspace) {
	c.DecodeTokens(blocks, head, rope, kv, x, 1, logits, ws)
}

// DecodeTokens runs the n ≤ kernels.BatchTokens tokens whose (scaled)
// embeddings are x [n][D] at positions kv.Len .. kv.Len+n−1 through every
// block, appends their keys and values to kv, and writes the logits [V] of
// the last. Each matrix is read once for all n (MatMul; one token: MatVec)
// and each token attends causally, to the cache and the tokens before it.
// x ends as the last block's output.
func (c Config) DecodeTokens(blocks []*DecodeBlock, head *DecodeHead, rope *Rope, kv *KVCache, x []float32, n int, logits []float32, ws *DecodeWorkspace) {
	pos := kv.Len
	if n < 1 || n > k.BatchTokens || pos+n > kv.Cap || pos+n > rope.N {
		panic("model: DecodeTokens: the KV cache or the RoPE table is full, or a batch of other than 1 to BatchTokens tokens")
	}
	D, Q, KVD, F := c.Hidden, c.QDim(), c.KVDim(), c.Intermediate
	ws.xn, ws.q, ws.kv, ws.att = grow(&ws.xn, n*max(D, Q)), grow(&ws.q, n*Q), grow(&ws.kv, n*KVD), grow(&ws.att, n*Q)
	ws.ao, ws.gate, ws.up, ws.act = grow(&ws.ao, n*D), grow(&ws.gate, n*F), grow(&ws.up, n*F), grow(&ws.act, n*F)
	// in sets the products' input to the n rows of v; mul multiplies it.
	in := func(v []float32) {
		if n == 1 {
			ws.vec.Set(v)
		} else {
			ws.batch.Set(v, n)
		}
	}
	mul := func(m Linear, y []float32) {
		if n == 1 {
			m.MatVec(y, &ws.vec)
		} else {
			m.MatMul(y, &ws.batch)
		}
	}
	var positions [k.BatchTokens]int // on the stack: a token allocates nothing here
	at := positions[:n]
	for i := range at {
		at[i] = pos + i
	}
	nw := &ws.nw
	for l, b := range blocks {
		lc := c.ForLayer(l)
		r := lc.rope(rope)
		k.RMSNorm(ws.xn, nil, x, nw.set(&nw.attn, 0, c, b.AttnNorm), n, D, c.Eps)
		in(ws.xn[:n*D])
		kc, vc := kv.K[l][pos*KVD:(pos+n)*KVD], kv.V[l][pos*KVD:(pos+n)*KVD]
		mul(b.Wq, ws.q)
		mul(b.Wk, kc)
		mul(b.Wv, vc)
		if c.QKVBias {
			addBias(ws.q, b.Bq)
			addBias(kc, b.Bk)
			addBias(vc, b.Bv)
		}
		if c.QKNorm {
			copy(ws.xn, ws.q)
			k.RMSNorm(ws.q, nil, ws.xn[:n*Q], nw.set(&nw.q, 1, c, b.QNorm), n*c.Heads, c.HeadDim, c.Eps)
			copy(ws.kv, kc)
			k.RMSNorm(kc, nil, ws.kv, nw.set(&nw.k, 2, c, b.KNorm), n*c.KVHeads, c.HeadDim, c.Eps)
		}
		k.RoPE(ws.q, at, r.Cos, r.Sin, c.Heads, c.HeadDim, false)
		k.RoPE(kc, at, r.Cos, r.Sin, c.KVHeads, c.HeadDim, false)
		for i := 0; i < n; i++ {
			lc.attendCached(ws, ws.q[i*Q:(i+1)*Q], ws.att[i*Q:(i+1)*Q], kv.K[l], kv.V[l], pos+i)
		}
		in(ws.att)
		mul(b.Wo, ws.ao)
		if c.OBias {
			addBias(ws.ao, b.Bo)
		}
		c.addResidual(x, ws.ao, nw.set(&nw.postAttn, 3, c, b.PostAttnNorm), n, ws)

		k.RMSNorm(ws.xn, nil, x, nw.set(&nw.mlp, 4, c, b.MLPNorm), n, D, c.Eps)
		in(ws.xn[:n*D])
		mul(b.Wgate, ws.gate)
		mul(b.Wup, ws.up)
		if c.GELU {
			k.GeGLU(ws.act, ws.gate, ws.up)
		} else {
			k.SwiGLU(ws.act, ws.gate, ws.up)
		}
		in(ws.act)
		mul(b.Wdown, ws.ao)
		c.addResidual(x, ws.ao, nw.set(&nw.postFF, 5, c, b.PostFFNorm), n, ws)
	}
	kv.Len += n
	k.RMSNorm(ws.xn, nil, x[(n-1)*D:n*D], c.normWeight(&ws.nw.buf[0], head.Norm), 1, D, c.Eps)
	ws.vec.Set(ws.xn[:D])
	head.LMHead.MatVec(logits, &ws.vec)
	if c.FinalSoftcap != 0 {
		softcap(logits[:c.Vocab], c.FinalSoftcap)
	}
}

// addResidual sets x += y for n tokens, or x += RMSNorm(y)·post with
// sandwich norms.
func (c Config) addResidual(x, y, post []float32, n int, ws *DecodeWorkspace) {
	if c.SandwichNorms {
		k.RMSNorm(ws.xn, nil, y, post, n, c.Hidden, c.Eps)
		y = ws.xn
	}
	for i := range x[:n*c.Hidden] {
		x[i] += y[i]
	}
}

// decodeHeadWork is the multiply-adds of attention a goroutine gets at
// least (a variable so the tests can run every head on its own).
var decodeHeadWork = 1 << 15

// attendCached sets att [Q] to the attention of the query q [Q] at
// position pos over the cached keys and values, head by head (kv head
// h/(H/KV)): the scores of the keys it sees (attnProbs' window and
// soft-capping), a softmax, and the values they weigh.
func (c Config) attendCached(ws *DecodeWorkspace, query, att, K, V []float32, pos int) {
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
			q := query[h*hd : (h+1)*hd]
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
			out := att[h*hd : (h+1)*hd]
			clear(out)
			for j, p := range s {
				r := (lo + j) * KVD
				k.Axpy(p, V[r+off:r+off+hd], out)
			}
		}
	})
}
