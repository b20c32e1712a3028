package kernels

import "math"

// Exp32 returns e^x in float32 with relative error below 2.5e-7 (Cephes
// expf: Cody-Waite reduction x = n·ln2 + r, |r| ≤ ln2/2, then a degree-6
// polynomial for e^r). It is 5-10x faster than float64 math.Exp, which
// dominated softmax. x < −87.34 gives 0 (no subnormals), x > 88.72 gives
// +Inf, NaN gives NaN.
func Exp32(x float32) float32 {
	switch {
	case x != x:
		return x
	case x > 88.72283:
		return float32(math.Inf(1))
	case x < -87.33654:
		return 0
	}
	t := x * 1.442695041 // log2(e)
	var n int32
	if t >= 0 {
		n = int32(t + 0.5)
	} else {
		n = int32(t - 0.5)
	}
	fn := float32(n)
	r := x - fn*0.693359375 - fn*-2.12194440e-4
	p := float32(1.9875691500e-4)
	p = p*r + 1.3981999507e-3
	p = p*r + 8.3334519073e-3
	p = p*r + 4.1665795894e-2
	p = p*r + 1.6666665459e-1
	p = p*r + 5.0000001201e-1
	e := p*r*r + r + 1
	// Scale by 2^n in two steps so n = 128 or n = -126 stays representable.
	h := n / 2
	return e * math.Float32frombits(uint32(h+127)<<23) * math.Float32frombits(uint32(n-h+127)<<23)
}
