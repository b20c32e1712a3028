//go:build !amd64

package kernels

import "unsafe"

var (
	gapsDot    [3]func(int, int, *int64, unsafe.Pointer, unsafe.Pointer, *float32, *float32, int)
	bitmapDot4 [3]func(int, *[4]unsafe.Pointer, *[4]unsafe.Pointer, unsafe.Pointer, *[64]float32)
	denseDot4  [3]func(int, *[4]unsafe.Pointer, unsafe.Pointer, *[64]float32)
	denseMul   [3]func(int, unsafe.Pointer, unsafe.Pointer, unsafe.Pointer, unsafe.Pointer, int)
	bitmapMul  [3]func(int, unsafe.Pointer, unsafe.Pointer, unsafe.Pointer, unsafe.Pointer, int)
	gapsMul    [3]func(int, *int64, unsafe.Pointer, unsafe.Pointer, *float32, *float32)
)

const hasMatVecAsm = false

func useMatVecAsm(Elem) bool { return false }

// StreamRead reads every byte of b once (the bandwidth probe).
func StreamRead(b []byte) uint64 { return streamReadTail(b) }
