//go:build openblas && cgo

// Package openblas registers Debian's OpenBLAS as the "openblas" GEMM backend
// of package kernels: the peer elsa-stream's own kernels are benchmarked
// against. It needs cgo and libopenblas-dev and is linked only by builds with
// -tags openblas (a blank import from a file with that tag), so the default
// build stays CGO_ENABLED=0.
//
// Debian's OpenBLAS 0.3.21 takes its SSE3 "Prescott" path on CPUs it does
// not recognise, about 5x slower (docs/design.md, This machine class): start-up warns on stderr
// and names the fix, OPENBLAS_CORETYPE=SkylakeX.
package openblas

/*
#cgo CFLAGS: -I/usr/include/x86_64-linux-gnu/openblas-pthread
#cgo LDFLAGS: -lopenblas
#include <cblas.h>
*/
import "C"

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"unsafe"

	"github.com/elsa-stream/elsa-stream/internal/kernels"
)

func init() {
	kernels.RegisterBLAS(gemm)
	if core := Core(); strings.EqualFold(core, "prescott") {
		fmt.Fprintf(os.Stderr, "elsa-stream: OpenBLAS runs its %q kernels on this CPU, ~5x slower; set OPENBLAS_CORETYPE=SkylakeX\n", core)
	}
}

// Core is the kernel family OpenBLAS selected ("SkylakeX", "Haswell", "Prescott", ...).
func Core() string { return C.GoString(C.openblas_get_corename()) }

func gemm(transA, transB bool, m, n, k int, a []float32, lda int, b []float32, ldb int, accumulate bool, c []float32, ldc int) {
	C.openblas_set_num_threads(C.int(runtime.GOMAXPROCS(0)))
	ta, tb := uint32(C.CblasNoTrans), uint32(C.CblasNoTrans)
	if transA {
		ta = C.CblasTrans
	}
	if transB {
		tb = C.CblasTrans
	}
	beta := C.float(0)
	if accumulate {
		beta = 1
	}
	C.cblas_sgemm(C.CblasRowMajor, ta, tb, C.blasint(m), C.blasint(n), C.blasint(k), 1,
		(*C.float)(unsafe.Pointer(&a[0])), C.blasint(lda),
		(*C.float)(unsafe.Pointer(&b[0])), C.blasint(ldb),
		beta, (*C.float)(unsafe.Pointer(&c[0])), C.blasint(ldc))
}
