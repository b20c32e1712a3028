package model

import (
	"math"

	k "github.com/elsa-stream/elsa-stream/internal/kernels"
)

// Head holds the parameters outside the blocks (or their gradients). With
// tied embeddings LMHead aliases Embed.
type Head struct {
	Embed  []float32 // [V × D]
	Norm   []float32 // [D]
	LMHead []float32 // [V × D]
}

// Embed sets x[t,:] = E[ids[t],:] (x is [len(ids) × D]).
func (c Config) Embed(x []float32, ids []int, E []float32) {
	D := c.Hidden
	for t, id := range ids {
		copy(x[t*D:(t+1)*D], E[id*D:(id+1)*D])
	}
	c.ScaleEmbedding(x[:len(ids)*D])
}

// ScaleEmbedding multiplies embedding rows by EmbedScale (Gemma: x =
// E[id]·√D); a no-op for the other architectures.
func (c Config) ScaleEmbedding(x []float32) {
	if s := c.EmbedScale; s != 0 && s != 1 {
		for i := range x {
			x[i] *= s
		}
	}
}

// softcap sets x = cap·tanh(x/cap) (Gemma-2's logit soft-capping).
func softcap(x []float32, cap float32) {
	for i, v := range x {
		x[i] = cap * float32(math.Tanh(float64(v/cap)))
	}
}

// EmbedBackward adds dx[t,:] into gE[ids[t],:].
func (c Config) EmbedBackward(gE, dx []float32, ids []int) {
	D := c.Hidden
	s := c.EmbedScale
	if s == 0 {
		s = 1
	}
	for t, id := range ids {
		row := gE[id*D : (id+1)*D]
		for i, v := range dx[t*D : (t+1)*D] {
			row[i] += v * s
		}
	}
}

// HeadWorkspace holds reusable buffers for HeadLoss.
type HeadWorkspace struct {
	// Compute is the precision of the head's GEMMs; the softmax, the
	// log-sum-exp and the losses stay float32 (float64 sums).
	Compute k.Compute

	xf, r, logits, dxf, norm []float32
	th                       []float32 // FinalSoftcap: tanh(l/cap) of the chunk
	w, gw                    []float32 // a vocabulary chunk of lm_head and its gradient
}

// headChunk bounds the logits buffer to about 16 MiB whatever the vocabulary.
func (c Config) headChunk(n int) int {
	return max(1, min(n, (1<<22)/c.Vocab))
}

// HeadLoss runs the head on x [n × D]: logits = (RMSNorm(x)·g)·LMHeadᵀ and
// returns Σ_t −log softmax(logits_t)[targets[t]] over targets ≥ 0 (negative
// targets are ignored) and how many were counted.
//
// With g non-nil it also adds scale·∂(Σ NLL)/∂θ into g (Norm, LMHead) and
// sets dx = scale·∂(Σ NLL)/∂x; scale is typically 1/(tokens in the step).
// Rows are processed in chunks so the logits never exceed ~16 MiB.
func (c Config) HeadLoss(h *Head, x []float32, targets []int, g *Head, dx []float32, scale float32, ws *HeadWorkspace) (float64, int) {
	n, D, V := len(targets), c.Hidden, c.Vocab
	if len(x) != n*D || (g != nil && len(dx) != n*D) {
		panic("model: HeadLoss: x or dx is not [n × D]")
	}
	chunk := c.headChunk(n)
	xf := grow(&ws.xf, chunk*D)
	r := grow(&ws.r, chunk)
	logits := grow(&ws.logits, chunk*V)
	norm := c.normWeight(&ws.norm, h.Norm)
	fcap := c.FinalSoftcap
	var th []float32
	if fcap != 0 {
		th = grow(&ws.th, chunk*V)
	}
	var sum float64
	var count int
	for lo := 0; lo < n; lo += chunk {
		m := min(chunk, n-lo)
		xs := x[lo*D : (lo+m)*D]
		k.RMSNorm(xf[:m*D], r[:m], xs, norm, m, D, c.Eps)
		ws.Compute.NT(logits[:m*V], xf[:m*D], h.LMHead, m, V, D, false)
		if fcap != 0 { // Gemma-2: logits = cap·tanh(logits/cap)
			for i, l := range logits[:m*V] {
				t := float32(math.Tanh(float64(l / fcap)))
				th[i] = t
				logits[i] = fcap * t
			}
		}
		for t := 0; t < m; t++ {
			row := logits[t*V : (t+1)*V]
			tgt := targets[lo+t]
			if tgt < 0 {
				if g != nil {
					clear(row)
				}
				continue
			}
			lse := k.LogSumExp(row)
			sum += lse - float64(row[tgt])
			count++
			if g != nil {
				// ∂NLL/∂logit_j = softmax_j − [j = target]
				k.SoftmaxInPlace(row)
				row[tgt] -= 1
				for j := range row {
					row[j] *= scale
				}
				if fcap != 0 { // through cap·tanh(l/cap): × (1 − tanh²)
					for j, tj := range th[t*V : (t+1)*V] {
						row[j] *= 1 - tj*tj
					}
				}
			}
		}
		if g == nil {
			continue
		}
		ws.Compute.TN(g.LMHead, logits[:m*V], xf[:m*D], V, D, m, true)
		dxf := grow(&ws.dxf, m*D)
		ws.Compute.NN(dxf, logits[:m*V], h.LMHead, m, D, V, false)
		dxs := dx[lo*D : (lo+m)*D]
		clear(dxs)
		k.RMSNormBackward(dxs, g.Norm, dxf, xs, norm, r[:m], m, D)
	}
	return sum, count
}

// Logits returns the head's logits for every row of x [n × D]:
// RMSNorm(x)·g·LMHeadᵀ, soft-capped with FinalSoftcap (for tests and
// inspection; HeadLoss never holds more than a chunk of them).
func (c Config) Logits(h *Head, x []float32) []float32 {
	n := len(x) / c.Hidden
	out := make([]float32, n*c.Vocab)
	xf := make([]float32, len(x))
	var buf []float32
	k.RMSNorm(xf, nil, x, c.normWeight(&buf, h.Norm), n, c.Hidden, c.Eps)
	k.MatMulNT(out, xf, h.LMHead, n, c.Vocab, c.Hidden, false)
	if c.FinalSoftcap != 0 {
		softcap(out, c.FinalSoftcap)
	}
	return out
}

// HeadBytes is the working memory of HeadLoss over n tokens (training adds
// the dxf buffer).
func (c Config) HeadBytes(n int) int64 {
	m := int64(c.headChunk(n))
	logits := m * int64(c.Vocab)
	if c.FinalSoftcap != 0 {
		logits *= 2 // and their tanh
	}
	return 4 * (m*int64(2*c.Hidden+1) + logits)
}

// HeadNLL is HeadLoss without gradients for a head whose lm_head is never
// whole in memory: rows(lo, hi, dst) fills dst [(hi−lo) × D] with lm_head
// rows [lo, hi) as float32. The vocabulary is visited once per call in
// chunks of vc rows; every token keeps the running maximum m of its logits
// and s = Σ e^(l − m) (an online log-sum-exp: a chunk with a larger
// maximum m' rescales s by e^(m − m')) and its target's logit, so
//
//	NLL = m + log s − l_target
//
// equals one pass over the whole row (float64 sums). Logits are
// soft-capped with FinalSoftcap before they count. x is normalized in
// place (it is not needed after the head, and a copy would double the
// activations' memory).
func (c Config) HeadNLL(norm, x []float32, targets []int, vc int, rows func(lo, hi int, dst []float32) error, ws *HeadWorkspace) (float64, int, error) {
	n, D := len(targets), c.Hidden
	if len(x) != n*D || vc <= 0 {
		panic("model: HeadNLL: x is not [n × D] or the chunk is empty")
	}
	k.RMSNorm(x, nil, x, c.normWeight(&ws.norm, norm), n, D, c.Eps)
	lse, tl, err := c.onlineLSE(x, targets, vc, rows, ws)
	if err != nil {
		return 0, 0, err
	}
	sum, count := sumNLL(lse, tl, targets)
	return sum, count, nil
}

// sumNLL is Σ lse − l_target over the predicted tokens, and their count.
func sumNLL(lse, tl []float64, targets []int) (float64, int) {
	var sum float64
	count := 0
	for t, tg := range targets {
		if tg >= 0 {
			sum += lse[t] - tl[t]
			count++
		}
	}
	return sum, count
}

// logitBlock is the token rows of one logits block of a vocabulary chunk
// of vc rows (at most 4 Mi logits, 16 MiB).
func logitBlock(n, vc int) int { return max(1, min(n, (1<<22)/vc)) }

// onlineLSE returns, for the normalized tokens xf [n × D], every predicted
// token's log Σ_j e^(l_j) over the whole vocabulary and its target's
// logit, visiting lm_head once in chunks of vc rows (HeadNLL's online
// log-sum-exp). Ignored targets get zeros.
func (c Config) onlineLSE(xf []float32, targets []int, vc int, rows func(lo, hi int, dst []float32) error, ws *HeadWorkspace) (lse, tl []float64, err error) {
	n, D, V := len(targets), c.Hidden, c.Vocab
	vc = min(vc, V)
	rb := logitBlock(n, vc)
	w := grow(&ws.w, vc*D)
	logits := grow(&ws.logits, rb*vc)
	m := make([]float64, n)
	s := make([]float64, n)
	tl = make([]float64, n)
	for t := range m {
		m[t] = math.Inf(-1)
	}
	fcap := c.FinalSoftcap
	for lo := 0; lo < V; lo += vc {
		hi := min(V, lo+vc)
		cw := hi - lo
		if err := rows(lo, hi, w[:cw*D]); err != nil {
			return nil, nil, err
		}
		for r0 := 0; r0 < n; r0 += rb {
			nr := min(rb, n-r0)
			ws.Compute.NT(logits[:nr*cw], xf[r0*D:(r0+nr)*D], w[:cw*D], nr, cw, D, false)
			for t := 0; t < nr; t++ {
				tok := r0 + t
				if targets[tok] < 0 {
					continue
				}
				row := logits[t*cw : (t+1)*cw]
				if fcap != 0 {
					softcap(row, fcap)
				}
				cm := float64(row[0])
				for _, l := range row[1:] {
					cm = max(cm, float64(l))
				}
				if cm > m[tok] {
					s[tok] *= math.Exp(m[tok] - cm)
					m[tok] = cm
				}
				for _, l := range row {
					s[tok] += math.Exp(float64(l) - m[tok])
				}
				if tg := targets[tok]; tg >= lo && tg < hi {
					tl[tok] = float64(row[tg-lo])
				}
			}
		}
	}
	for t := range m {
		if targets[t] >= 0 {
			m[t] += math.Log(s[t])
		} else {
			m[t] = 0
		}
	}
	return m, tl, nil
}

// HeadLossChunked is HeadLoss with gradients for an lm_head that is never
// whole in memory (rows as for HeadNLL). It adds scale·∂(Σ NLL)/∂norm into
// gNorm, sets dx = scale·∂(Σ NLL)/∂x, and hands the lm_head's gradient to
// grad one vocabulary chunk of vc rows at a time (g [(hi−lo) × D], valid
// during the call).
//
// With vc ≥ V it is HeadLoss itself (one chunk: the same operations).
// Otherwise it takes two passes over the vocabulary: the first finds every
// token's log-sum-exp (onlineLSE); the second recomputes each chunk's
// logits l and, with p_j = e^(l_j − lse) and δ the target's indicator,
//
//	∂NLL/∂l_j = p_j − δ_j   (× (1 − tanh²(l_j/cap)) through Gemma-2's soft-cap)
//
// from which the chunk's gradient gW = ∂lᵀ·RMSNorm(x) and its share
// ∂l·W of ∂RMSNorm(x) follow. The second pass reads lm_head again: twice
// the head's reads and one more logits GEMM for never holding it whole.
func (c Config) HeadLossChunked(norm, x []float32, targets []int, gNorm, dx []float32, scale float32, vc int,
	rows func(lo, hi int, dst []float32) error, grad func(lo, hi int, g []float32) error, ws *HeadWorkspace) (float64, int, error) {
	n, D, V := len(targets), c.Hidden, c.Vocab
	if len(x) != n*D || len(dx) != n*D || len(gNorm) != D || vc <= 0 {
		panic("model: HeadLossChunked: x or dx is not [n × D], gNorm not [D], or the chunk is empty")
	}
	if vc >= V {
		w := grow(&ws.w, V*D)
		if err := rows(0, V, w); err != nil {
			return 0, 0, err
		}
		gw := grow(&ws.gw, V*D)
		clear(gw)
		sum, count := c.HeadLoss(&Head{Norm: norm, LMHead: w}, x, targets, &Head{Norm: gNorm, LMHead: gw}, dx, scale, ws)
		return sum, count, grad(0, V, gw)
	}
	nw := c.normWeight(&ws.norm, norm)
	xf := grow(&ws.xf, n*D)
	r := grow(&ws.r, n)
	k.RMSNorm(xf, r, x, nw, n, D, c.Eps)
	lse, tl, err := c.onlineLSE(xf, targets, vc, rows, ws)
	if err != nil {
		return 0, 0, err
	}
	rb := logitBlock(n, vc)
	w, gw := grow(&ws.w, vc*D), grow(&ws.gw, vc*D)
	logits := grow(&ws.logits, rb*vc)
	dxf := grow(&ws.dxf, n*D)
	clear(dxf)
	fcap := c.FinalSoftcap
	for lo := 0; lo < V; lo += vc {
		hi := min(V, lo+vc)
		cw := hi - lo
		if err := rows(lo, hi, w[:cw*D]); err != nil {
			return 0, 0, err
		}
		clear(gw[:cw*D])
		for r0 := 0; r0 < n; r0 += rb {
			nr := min(rb, n-r0)
			xs := xf[r0*D : (r0+nr)*D]
			dl := logits[:nr*cw]
			ws.Compute.NT(dl, xs, w[:cw*D], nr, cw, D, false)
			for t := 0; t < nr; t++ {
				row := dl[t*cw : (t+1)*cw]
				tg := targets[r0+t]
				if tg < 0 {
					clear(row)
					continue
				}
				for j, l := range row {
					d := float32(1)
					if fcap != 0 {
						th := float32(math.Tanh(float64(l / fcap)))
						l, d = fcap*th, 1-th*th
					}
					p := float32(math.Exp(float64(l) - lse[r0+t]))
					if lo+j == tg {
						p--
					}
					row[j] = p * scale * d
				}
			}
			ws.Compute.TN(gw[:cw*D], dl, xs, cw, D, nr, true)
			ws.Compute.NN(dxf[r0*D:(r0+nr)*D], dl, w[:cw*D], nr, D, cw, true)
		}
		if err := grad(lo, hi, gw[:cw*D]); err != nil {
			return 0, 0, err
		}
	}
	clear(dx)
	k.RMSNormBackward(dx, gNorm, dxf, x, nw, r, n, D)
	sum, count := sumNLL(lse, tl, targets)
	return sum, count, nil
}

// HeadNLLBytes is HeadNLL's working memory over n tokens with vocabulary
// chunks of vc rows: one chunk of lm_head rows, one logits block and the
// running values of every token (HeadNLLTokenBytes each).
func (c Config) HeadNLLBytes(n, vc int) int64 {
	vc = min(vc, c.Vocab)
	rb := int64(logitBlock(n, vc))
	return 4*(int64(vc)*int64(c.Hidden)+rb*int64(vc)) + HeadNLLTokenBytes*int64(n)
}

// HeadNLLTokenBytes is what HeadNLL holds per token beyond the
// activations: the running maximum, sum and target logit (float64), and
// the log-sum-exp slice they become.
const HeadNLLTokenBytes = 32

// HeadLossChunkedBytes is HeadLossChunked's working memory over n tokens
// with vocabulary chunks of vc rows: one chunk of lm_head and its
// gradient, and either HeadLoss's (one chunk) or the normalized tokens,
// their gradient and inverse norms, one logits block and the log-sum-exp
// pass's values.
func (c Config) HeadLossChunkedBytes(n, vc int) int64 {
	vc = min(vc, c.Vocab)
	D := int64(c.Hidden)
	chunk := 8 * int64(vc) * D
	if vc == c.Vocab {
		return chunk + c.HeadBytes(n) + 4*int64(c.headChunk(n))*D
	}
	return chunk + 4*(2*int64(n)*D+int64(n)+int64(logitBlock(n, vc))*int64(vc)) + 32*int64(n)
}
