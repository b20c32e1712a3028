//go:build !amd64

package kernels

var simdConv = false

func f16ToF32Fast(dst []float32, src []uint16) int  { return 0 }
func f32ToF16Fast(dst []uint16, src []float32) int  { return 0 }
func bf16ToF32Fast(dst []float32, src []uint16) int { return 0 }
func f32ToBF16Fast(dst []uint16, src []float32) int { return 0 }

func expShiftFast(dst, src []float32, shift float32) int { return 0 }
