//go:build !amd64

package kernels

import "unsafe"

var (
	bitmapDot4 [3]func(int, *[4]unsafe.Pointer, *[4]unsafe.Pointer, *float32, *[64]float32)
	denseDot4  [3]func(int, *[4]unsafe.Pointer, *float32, *[64]float32)
)

func useMatVecAsm() bool { return false }
