//go:build !amd64

package kernels

var simdConv = false

func f16ToF32Fast(dst []float32, src []uint16) int  { return 0 }
func f32ToF16Fast(dst []uint16, src []float32) int  { return 0 }
func bf16ToF32Fast(dst []float32, src []uint16) int { return 0 }
func f32ToBF16Fast(dst []uint16, src []float32) int { return 0 }

func simdLen(x []float32) int { return 0 }

func expShiftSum16(dst, src *float32, n int, shift float32) float32 { panic("unreachable") }
func scaleMax16(x *float32, n int, s float32) float32               { panic("unreachable") }
func scale16(x *float32, n int, s float32)                          { panic("unreachable") }
