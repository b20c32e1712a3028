package admm

import (
	"math"

	"github.com/elsa-stream/elsa-stream/internal/kernels"
)

// Adam is the optimizer's configuration: decay rates of the first and
// second moments and the denominator's ε, no weight decay.
type Adam struct{ Beta1, Beta2, Eps float64 }

// ReferenceAdam is the reference code's setting (docs/design.md, Elsa).
var ReferenceAdam = Adam{Beta1: 0.9, Beta2: 0.95, Eps: 1e-8}

func (a Adam) orReference() Adam {
	if a == (Adam{}) {
		return ReferenceAdam
	}
	return a
}

// Step is one Adam step, the s-th (0-based), with learning rate lr:
//
//	m ← β₁m + (1 − β₁)g,  v ← β₂v + (1 − β₂)g²
//	w ← w − (lr / (1 − β₁^(s+1))) · m / (√v / √(1 − β₂^(s+1)) + ε)
//
// in place on w, m and v (all of g's length), as torch.optim.Adam does.
func (a Adam) Step(w, m, v, g []float32, lr float64, s int) {
	if len(w) != len(g) || len(m) != len(g) || len(v) != len(g) {
		panic("admm: Adam.Step: lengths differ")
	}
	// The coefficients are rounded to float32 once, from float64 (1 − β
	// too: 1 − 0.9 in float64 rounds to the float32 nearest 0.1).
	b1, c1 := float32(a.Beta1), float32(1-a.Beta1)
	b2, c2 := float32(a.Beta2), float32(1-a.Beta2)
	eps := float32(a.Eps)
	stepSize := float32(lr / (1 - math.Pow(a.Beta1, float64(s+1))))
	sqrtBC2 := float32(math.Sqrt(1 - math.Pow(a.Beta2, float64(s+1))))
	for i, gi := range g {
		m[i] = b1*m[i] + c1*gi
		v[i] = b2*v[i] + c2*gi*gi
		denom := float32(math.Sqrt(float64(v[i])))/sqrtBC2 + eps
		w[i] -= stepSize * m[i] / denom
	}
}

// proxGradient turns a tensor's loss gradient g into the one Adam takes,
// in place: g·clip (the global clip scale), plus the prox term λ(W − z + u)
// for pruned tensors, which is added after clipping and never clipped
// (docs/design.md, Elsa). g is the pending step's gradient, consumed by its
// update.
func proxGradient(g []float32, clip float32, st *state, lambda float32, pruned bool) {
	for i := range g {
		g[i] *= clip
		if pruned {
			g[i] += lambda * (st.W[i] - st.Z[i] + st.U[i])
		}
	}
}

// arithmeticRange is the elements one worker takes of a tensor's update:
// fixed, so the ranges (and the result, which is element-wise anyway) do
// not depend on the cores.
const arithmeticRange = 1 << 16

// stepArithmetic is a tensor's update after its state and gradient are
// decoded: the prox gradient, then Adam, element-wise, over ranges of
// arithmeticRange elements on every core.
func stepArithmetic(g []float32, clip float32, st *state, lambda float32, pruned bool, a Adam, lr float64, s int) {
	n := len(g)
	kernels.ParallelFor((n+arithmeticRange-1)/arithmeticRange, 1, func(r0, r1 int) {
		for r := r0; r < r1; r++ {
			lo, hi := r*arithmeticRange, min(n, (r+1)*arithmeticRange)
			part := state{W: st.W[lo:hi], M: st.M[lo:hi], V: st.V[lo:hi]}
			if pruned {
				part.Z, part.U = st.Z[lo:hi], st.U[lo:hi]
			}
			proxGradient(g[lo:hi], clip, &part, lambda, pruned)
			a.Step(part.W, part.M, part.V, g[lo:hi], lr, s)
		}
	})
}
