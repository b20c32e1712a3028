package kernels

import (
	"unsafe"

	"golang.org/x/sys/cpu"
)

//go:noescape
func bitmapDot4F32(chunks int, bm, vals *[4]unsafe.Pointer, x unsafe.Pointer, acc *[64]float32)

//go:noescape
func bitmapDot4BF16(chunks int, bm, vals *[4]unsafe.Pointer, x unsafe.Pointer, acc *[64]float32)

//go:noescape
func bitmapDot4F16(chunks int, bm, vals *[4]unsafe.Pointer, x unsafe.Pointer, acc *[64]float32)

//go:noescape
func denseDot4F32(chunks int, rows *[4]unsafe.Pointer, x unsafe.Pointer, acc *[64]float32)

//go:noescape
func denseDot4BF16(chunks int, rows *[4]unsafe.Pointer, x unsafe.Pointer, acc *[64]float32)

//go:noescape
func denseDot4F16(chunks int, rows *[4]unsafe.Pointer, x unsafe.Pointer, acc *[64]float32)

//go:noescape
func gapsDotF32(pairs, h int, rowptr *int64, gaps, vals unsafe.Pointer, x, y *float32, add int)

//go:noescape
func gapsDotBF16(pairs, h int, rowptr *int64, gaps, vals unsafe.Pointer, x, y *float32, add int)

//go:noescape
func gapsDotF16(pairs, h int, rowptr *int64, gaps, vals unsafe.Pointer, x, y *float32, add int)

//go:noescape
func denseMulF32(chunks int, words, vals, x, out unsafe.Pointer, mode int)

//go:noescape
func denseMulBF16(chunks int, words, vals, x, out unsafe.Pointer, mode int)

//go:noescape
func denseMulF16(chunks int, words, vals, x, out unsafe.Pointer, mode int)

//go:noescape
func bitmapMulF32(chunks int, words, vals, x, out unsafe.Pointer, mode int)

//go:noescape
func bitmapMulBF16(chunks int, words, vals, x, out unsafe.Pointer, mode int)

//go:noescape
func bitmapMulF16(chunks int, words, vals, x, out unsafe.Pointer, mode int)

//go:noescape
func gapsMulF32(rows int, rowptr *int64, gaps, vals unsafe.Pointer, x, out *float32)

//go:noescape
func gapsMulBF16(rows int, rowptr *int64, gaps, vals unsafe.Pointer, x, out *float32)

//go:noescape
func gapsMulF16(rows int, rowptr *int64, gaps, vals unsafe.Pointer, x, out *float32)

// The kernels by Elem.
var (
	denseMul  = [...]func(int, unsafe.Pointer, unsafe.Pointer, unsafe.Pointer, unsafe.Pointer, int){denseMulF32, denseMulBF16, denseMulF16}
	bitmapMul = [...]func(int, unsafe.Pointer, unsafe.Pointer, unsafe.Pointer, unsafe.Pointer, int){bitmapMulF32, bitmapMulBF16, bitmapMulF16}
	gapsMul   = [...]func(int, *int64, unsafe.Pointer, unsafe.Pointer, *float32, *float32){gapsMulF32, gapsMulBF16, gapsMulF16}

	gapsDot    = [...]func(int, int, *int64, unsafe.Pointer, unsafe.Pointer, *float32, *float32, int){gapsDotF32, gapsDotBF16, gapsDotF16}
	bitmapDot4 = [...]func(int, *[4]unsafe.Pointer, *[4]unsafe.Pointer, unsafe.Pointer, *[64]float32){bitmapDot4F32, bitmapDot4BF16, bitmapDot4F16}
	denseDot4  = [...]func(int, *[4]unsafe.Pointer, unsafe.Pointer, *[64]float32){denseDot4F32, denseDot4BF16, denseDot4F16}
)

// hasMatVecAsm: the kernels need AVX-512 F/BW (expand, masks), VBMI2
// (VPEXPANDW) and POPCNT.
var hasMatVecAsm = cpu.X86.HasAVX512F && cpu.X86.HasAVX512BW && cpu.X86.HasAVX512VBMI2 && cpu.X86.HasPOPCNT

// useMatVecAsm also honours ELSA_KERNELS=generic (which clears simdConv).
func useMatVecAsm(Elem) bool { return simdConv && hasMatVecAsm }

//go:noescape
func streamRead256(p *byte, n int) uint64

// StreamRead reads every byte of b once, as fast as the memory allows
// (AVX-512 loads; a word loop elsewhere): the bandwidth probe decoding
// speeds are compared with. The result only keeps the loads alive.
func StreamRead(b []byte) uint64 {
	n := len(b) &^ 255
	var x uint64
	if n > 0 && hasMatVecAsm {
		x = streamRead256(&b[0], n)
	} else {
		n = 0
	}
	return x ^ streamReadTail(b[n:])
}
