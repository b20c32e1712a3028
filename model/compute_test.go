package model

import (
	"math"
	"math/rand/v2"
	"testing"

	k "github.com/elsa-stream/elsa-stream/internal/kernels"
)

// relErr is ‖a − b‖ / ‖b‖.
func relErr(a, b []float32) float64 {
	var d, n float64
	for i := range a {
		d += (float64(a[i]) - float64(b[i])) * (float64(a[i]) - float64(b[i]))
		n += float64(b[i]) * float64(b[i])
	}
	return math.Sqrt(d / n)
}

// TestComputeBF16Block: with bf16 GEMMs a block's output, ∂L/∂x and every
// parameter gradient stay within bf16's precision of the float32 ones
// (relative error 1e-4 .. 2e-2: not equal, so the GEMMs really ran in
// bf16, and not worse than a few roundings of 2⁻⁹ per operand), on every
// architecture variant.
func TestComputeBF16Block(t *testing.T) {
	for name, c := range map[string]Config{"llama+bias": smallConfig(true, false), "gemma2": gemma2Config(), "qwen3": qwen3Config()} {
		w := randomWeights(c, 9).Blocks[0]
		rope := NewRope(c, 8)
		r := rand.New(rand.NewPCG(2, 2))
		B, T := 2, 8
		x, dyW := randSlice(r, B*T*c.Hidden, 1), randSlice(r, B*T*c.Hidden, 1)
		run := func(compute k.Compute) (y, dx []float32, g *Block) {
			ws := Workspace{Compute: compute}
			y = append([]float32(nil), x...)
			c.Forward(w, rope, y, B, T, &ws)
			g = c.NewBlock()
			dx = append([]float32(nil), dyW...)
			c.Backward(w, g, rope, x, dx, B, T, &ws)
			return y, dx, g
		}
		y32, dx32, g32 := run(k.ComputeFP32)
		y16, dx16, g16 := run(k.ComputeBF16)
		check := func(what string, got, want []float32) {
			if e := relErr(got, want); !(e > 1e-4 && e < 2e-2) {
				t.Errorf("%s %s: bf16 vs fp32 relative error %.2g, want within (1e-4, 2e-2)", name, what, e)
			}
		}
		// y = x + f(x): compare the residual branch, not x itself.
		for i := range y32 {
			y32[i] -= x[i]
			y16[i] -= x[i]
		}
		check("y−x", y16, y32)
		check("dx", dx16, dx32)
		for _, p := range c.BlockParams() {
			check(p.Suffix, *p.Get(g16), *p.Get(g32))
		}
	}
}

// TestComputeBF16Head: the head's loss in bf16 is within 1% of float32's.
func TestComputeBF16Head(t *testing.T) {
	c := smallConfig(false, false)
	w := randomWeights(c, 4)
	r := rand.New(rand.NewPCG(3, 3))
	n := 12
	x := randSlice(r, n*c.Hidden, 1)
	targets := make([]int, n)
	for i := range targets {
		targets[i] = r.IntN(c.Vocab)
	}
	loss := func(compute k.Compute) float64 {
		ws := HeadWorkspace{Compute: compute}
		s, _ := c.HeadLoss(&w.Head, x, targets, nil, nil, 1, &ws)
		return s
	}
	l32, l16 := loss(k.ComputeFP32), loss(k.ComputeBF16)
	if l32 == l16 || math.Abs(l16-l32) > 0.01*math.Abs(l32) {
		t.Fatalf("head loss bf16 %v vs fp32 %v: want different but within 1%%", l16, l32)
	}
}
