//go:build !amd64

package kernels

func platformKernels() []*microKernel { return nil }

// FMAPeak is only measured on amd64 with AVX-512.
func FMAPeak() float64 { return 0 }
