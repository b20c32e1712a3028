package model

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestBackwardHalfKeptMatchesRecompute: the backward from kept
// activations gives the recomputing backward's gradients and ∂L/∂x bit for
// bit, for each half and the whole layer, on every architecture variant.
func TestBackwardHalfKeptMatchesRecompute(t *testing.T) {
	for name, c := range map[string]Config{"llama+bias": smallConfig(true, false), "gemma2": gemma2Config(), "gemma3": gemma3Config(), "qwen3": qwen3Config()} {
		w := randomWeights(c, 3)
		B, T := 2, 5
		rope := NewRope(c, c.MaxPositions)
		for l := range w.Blocks {
			lc := c.ForLayer(l)
			for _, h := range []Half{Whole, Attention, MLP} {
				x := randSliceSeeded(B*T*c.Hidden, 11)
				dy := randSliceSeeded(B*T*c.Hidden, 12)
				var ws1, ws2 Workspace
				// Reference: recompute.
				g1, dy1 := c.NewBlock(), append([]float32(nil), dy...)
				lc.BackwardHalf(h, w.Blocks[l], g1, rope, x, dy1, B, T, &ws1)
				// Kept: forward, keep, then backward in a fresh workspace.
				y := append([]float32(nil), x...)
				lc.ForwardHalf(h, w.Blocks[l], rope, y, B, T, &ws2)
				kept := make([]float32, lc.KeptFloats(h, B, T))
				lc.KeepActivations(h, &ws2, kept)
				var ws3 Workspace
				g2, dy2 := c.NewBlock(), append([]float32(nil), dy...)
				lc.BackwardHalfKept(h, w.Blocks[l], g2, rope, x, dy2, kept, B, T, &ws3)
				same := func(what string, a, b []float32) {
					for i := range a {
						if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
							t.Fatalf("%s layer %d %s: %s[%d] kept %g, recomputed %g", name, l, h, what, i, b[i], a[i])
						}
					}
				}
				same("dx", dy1, dy2)
				for _, p := range c.BlockParams() {
					same(p.Suffix, *p.Get(g1), *p.Get(g2))
				}
			}
		}
	}
}

func randSliceSeeded(n int, seed uint64) []float32 {
	return randSlice(rand.New(rand.NewPCG(seed, 1)), n, 1)
}
