//go:build !amd64

package kernels

func platformKernels() []*microKernel { return nil }

// FMAPeak is only measured on amd64 with AVX-512.
func FMAPeak() float64 { return 0 }

func amxSupported() bool { return false }

func amxTile(cfg *amxConfig, ks int, a, b *uint16, c *float32, ldcBytes int, load int) {
	panic("kernels: AMX is amd64 only")
}

var hasPackAsm = false

func packPairsT16(dst *uint32, src *float32, ldBytes, steps, dstStep int) {
	panic("kernels: amd64 only")
}

func packPairsN32(dst *uint32, lo, hi *float32, panels, panelBytes int, interleave *uint16) {
	panic("kernels: amd64 only")
}

var hasTransposeAsm = false

func packT16(dst, src *float32, ldBytes, steps, dstStride int) {
	panic("kernels: amd64 only")
}
