package kernels

import (
	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas32"
)

const errShape = "kernels: slice too short for the stated shape"

// The three GEMM forms a linear layer needs, on row-major flat slices:
//
//	forward        Y = X·Wᵀ   MatMulNT
//	input grad     dX = dY·W  MatMulNN
//	weight grad    dW = dYᵀ·X MatMulTN
//
// With accumulate the product is added to C, otherwise C is overwritten.
// They currently run on gonum's pure-Go Sgemm (parallel over GOMAXPROCS).

// MatMulNT computes C[m×n] (+)= A[m×k] · B[n×k]ᵀ.
func MatMulNT(c, a, b []float32, m, n, k int, accumulate bool) {
	gemm(blas.NoTrans, blas.Trans, c, a, b, m, n, k, k, k, accumulate)
}

// MatMulNN computes C[m×n] (+)= A[m×k] · B[k×n].
func MatMulNN(c, a, b []float32, m, n, k int, accumulate bool) {
	gemm(blas.NoTrans, blas.NoTrans, c, a, b, m, n, k, k, n, accumulate)
}

// MatMulTN computes C[m×n] (+)= A[k×m]ᵀ · B[k×n].
func MatMulTN(c, a, b []float32, m, n, k int, accumulate bool) {
	gemm(blas.Trans, blas.NoTrans, c, a, b, m, n, k, m, n, accumulate)
}

func gemm(ta, tb blas.Transpose, c, a, b []float32, m, n, k, lda, ldb int, accumulate bool) {
	if len(c) < m*n || len(a) < m*k || len(b) < n*k {
		panic(errShape)
	}
	if m == 0 || n == 0 {
		return
	}
	beta := float32(0)
	if accumulate {
		beta = 1
	}
	if k == 0 {
		if !accumulate {
			clear(c[:m*n])
		}
		return
	}
	blas32.Implementation().Sgemm(ta, tb, m, n, k, 1, a, lda, b, ldb, beta, c, n)
}
