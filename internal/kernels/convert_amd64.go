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

func f16ToF32Fast(dst []float32, src []uint16) int {
	n := len(src) &^ 15
	if !simdConv || n == 0 {
		return 0
	}
	f16ToF32x16(&dst[0], &src[0], n)
	return n
}

func f32ToF16Fast(dst []uint16, src []float32) int {
	n := len(src) &^ 15
	if !simdConv || n == 0 {
		return 0
	}
	f32ToF16x16(&dst[0], &src[0], n)
	return n
}

func bf16ToF32Fast(dst []float32, src []uint16) int {
	n := len(src) &^ 15
	if !simdConv || n == 0 {
		return 0
	}
	bf16ToF32x16(&dst[0], &src[0], n)
	return n
}

func f32ToBF16Fast(dst []uint16, src []float32) int {
	n := len(src) &^ 15
	if !simdConv || n == 0 {
		return 0
	}
	f32ToBF16x16(&dst[0], &src[0], n)
	return n
}

//go:noescape
func expShift16(dst, src *float32, n int, shift float32)

// expShiftFast sets dst[i] = e^(src[i] − shift) for the largest multiple of
// 16 elements (src[i] − shift ≤ 0) and returns how many it did.
func expShiftFast(dst, src []float32, shift float32) int {
	n := len(src) &^ 15
	if !simdConv || n == 0 {
		return 0
	}
	expShift16(&dst[0], &src[0], n, shift)
	return n
}
