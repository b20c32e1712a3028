//go:build openblas

package kernels_test

// With -tags openblas the OpenBLAS backend joins the conformance suite and
// the benchmarks (select it with ELSA_KERNELS=openblas).
import _ "github.com/elsa-stream/elsa-stream/internal/kernels/openblas"
