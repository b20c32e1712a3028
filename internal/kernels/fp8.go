package kernels

import "math"

// F8E4M3ToF32One decodes one OCP FP8 E4M3 value ("e4m3fn": bias 7, no
// infinities, S.1111.111 is NaN, max finite 448) to float32 exactly.
func F8E4M3ToF32One(b uint8) float32 {
	sign := float32(1)
	if b&0x80 != 0 {
		sign = -1
	}
	exp := int(b>>3) & 0xf
	man := float32(b & 7)
	switch {
	case exp == 0xf && b&7 == 7:
		return float32(math.NaN())
	case exp == 0: // subnormal: man/8 * 2^-6
		return sign * man * (1.0 / 512)
	}
	return sign * (1 + man/8) * float32(math.Ldexp(1, exp-7))
}

// F8E5M2ToF32One decodes one OCP FP8 E5M2 value (IEEE-like: bias 15, with
// ±Inf and NaN, max finite 57344) to float32 exactly. E5M2 is the top byte
// of an IEEE binary16, so it reuses that conversion.
func F8E5M2ToF32One(b uint8) float32 { return F16ToF32One(uint16(b) << 8) }

var (
	f8e4m3Table = fp8Table(F8E4M3ToF32One)
	f8e5m2Table = fp8Table(F8E5M2ToF32One)
)

func fp8Table(f func(uint8) float32) *[256]float32 {
	var t [256]float32
	for i := range t {
		t[i] = f(uint8(i))
	}
	return &t
}

// F8E4M3ToF32 sets dst[i] = e4m3(src[i]) * scale.
func F8E4M3ToF32(dst []float32, src []uint8, scale float32) {
	if len(dst) != len(src) {
		panic(errLength)
	}
	for i, b := range src {
		dst[i] = f8e4m3Table[b] * scale
	}
}

// F8E5M2ToF32 sets dst[i] = e5m2(src[i]) * scale.
func F8E5M2ToF32(dst []float32, src []uint8, scale float32) {
	if len(dst) != len(src) {
		panic(errLength)
	}
	for i, b := range src {
		dst[i] = f8e5m2Table[b] * scale
	}
}
