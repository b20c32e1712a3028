package model

import (
	"math"
	"testing"
	"unsafe"

	k "github.com/elsa-stream/elsa-stream/internal/kernels"
)

// denseF32 views a float32 matrix as the Linear a decoder reads.
func denseF32(w []float32, rows, cols int) Linear {
	return &k.DenseRows{Rows: rows, Cols: cols, Elem: k.F32, Data: unsafe.Slice((*byte)(unsafe.Pointer(&w[0])), 4*len(w))}
}

// TestDecodeStepMatchesForward decodes a sequence token by token with the
// KV cache and compares every position's logits with the full forward pass
// over the whole sequence (which the golden fixtures check against
// PyTorch), for every architecture variant: biases, Gemma-2 (soft-caps,
// sandwich norms, a sliding window shorter than the sequence), Gemma-3
// (local RoPE base, q/k norms) and Qwen3.
//
// It runs twice: attention heads on one goroutine (what these small
// models get), and every head on its own; and the workspace stays within
// DecodeWorkspaceBytes (what generate reserves).
func TestDecodeStepMatchesForward(t *testing.T) {
	for _, work := range []int{decodeHeadWork, 1} {
		saved := decodeHeadWork
		decodeHeadWork = work
		testDecodeStepMatchesForward(t)
		decodeHeadWork = saved
	}
}

func testDecodeStepMatchesForward(t *testing.T) {
	for name, c := range map[string]Config{"llama+bias": smallConfig(true, false), "gemma2": gemma2Config(), "gemma3": gemma3Config(), "qwen3": qwen3Config()} {
		w := randomWeights(c, 9)
		ids := []int{3, 1, 4, 1, 5, 9, 2}
		T := len(ids)
		rope := NewRope(c, c.MaxPositions)
		x := make([]float32, T*c.Hidden)
		c.Embed(x, ids, w.Head.Embed)
		var ws Workspace
		for l, b := range w.Blocks {
			c.ForLayer(l).Forward(b, rope, x, 1, T, &ws)
		}
		want := c.Logits(&w.Head, x)

		D, Q, KV, F := c.Hidden, c.QDim(), c.KVDim(), c.Intermediate
		var blocks []*DecodeBlock
		for _, b := range w.Blocks {
			blocks = append(blocks, &DecodeBlock{
				Wq: denseF32(b.Wq, Q, D), Wk: denseF32(b.Wk, KV, D), Wv: denseF32(b.Wv, KV, D), Wo: denseF32(b.Wo, D, Q),
				Wgate: denseF32(b.Wgate, F, D), Wup: denseF32(b.Wup, F, D), Wdown: denseF32(b.Wdown, D, F),
				AttnNorm: b.AttnNorm, MLPNorm: b.MLPNorm, QNorm: b.QNorm, KNorm: b.KNorm, PostAttnNorm: b.PostAttnNorm, PostFFNorm: b.PostFFNorm,
				Bq: b.Bq, Bk: b.Bk, Bv: b.Bv, Bo: b.Bo,
			})
		}
		lm := w.Head.LMHead
		head := &DecodeHead{Norm: w.Head.Norm, LMHead: denseF32(lm, c.Vocab, D)}
		kv := c.NewKVCache(c.MaxPositions)
		var dws DecodeWorkspace
		logits := make([]float32, c.Vocab)
		steps := make([][]float32, T) // every position's logits, one token at a time
		for i, id := range ids {
			xt := make([]float32, D)
			c.Embed(xt, []int{id}, w.Head.Embed)
			c.DecodeStep(blocks, head, rope, kv, xt, logits, &dws)
			for v := 0; v < c.Vocab; v++ {
				if d := math.Abs(float64(logits[v] - want[i*c.Vocab+v])); d > 1e-4*(1+math.Abs(float64(want[i*c.Vocab+v]))) {
					t.Fatalf("%s: position %d logit %d: decode %g, forward %g", name, i, v, logits[v], want[i*c.Vocab+v])
				}
			}
			steps[i] = append([]float32(nil), logits...)
		}
		if kv.Len != T {
			t.Fatalf("%s: cache holds %d positions, want %d", name, kv.Len, T)
		}
		// The same tokens in batches (a prompt's prefill): MatMul gives
		// each token MatVec's bits, so the logits after each batch and
		// the whole cache are the bits of one token at a time.
		batched := c.NewKVCache(c.MaxPositions)
		for i, n := range []int{5, 1, 1} {
			lo := []int{0, 5, 6}[i]
			xb := make([]float32, n*D)
			c.Embed(xb, ids[lo:lo+n], w.Head.Embed)
			c.DecodeTokens(blocks, head, rope, batched, xb, n, logits, &dws)
			for v := range logits {
				if math.Float32bits(logits[v]) != math.Float32bits(steps[lo+n-1][v]) {
					t.Fatalf("%s: batch of %d at %d: logit %d %g, one token at a time %g", name, n, lo, v, logits[v], steps[lo+n-1][v])
				}
			}
		}
		for l := range kv.K {
			for j := 0; j < T*KV; j++ {
				if math.Float32bits(kv.K[l][j]) != math.Float32bits(batched.K[l][j]) || math.Float32bits(kv.V[l][j]) != math.Float32bits(batched.V[l][j]) {
					t.Fatalf("%s: layer %d cache entry %d differs between batched and one-token decoding", name, l, j)
				}
			}
		}
		var held int
		for _, b := range [][]float32{dws.xn, dws.q, dws.kv, dws.att, dws.ao, dws.gate, dws.up, dws.act, dws.scores, dws.vec.F32, dws.vec.Pairs, dws.batch.F32, dws.batch.Pairs, dws.batch.Cols} {
			held += 4 * cap(b)
		}
		if limit := c.DecodeWorkspaceBytes(T); int64(held) > limit {
			t.Fatalf("%s: the workspace holds %d bytes after %d positions, DecodeWorkspaceBytes says %d", name, held, T, limit)
		}
	}
}
