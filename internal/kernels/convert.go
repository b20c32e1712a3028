// Package kernels holds the numeric kernels elsa-stream runs on flat float32
// buffers: dtype conversions and (as they land) GEMM and element-wise ops.
//
// Every exported kernel states its math in its doc comment and checks its
// arguments first; a programmer error (mismatched lengths) panics with a
// constant, package-prefixed message, as gonum does.
package kernels

import (
	"math"
	"sync"
)

const errLength = "kernels: mismatched slice lengths"

// BF16ToF32 sets dst[i] = float32(src[i]) where src holds bfloat16 bit
// patterns. bfloat16 is the top half of an IEEE float32, so the conversion is
// exact: dst bits = src bits << 16.
func BF16ToF32(dst []float32, src []uint16) {
	if len(dst) != len(src) {
		panic(errLength)
	}
	done := bf16ToF32Fast(dst, src)
	for i, h := range src[done:] {
		dst[done+i] = math.Float32frombits(uint32(h) << 16)
	}
}

// F32ToBF16 sets dst[i] = bf16(src[i]) with round-to-nearest-even. NaN stays
// NaN (quiet bit forced so that truncation cannot turn it into Inf); values
// beyond the bf16 range round to ±Inf exactly as IEEE rounding prescribes.
func F32ToBF16(dst []uint16, src []float32) {
	if len(dst) != len(src) {
		panic(errLength)
	}
	done := f32ToBF16Fast(dst, src)
	for i, f := range src[done:] {
		dst[done+i] = BF16FromF32(f)
	}
}

// BF16FromF32 rounds one float32 to bfloat16 bits (round to nearest, ties to even).
func BF16FromF32(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 { // NaN
		return uint16(b>>16) | 0x40
	}
	// Adding 0x7fff plus the lowest kept bit rounds to nearest even.
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}

var (
	f16Once  sync.Once
	f16Table *[1 << 16]float32
)

// f16ToF32Table returns the 65536-entry float16 -> float32 table. A table
// lookup converts ~1-2 G elements/s in pure Go, far above the bit-twiddling
// x448/float16 path (0.1-0.5 G/s measured on this machine class).
func f16ToF32Table() *[1 << 16]float32 {
	f16Once.Do(func() {
		var t [1 << 16]float32
		for i := range t {
			t[i] = F16ToF32One(uint16(i))
		}
		f16Table = &t
	})
	return f16Table
}

// F16ToF32One converts one IEEE binary16 value to float32 exactly
// (subnormals, ±Inf and NaN payloads included).
func F16ToF32One(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	man := uint32(h) & 0x3ff
	switch {
	case exp == 0x1f: // Inf or NaN
		return math.Float32frombits(sign | 0x7f800000 | man<<13)
	case exp == 0 && man == 0:
		return math.Float32frombits(sign)
	case exp == 0: // subnormal: value = man * 2^-24
		f := float32(man) * (1.0 / (1 << 24))
		if sign != 0 {
			f = -f
		}
		return f
	}
	return math.Float32frombits(sign | (exp+127-15)<<23 | man<<13)
}

// F16ToF32 sets dst[i] = float32(src[i]) where src holds IEEE binary16 bits.
// Exact: every binary16 value is representable in float32.
func F16ToF32(dst []float32, src []uint16) {
	if len(dst) != len(src) {
		panic(errLength)
	}
	done := f16ToF32Fast(dst, src)
	if done == len(src) {
		return
	}
	t := f16ToF32Table()
	for i, h := range src[done:] {
		dst[done+i] = t[h]
	}
}

// F16FromF32 rounds one float32 to IEEE binary16 bits with round to nearest,
// ties to even; overflow gives ±Inf, underflow gives (signed) subnormals or 0,
// NaN stays NaN.
func F16FromF32(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	abs := b & 0x7fffffff
	switch {
	case abs > 0x7f800000: // NaN
		return sign | 0x7e00 | uint16(abs>>13)&0x3ff
	case abs >= 0x477ff000: // rounds to >= 65520: Inf
		return sign | 0x7c00
	case abs < 0x38800000: // below the smallest normal 2^-14: subnormal or zero
		if abs < 0x33000000 { // < 2^-25 rounds to 0
			return sign
		}
		// value = m * 2^(e-23) with the implicit bit; target unit 2^-24.
		e := abs >> 23
		m := abs&0x7fffff | 0x800000
		shift := 126 - e // (e-127) - 23 + 24 = e - 126 -> right shift by 126-e
		r := m >> shift
		rem := m & (1<<shift - 1)
		half := uint32(1) << (shift - 1)
		if rem > half || (rem == half && r&1 == 1) {
			r++
		}
		return sign | uint16(r)
	}
	// Normal: rebias exponent, round mantissa from 23 to 10 bits.
	v := abs - (127-15)<<23
	v += 0xfff + (v>>13)&1
	return sign | uint16(v>>13)
}

// F32ToF16 sets dst[i] = binary16(src[i]) with round to nearest, ties to even.
func F32ToF16(dst []uint16, src []float32) {
	if len(dst) != len(src) {
		panic(errLength)
	}
	done := f32ToF16Fast(dst, src)
	for i, f := range src[done:] {
		dst[done+i] = F16FromF32(f)
	}
}
