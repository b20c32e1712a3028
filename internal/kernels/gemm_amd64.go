package kernels

import (
	"time"

	"golang.org/x/sys/cpu"
)

//go:generate go run gen_asm.go

//go:noescape
func sgemmKernel12x32(k int, a, b, c *float32, ldc int)

//go:noescape
func sgemmKernel6x16(k int, a, b, c *float32, ldc int)

// platformKernels lists the assembly kernels this CPU (and OS) supports.
func platformKernels() []*microKernel {
	var ks []*microKernel
	if cpu.X86.HasAVX512F {
		ks = append(ks, &microKernel{"avx512", 12, 32, sgemmKernel12x32})
	}
	if cpu.X86.HasAVX2 && cpu.X86.HasFMA {
		ks = append(ks, &microKernel{"avx2", 6, 16, sgemmKernel6x16})
	}
	return ks
}

//go:noescape
func fmaPeakLoop(n int)

// FMAPeak measures this core's float32 FMA throughput in GFLOP/s with a
// loop of 24 independent 16-lane FMA chains (0 when AVX-512 is absent).
func FMAPeak() float64 {
	if !cpu.X86.HasAVX512F {
		return 0
	}
	const n = 20_000_000
	fmaPeakLoop(1000)
	t := time.Now()
	fmaPeakLoop(n)
	return float64(n) * 24 * 16 * 2 / time.Since(t).Seconds() / 1e9
}

//go:noescape
func amxTile(cfg *amxConfig, ks int, a, b *uint16, c *float32, ldcBytes int, load int)

// amxSupported reports whether this CPU has AMX-TILE and AMX-BF16 and the
// operating system lets this process use the tile registers.
func amxSupported() bool {
	return cpu.X86.HasAMXTile && cpu.X86.HasAMXBF16 && amxPermit()
}

//go:noescape
func packPairsT16(dst *uint32, src *float32, ldBytes, steps, dstStep int)

//go:noescape
func packPairsN32(dst *uint32, lo, hi *float32, panels, panelBytes int, interleave *uint16)

//go:noescape
func packT16(dst, src *float32, ldBytes, steps, dstStride int)

// hasTransposeAsm: packT16 needs AVX-512F only.
var hasTransposeAsm = cpu.X86.HasAVX512F

// hasPackAsm: the AMX panel packers need AVX512_BF16 (VCVTNE2PS2BF16) and
// AVX512BW (VPERMW); every AMX CPU has both.
var hasPackAsm = cpu.X86.HasAVX512BF16 && cpu.X86.HasAVX512BW
