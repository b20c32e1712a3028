package kernels

import "math"

// Axpy sets y += alpha·x.
func Axpy(alpha float32, x, y []float32) {
	if len(x) != len(y) {
		panic(errLength)
	}
	for i, v := range x {
		y[i] += alpha * v
	}
}

// Dot is Σ a[i]·b[i], summed in eight interleaved partial sums (lane
// i mod 8, then the lanes in a fixed tree), so the additions do not wait
// on each other; the order differs from a left-to-right sum by float32
// rounding.
func Dot(a, b []float32) float32 {
	if len(a) != len(b) {
		panic(errLength)
	}
	var s0, s1, s2, s3, s4, s5, s6, s7 float32
	i := 0
	for ; i+8 <= len(a); i += 8 {
		x, y := a[i:i+8:i+8], b[i:i+8:i+8]
		s0 += x[0] * y[0]
		s1 += x[1] * y[1]
		s2 += x[2] * y[2]
		s3 += x[3] * y[3]
		s4 += x[4] * y[4]
		s5 += x[5] * y[5]
		s6 += x[6] * y[6]
		s7 += x[7] * y[7]
	}
	for ; i < len(a); i++ {
		s0 += a[i] * b[i]
	}
	return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
}

// Scale sets x *= alpha.
func Scale(alpha float32, x []float32) {
	for i := range x {
		x[i] *= alpha
	}
}

// Int8Block is the block length of the block-wise absmax int8 format.
const Int8Block = 256

// QuantizeInt8Block encodes x in blocks of Int8Block values: for each block,
// scale = max|x|/127 and q = round(x/scale) clamped to [−127, 127] (round
// half away from zero). scales gets one float32 per block (len(q) = len(x),
// len(scales) = ceil(len(x)/Int8Block)). Decoding gives |x − q·scale| ≤
// scale/2 for finite x. A block holding NaN or ±Inf gets a NaN scale, so the
// damage shows on decode instead of vanishing.
func QuantizeInt8Block(q []int8, scales []float32, x []float32) {
	nb := (len(x) + Int8Block - 1) / Int8Block
	if len(q) != len(x) || len(scales) != nb {
		panic(errLength)
	}
	for b := 0; b < nb; b++ {
		blk := x[b*Int8Block : min(len(x), (b+1)*Int8Block)]
		var amax float32
		nonFinite := false
		for _, v := range blk {
			a := math.Float32frombits(math.Float32bits(v) &^ (1 << 31))
			if a > amax {
				amax = a
			}
			nonFinite = nonFinite || !(a <= math.MaxFloat32) // NaN or ±Inf
		}
		qb := q[b*Int8Block : b*Int8Block+len(blk)]
		if nonFinite {
			scales[b] = float32(math.NaN())
			clear(qb)
			continue
		}
		scales[b] = amax / 127
		if amax == 0 {
			clear(qb)
			continue
		}
		inv := 127 / amax
		for i, v := range blk {
			// Round half away from zero, as math.Round: float64(v·inv) ± 0.5
			// is exact, and the conversion truncates toward zero (branchless:
			// the signs are random).
			r := float64(v * inv)
			qb[i] = int8(max(-127, min(127, int32(r+math.Copysign(0.5, r)))))
		}
	}
}

// DequantizeInt8Block decodes QuantizeInt8Block's output: x = q·scale.
func DequantizeInt8Block(x []float32, q []int8, scales []float32) {
	nb := (len(x) + Int8Block - 1) / Int8Block
	if len(q) != len(x) || len(scales) != nb {
		panic(errLength)
	}
	for b, s := range scales {
		lo, hi := b*Int8Block, min(len(x), (b+1)*Int8Block)
		for i, v := range q[lo:hi] {
			x[lo+i] = float32(v) * s
		}
	}
}
