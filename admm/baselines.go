package admm

import (
	"fmt"
	"math"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas64"
	"gonum.org/v1/gonum/mat"
)

// Magnitude prunes w [rows×cols] in place by |w|: unstructured per tensor
// (exactly PruneCount(rows·cols, s) zeros), or N:M per row group.
func Magnitude(w []float32, rows, cols int, s float64, p Pattern) {
	score := make([]float32, len(w))
	for i, v := range w {
		score[i] = float32(math.Abs(float64(v)))
	}
	if p.IsNM() {
		Apply(w, MaskRows(score, rows, cols, s, p))
		return
	}
	Apply(w, MaskTensor(score, rows, cols, s))
}

// WandaScores returns |W_ij|·‖X_j‖₂ for w [rows×cols], given colSq[j] =
// Σ_t X_tj² over the calibration inputs of the layer.
func WandaScores(w []float32, rows, cols int, colSq []float64) []float32 {
	score := make([]float32, len(w))
	for r := 0; r < rows; r++ {
		for j := 0; j < cols; j++ {
			score[r*cols+j] = float32(math.Abs(float64(w[r*cols+j])) * math.Sqrt(colSq[j]))
		}
	}
	return score
}

// Wanda prunes w in place by |W_ij|·‖X_j‖₂ compared within each output row
// (Sun et al. 2023), unstructured or N:M.
func Wanda(w []float32, rows, cols int, colSq []float64, s float64, p Pattern) {
	Apply(w, MaskRows(WandaScores(w, rows, cols, colSq), rows, cols, s, p))
}

// SparseGPTOptions are the reference defaults: 128-column blocks, 1%
// mean-diagonal dampening.
type SparseGPTOptions struct {
	BlockSize int     // 128
	Damp      float64 // 0.01
	// Log receives notes such as a raised dampening (nil: dropped).
	Log func(format string, args ...any)
}

// SparseGPT prunes w [rows×cols] in place with optimal-brain-surgeon
// updates (Frantar & Alistarh 2023), following the reference code: with
// H = XᵀX/n (h, cols×cols, row-major float64), dead inputs (H_jj = 0) get
// H_jj = 1 and W_:j = 0; H += damp·mean(diag H)·I; U = chol(H⁻¹) upper.
// Columns are processed in blocks of 128: the prune mask of a block is the
// lowest w²/U_jj² (unstructured: a share of PruneCount(rows·cols, s)
// proportional to the block's columns, so the tensor has exactly that many
// zeros; N:M: per row, chosen at the first column of each group), and each
// pruned column's error is propagated to the remaining columns through U.
// When H + damp is not positive definite the dampening is multiplied by 10
// (and logged) until it is.
func SparseGPT(w []float32, rows, cols int, h []float64, s float64, p Pattern, opt SparseGPTOptions) error {
	if opt.BlockSize <= 0 {
		opt.BlockSize = 128
	}
	if opt.Damp <= 0 {
		opt.Damp = 0.01
	}
	logf := opt.Log
	if logf == nil {
		logf = func(string, ...any) {}
	}
	W := make([]float64, len(w))
	for i, v := range w {
		W[i] = float64(v)
	}
	H := append([]float64(nil), h...)
	var meanDiag float64
	for j := 0; j < cols; j++ {
		if H[j*cols+j] == 0 {
			H[j*cols+j] = 1
			for r := 0; r < rows; r++ {
				W[r*cols+j] = 0
			}
		}
		meanDiag += H[j*cols+j]
	}
	meanDiag /= float64(cols)
	U, err := invCholUpper(H, cols, opt.Damp*meanDiag, logf)
	if err != nil {
		return err
	}

	total := PruneCount(rows*cols, s)
	pruned := 0
	bs := opt.BlockSize
	prune := make([]bool, rows*cols)
	for i1 := 0; i1 < cols; i1 += bs {
		i2 := min(i1+bs, cols)
		count := i2 - i1
		// Err [rows×count] collects each column's scaled error for the
		// block-wide update of the later columns.
		errs := make([]float64, rows*count)
		if !p.IsNM() {
			// Share of the tensor's prune count for this block, rounded so
			// the shares add up to exactly total.
			c := total*i2/cols - total*i1/cols
			score := make([]float32, rows*count)
			idx := make([]int, rows*count)
			for r := 0; r < rows; r++ {
				for j := i1; j < i2; j++ {
					d := U[j*cols+j]
					score[r*count+j-i1] = float32(W[r*cols+j] * W[r*cols+j] / (d * d))
					idx[r*count+j-i1] = r*count + j - i1
				}
			}
			blockPrune := make([]bool, rows*count)
			lowest(blockPrune, score, idx, c)
			for r := 0; r < rows; r++ {
				for j := 0; j < count; j++ {
					prune[r*cols+i1+j] = blockPrune[r*count+j]
				}
			}
			pruned += c
		}
		for j := i1; j < i2; j++ {
			if p.IsNM() && (j-i1)%p.M == 0 && j+p.M <= i2 {
				for r := 0; r < rows; r++ {
					score := make([]float32, p.M)
					idx := make([]int, p.M)
					for k := 0; k < p.M; k++ {
						d := U[(j+k)*cols+j+k]
						score[k] = float32(W[r*cols+j+k] * W[r*cols+j+k] / (d * d))
						idx[k] = k
					}
					m := make([]bool, p.M)
					lowest(m, score, idx, p.M-p.N)
					for k := 0; k < p.M; k++ {
						prune[r*cols+j+k] = m[k]
					}
				}
			}
			d := U[j*cols+j]
			for r := 0; r < rows; r++ {
				wv := W[r*cols+j]
				q := wv
				if prune[r*cols+j] {
					q = 0
				}
				e := (wv - q) / d
				W[r*cols+j] = q
				errs[r*count+j-i1] = e
				// Within the block: W[r, j+1:i2] -= e·U[j, j+1:i2].
				for k := j + 1; k < i2; k++ {
					W[r*cols+k] -= e * U[j*cols+k]
				}
			}
		}
		// Later blocks: W[:, i2:] -= Err · U[i1:i2, i2:].
		if i2 < cols {
			blas64.Implementation().Dgemm(blas.NoTrans, blas.NoTrans, rows, cols-i2, count, -1,
				errs, count, U[i1*cols+i2:], cols, 1, W[i2:], cols)
		}
	}
	if !p.IsNM() && pruned != total {
		return fmt.Errorf("admm: SparseGPT pruned %d, want %d", pruned, total)
	}
	for i, v := range W {
		w[i] = float32(v)
		if prune[i] {
			w[i] = 0
		}
	}
	return nil
}

// invCholUpper returns U with UᵀU = (H + damp·I)⁻¹, retrying with 10x the
// dampening while the matrix is not positive definite.
func invCholUpper(h []float64, n int, damp float64, logf func(string, ...any)) ([]float64, error) {
	for try := 0; try < 8; try++ {
		sym := mat.NewSymDense(n, nil)
		for i := 0; i < n; i++ {
			for j := i; j < n; j++ {
				v := h[i*n+j]
				if i == j {
					v += damp
				}
				sym.SetSym(i, j, v)
			}
		}
		var ch mat.Cholesky
		if ok := ch.Factorize(sym); ok {
			var inv mat.SymDense
			if err := ch.InverseTo(&inv); err == nil {
				var ch2 mat.Cholesky
				if ok := ch2.Factorize(&inv); ok {
					var u mat.TriDense
					ch2.UTo(&u)
					out := make([]float64, n*n)
					for i := 0; i < n; i++ {
						for j := i; j < n; j++ {
							out[i*n+j] = u.At(i, j)
						}
					}
					return out, nil
				}
			}
		}
		logf("SparseGPT: H + %.3g·I is not positive definite; raising the dampening to %.3g", damp, damp*10)
		damp *= 10
	}
	return nil, fmt.Errorf("admm: SparseGPT: the calibration Hessian stays singular even with dampening %.3g", damp)
}
