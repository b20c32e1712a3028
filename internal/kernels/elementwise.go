package kernels

import "math"

// RMSNorm computes, for each of the rows of x [rows×d],
// y = x · r · g with r = 1/sqrt(mean(x²) + eps), and stores r per row in
// inv (needed by the backward pass; may be nil).
func RMSNorm(y, inv, x, g []float32, rows, d int, eps float32) {
	if len(y) < rows*d || len(x) < rows*d || len(g) != d || (inv != nil && len(inv) < rows) {
		panic(errLength)
	}
	for t := 0; t < rows; t++ {
		xr := x[t*d : (t+1)*d]
		var ss float64
		for _, v := range xr {
			ss += float64(v) * float64(v)
		}
		r := float32(1 / math.Sqrt(ss/float64(d)+float64(eps)))
		if inv != nil {
			inv[t] = r
		}
		yr := y[t*d : (t+1)*d]
		for i, v := range xr {
			yr[i] = v * r * g[i]
		}
	}
}

// RMSNormBackward adds to dx and dg the gradients of y = x·r·g given dy:
//
//	dg_i += Σ_t dy_ti · x_ti · r_t
//	dx_t += r_t · (g ⊙ dy_t) − x_t · r_t³ · (Σ_j g_j dy_tj x_tj) / d
func RMSNormBackward(dx, dg, dy, x, g, inv []float32, rows, d int) {
	if len(dx) < rows*d || len(dy) < rows*d || len(x) < rows*d || len(g) != d || len(dg) != d || len(inv) < rows {
		panic(errLength)
	}
	for t := 0; t < rows; t++ {
		xr, dyr, dxr := x[t*d:(t+1)*d], dy[t*d:(t+1)*d], dx[t*d:(t+1)*d]
		r := inv[t]
		var dot float64
		for i := range xr {
			dot += float64(g[i]) * float64(dyr[i]) * float64(xr[i])
			dg[i] += dyr[i] * xr[i] * r
		}
		c := float32(dot) * r * r * r / float32(d)
		for i := range xr {
			dxr[i] += r*g[i]*dyr[i] - xr[i]*c
		}
	}
}

// Sigmoid is 1/(1+e^-x).
func Sigmoid(x float32) float32 { return 1 / (1 + Exp32(-x)) }

// SwiGLU sets act = silu(gate) ⊙ up with silu(g) = g·σ(g).
func SwiGLU(act, gate, up []float32) {
	if len(act) != len(gate) || len(up) != len(gate) {
		panic(errLength)
	}
	for i, g := range gate {
		act[i] = g * Sigmoid(g) * up[i]
	}
}

// SwiGLUBackward sets, from dact, the gradients of act = silu(gate)⊙up:
//
//	dup   = dact · silu(g)
//	dgate = dact · up · σ(g)·(1 + g·(1−σ(g)))
func SwiGLUBackward(dgate, dup, dact, gate, up []float32) {
	if len(dgate) != len(gate) || len(dup) != len(gate) || len(dact) != len(gate) || len(up) != len(gate) {
		panic(errLength)
	}
	for i, g := range gate {
		s := Sigmoid(g)
		dup[i] = dact[i] * g * s
		dgate[i] = dact[i] * up[i] * s * (1 + g*(1-s))
	}
}

// GeGLU sets act = gelu_tanh(gate) ⊙ up (Gemma's MLP), with
// gelu_tanh(g) = ½g(1 + tanh(√(2/π)(g + 0.044715g³))).
func GeGLU(act, gate, up []float32) {
	if len(act) != len(gate) || len(up) != len(gate) {
		panic(errLength)
	}
	for i, g := range gate {
		act[i] = geluTanh(g) * up[i]
	}
}

const geluC = 0.7978845608028654 // √(2/π)

func geluTanh(g float32) float32 {
	x := float64(g)
	return float32(0.5 * x * (1 + math.Tanh(geluC*(x+0.044715*x*x*x))))
}

// GeGLUBackward sets, from dact, the gradients of act = gelu_tanh(gate)⊙up:
//
//	dup   = dact · gelu(g)
//	dgate = dact · up · (½(1 + t) + ½g(1 − t²)·√(2/π)(1 + 3·0.044715g²)),
//	        t = tanh(√(2/π)(g + 0.044715g³))
func GeGLUBackward(dgate, dup, dact, gate, up []float32) {
	if len(dgate) != len(gate) || len(dup) != len(gate) || len(dact) != len(gate) || len(up) != len(gate) {
		panic(errLength)
	}
	for i, g := range gate {
		x := float64(g)
		t := math.Tanh(geluC * (x + 0.044715*x*x*x))
		dup[i] = dact[i] * float32(0.5*x*(1+t))
		d := 0.5*(1+t) + 0.5*x*(1-t*t)*geluC*(1+3*0.044715*x*x)
		dgate[i] = dact[i] * up[i] * float32(d)
	}
}

// SoftmaxInPlace replaces x with softmax(x) = e^(x−max) / Σ e^(x−max).
func SoftmaxInPlace(x []float32) { SoftmaxScaled(x, 1) }

// SoftmaxScaled replaces x with softmax(scale·x) (attention's scaled
// logits), in three passes: x *= scale with the maximum m, x = e^(x − m)
// with the sum s, x /= s. AVX-512 does 16 lanes of each pass (lane sums
// in float32); scalar code the tail.
func SoftmaxScaled(x []float32, scale float32) {
	if len(x) == 0 {
		return
	}
	n := simdLen(x)
	m := float32(math.Inf(-1))
	if n > 0 {
		m = scaleMax16(&x[0], n, scale)
	}
	for i := n; i < len(x); i++ {
		x[i] *= scale
		m = max(m, x[i])
	}
	var s float32
	if n > 0 {
		s = expShiftSum16(&x[0], &x[0], n, m)
	}
	for i := n; i < len(x); i++ {
		e := Exp32(x[i] - m)
		x[i] = e
		s += e
	}
	inv := 1 / s
	if n > 0 {
		scale16(&x[0], n, inv)
	}
	for i := n; i < len(x); i++ {
		x[i] *= inv
	}
}

// LogSumExp returns log Σ e^x computed stably.
func LogSumExp(x []float32) float64 {
	m := x[0]
	for _, v := range x[1:] {
		m = max(m, v)
	}
	var s float64
	for _, v := range x {
		s += math.Exp(float64(v - m))
	}
	return float64(m) + math.Log(s)
}

// RoPE rotates each head of x [rows×heads×hd] in HF's half-split layout:
// for i < hd/2 and position p of row t, with c = cos[p][i], s = sin[p][i]:
//
//	x'_i      = x_i·c − x_{i+hd/2}·s
//	x'_{i+hd/2} = x_{i+hd/2}·c + x_i·s
//
// cos and sin are [positions × hd/2]; pos[t] is row t's position.
// With inverse the transposed rotation (angle −θ) is applied, which is the
// backward pass.
func RoPE(x []float32, pos []int, cos, sin []float32, heads, hd int, inverse bool) {
	half := hd / 2
	for t, p := range pos {
		c, s := cos[p*half:(p+1)*half], sin[p*half:(p+1)*half]
		for h := 0; h < heads; h++ {
			v := x[(t*heads+h)*hd : (t*heads+h+1)*hd]
			for i := 0; i < half; i++ {
				a, b := v[i], v[i+half]
				si := s[i]
				if inverse {
					si = -si
				}
				v[i] = a*c[i] - b*si
				v[i+half] = b*c[i] + a*si
			}
		}
	}
}
