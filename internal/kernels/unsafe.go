package kernels

import "unsafe"

// unsafeSlice views n float32s starting at p (micro-kernels take pointers so
// the assembly and Go kernels share one signature).
func unsafeSlice(p *float32, n int) []float32 { return unsafe.Slice(p, n) }
