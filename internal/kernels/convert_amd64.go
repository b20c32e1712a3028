package kernels

import "golang.org/x/sys/cpu"

//go:noescape
func f16ToF32x16(dst *float32, src *uint16, n int)

//go:noescape
func f32ToF16x16(dst *uint16, src *float32, n int)

//go:noescape
func bf16ToF32x16(dst *float32, src *uint16, n int)

//go:noescape
func f32ToBF16x16(dst *uint16, src *float32, n int)

// simdConv enables the AVX-512 conversion loops (VCVTPH2PS/VCVTPS2PH, and
// integer bf16 rounding). ELSA_KERNELS=generic turns them off, so CI runs
// the scalar path too.
var simdConv = cpu.X86.HasAVX512F && cpu.X86.HasAVX512BW

// The fast paths convert the largest multiple of 16 elements and return how
// many they did; the callers finish the tail with scalar code.

// fast16 runs a 16-wide loop k over the largest multiple of 16 elements.
func fast16[D, S any](dst []D, src []S, k func(*D, *S, int)) int {
	n := len(src) &^ 15
	if !simdConv || n == 0 {
		return 0
	}
	k(&dst[0], &src[0], n)
	return n
}

func f16ToF32Fast(dst []float32, src []uint16) int  { return fast16(dst, src, f16ToF32x16) }
func f32ToF16Fast(dst []uint16, src []float32) int  { return fast16(dst, src, f32ToF16x16) }
func bf16ToF32Fast(dst []float32, src []uint16) int { return fast16(dst, src, bf16ToF32x16) }
func f32ToBF16Fast(dst []uint16, src []float32) int { return fast16(dst, src, f32ToBF16x16) }

//go:noescape
func expShiftSum16(dst, src *float32, n int, shift float32) float32

//go:noescape
func scaleMax16(x *float32, n int, s float32) float32

//go:noescape
func scale16(x *float32, n int, s float32)

// simdLen is how many leading elements of x the 16-wide softmax loops
// handle: the largest multiple of 16, or 0 without AVX-512.
func simdLen(x []float32) int {
	if !simdConv {
		return 0
	}
	return len(x) &^ 15
}
