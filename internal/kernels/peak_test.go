package kernels

import (
	"runtime"
	"testing"
)

// BenchmarkFMAPeak reports the measured one-core FMA peak (GFLOP/s) that
// GEMM efficiency is quoted against.
func BenchmarkFMAPeak(b *testing.B) {
	if runtime.GOARCH != "amd64" || FMAPeak() == 0 {
		b.Skip("needs AVX-512")
	}
	var best float64
	for i := 0; i < b.N; i++ {
		best = max(best, FMAPeak())
	}
	b.ReportMetric(best, "GFLOP/s")
}

// BenchmarkMicroKernel times the active micro-kernel alone on packed panels
// that sit in L1/L2 (k = kc), the ceiling the packed GEMM can approach.
func BenchmarkMicroKernel(b *testing.B) {
	k := active
	a := make([]float32, k.mr*kc)
	bb := make([]float32, k.nr*kc)
	c := make([]float32, k.mr*k.nr)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		k.fn(kc, &a[0], &bb[0], &c[0], k.nr)
	}
	b.ReportMetric(2*float64(k.mr*k.nr*kc)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
}
