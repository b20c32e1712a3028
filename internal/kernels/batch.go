package kernels

import (
	"fmt"
	"math/bits"
	"unsafe"
)

// Small-batch products: one matrix against up to BatchTokens vectors at
// once (the tokens of a prompt), every weight read and decoded once for
// all of them. At batch 1 a product is bound by the memory bandwidth; with
// many tokens by the multiply-adds, which then share the weights' loads,
// widening and index decoding (gen_asm.go, matMulKernels).

// BatchTokens is the most vectors one MatMul takes.
const BatchTokens = 16

// Batch is the input of MatMul: n ≤ BatchTokens vectors of one width, laid
// out once for every matrix it meets (the vectors past n are zero):
//   - F32, chunk by chunk: element (16c + t)·32 + j is column 32c + j of
//     vector t (zero past the width), what the dense and bitmap forms read;
//   - Pairs: the same with each 32 values deinterleaved (the 16 even
//     columns, then the 16 odd ones), for BF16 matrices;
//   - Cols, column by column: element 16·col + t, what the gap form reads
//     (one column of every vector per kept weight).
type Batch struct {
	F32, Pairs, Cols []float32
	n, cols          int
}

// BatchBytes is the memory of a Batch of vectors of cols values.
func BatchBytes(cols int) int64 {
	return 4 * BatchTokens * int64(2*32*Chunks(cols)+cols)
}

// Set makes b hold the n vectors of x (n rows of len(x)/n values).
func (b *Batch) Set(x []float32, n int) {
	if n < 1 || n > BatchTokens || len(x)%n != 0 {
		panic(fmt.Sprintf("kernels: Batch.Set: %d values as %d vectors (1 to %d, of one width)", len(x), n, BatchTokens))
	}
	cols := len(x) / n
	size := BatchTokens * 32 * Chunks(cols)
	b.F32, b.Pairs, b.Cols = grow32(b.F32, size), grow32(b.Pairs, size), grow32(b.Cols, BatchTokens*cols)
	clear(b.F32)
	clear(b.Cols)
	for t := 0; t < n; t++ {
		for c, v := range x[t*cols : (t+1)*cols] {
			b.F32[(c/32*BatchTokens+t)*32+c%32] = v
			b.Cols[c*BatchTokens+t] = v
		}
	}
	for i := 0; i < size; i += 32 {
		for l := 0; l < 16; l++ {
			b.Pairs[i+l], b.Pairs[i+16+l] = b.F32[i+2*l], b.F32[i+2*l+1]
		}
	}
	b.n, b.cols = n, cols
}

// Len is the number of vectors b holds.
func (b *Batch) Len() int { return b.n }

// chunk is vector t's chunk c (32 values, in column order).
func (b *Batch) chunk(t, c int) []float32 {
	i := (c*BatchTokens + t) * 32
	return b.F32[i : i+32]
}

// operand is the chunk layout the kernels of e read.
func (b *Batch) operand(e Elem) unsafe.Pointer {
	if e == BF16 {
		return unsafe.Pointer(unsafe.SliceData(b.Pairs))
	}
	return unsafe.Pointer(unsafe.SliceData(b.F32))
}

func checkMatMul(y []float32, x *Batch, rows, cols int) {
	if len(y) < x.n*rows || x.cols != cols {
		panic(fmt.Sprintf("kernels: MatMul: y holds %d of %d×%d values, x %d of %d columns", len(y), x.n, rows, x.cols, cols))
	}
}

// matMulRowsPerTask is the rows one worker takes at least (a row is
// BatchTokens products' work).
const matMulRowsPerTask = 8

// The dense and bitmap forms take matMulBlockRows rows at a time through
// the columns, matMulBlock chunks of 32 at a time: a block's input for 16
// vectors (16 KiB) and the rows' lanes (another 16 KiB) stay in L1 while
// the rows' weights stream past. Without the blocks each chunk's 2 KiB of
// input came from L2 and the dense kernel ran at half the FMAs' rate.
const (
	matMulBlock     = 8
	matMulBlockRows = 16
)

// The dense and bitmap kernels' modes: fold the lanes into one sum per
// vector at the end, start from the lanes in out rather than from 0.
const (
	mulFold   = 1
	mulResume = 2
)

// blockMode is the kernels' mode for the block of chunks [c0, c0+n) of a
// row of full chunks (folded at the last when fold).
func blockMode(c0, n, full int, fold bool) int {
	mode := 0
	if c0 > 0 {
		mode |= mulResume
	}
	if fold && c0+n == full {
		mode |= mulFold
	}
	return mode
}

// MatMul sets y[t·Rows + r] = Σ_c m[r][c]·x_t[c] for every vector t of x
// and row r: for each vector the bits MatVec gives (the same lanes in the
// same order). Rows run in parallel.
func (m *DenseRows) MatMul(y []float32, x *Batch) {
	checkMatMul(y, x, m.Rows, m.Cols)
	if int64(len(m.Data)) != int64(m.Rows)*int64(m.Cols)*int64(m.Elem.Size()) {
		panic("kernels: DenseRows: data is not Rows × Cols values")
	}
	full, tail := m.Cols/32, m.Cols%32
	size := m.Elem.Size()
	asm := full > 0 && useMatVecAsm(m.Elem)
	base := unsafe.Pointer(unsafe.SliceData(m.Data))
	ParallelFor(m.Rows, matMulRowsPerTask, func(lo, hi int) {
		var lanes [matMulBlockRows][BatchTokens * 16]float32
		for r0 := lo; r0 < hi; r0 += matMulBlockRows {
			rows := min(matMulBlockRows, hi-r0)
			row := func(i int) unsafe.Pointer { return unsafe.Add(base, (r0+i)*m.Cols*size) }
			for c0 := 0; asm && c0 < full; c0 += matMulBlock {
				n := min(matMulBlock, full-c0)
				mode := blockMode(c0, n, full, tail == 0)
				xb := unsafe.Add(x.operand(m.Elem), c0*BatchTokens*32*4)
				for i := 0; i < rows; i++ {
					denseMul[m.Elem](n, nil, unsafe.Add(row(i), 32*c0*size), xb, unsafe.Pointer(&lanes[i][0]), mode)
				}
			}
			for i := 0; i < rows; i++ {
				r, p := r0+i, row(i)
				if asm && tail == 0 {
					for t := 0; t < x.n; t++ {
						y[t*m.Rows+r] = lanes[i][t]
					}
					continue
				}
				w := func(c int) func(j int) float32 {
					return func(j int) float32 {
						if 32*c+j < m.Cols {
							return value(p, m.Elem, 32*c+j)
						}
						return 0
					}
				}
				for t := 0; t < x.n; t++ {
					acc := lanes[i][16*t : 16*t+16]
					if !asm {
						clear(acc)
						for c := 0; c < full; c++ {
							chunkLanes(acc, w(c), m.Elem, x.chunk(t, c))
						}
					}
					if tail != 0 {
						chunkLanes(acc, w(full), m.Elem, x.chunk(t, full))
					}
					y[t*m.Rows+r] = reduce16(acc)
				}
			}
		}
	})
}

// MatMul: see DenseRows.MatMul; the bitmap form gives the bits of its
// dense form. m must have passed Check.
func (m *BitmapRows) MatMul(y []float32, x *Batch) {
	checkMatMul(y, x, m.Rows, m.Cols)
	words := Chunks(m.Cols)
	size := int64(m.Elem.Size())
	vbase := unsafe.Pointer(unsafe.SliceData(m.Values))
	asm := words > 0 && useMatVecAsm(m.Elem)
	ParallelFor(m.Rows, matMulRowsPerTask, func(lo, hi int) {
		var lanes [matMulBlockRows][BatchTokens * 16]float32
		var next [matMulBlockRows]int64 // each row's next value
		var acc [16]float32
		for r0 := lo; r0 < hi; r0 += matMulBlockRows {
			rows := min(matMulBlockRows, hi-r0)
			for i := 0; i < rows; i++ {
				next[i] = m.RowPtr[r0+i]
			}
			for c0 := 0; asm && c0 < words; c0 += matMulBlock {
				n := min(matMulBlock, words-c0)
				mode := blockMode(c0, n, words, true)
				xb := unsafe.Add(x.operand(m.Elem), c0*BatchTokens*32*4)
				for i := 0; i < rows; i++ {
					r := r0 + i
					bm := m.Bitmap[r*words+c0 : r*words+c0+n]
					// A row with no values left reads none; keep its
					// pointer inside the values (one past their end is
					// no valid Go pointer).
					vals := vbase
					if next[i] < m.RowPtr[r+1] {
						vals = unsafe.Add(vbase, next[i]*size)
					}
					bitmapMul[m.Elem](n, unsafe.Pointer(unsafe.SliceData(bm)), vals, xb, unsafe.Pointer(&lanes[i][0]), mode)
					for _, b := range bm {
						next[i] += int64(bits.OnesCount32(b))
					}
				}
			}
			for i := 0; i < rows; i++ {
				r := r0 + i
				for t := 0; t < x.n; t++ {
					if !asm {
						vals := vbase
						if m.RowPtr[r+1] > m.RowPtr[r] {
							vals = unsafe.Add(vbase, m.RowPtr[r]*size)
						}
						m.lanes(acc[:], m.Bitmap[r*words:(r+1)*words], vals, func(c int) []float32 { return x.chunk(t, c) })
						lanes[i][t] = reduce16(acc[:])
					}
					y[t*m.Rows+r] = lanes[i][t]
				}
			}
		}
	})
}

// gapsMulRows is the rows one call of the gap form's kernel takes (its
// output, 16 sums a row, stays on the stack).
const gapsMulRows = 64

// MatMul: see DenseRows.MatMul. The gap form sums a row's entries into
// four accumulators in turn (entry j of the first 4⌊n/4⌋ into acc[j mod 4],
// the rest into acc[0]) and adds them as (acc0 + acc1) + (acc2 + acc3), on
// both code paths: its product equals MatVec's to float32 rounding, not
// bit for bit. m must have passed Check.
func (m *GapsRows) MatMul(y []float32, x *Batch) {
	checkMatMul(y, x, m.Rows, m.Cols)
	ParallelFor(m.Rows, matMulRowsPerTask, func(lo, hi int) { m.mulRows(y, x, 0, false, lo, hi) })
}

// mulRows is MatMul for rows [lo, hi), x from its column first on; with
// add, the sums are added to y (GapsBlocks).
func (m *GapsRows) mulRows(y []float32, x *Batch, first int, add bool, lo, hi int) {
	var gaps, vals unsafe.Pointer // an empty matrix has no entries to point at
	if len(m.Gaps) > 0 {
		gaps, vals = unsafe.Pointer(&m.Gaps[0]), unsafe.Pointer(&m.Values[0])
	}
	xs := x.Cols[first*BatchTokens:]
	var out [gapsMulRows * BatchTokens]float32
	for r0 := lo; r0 < hi; r0 += gapsMulRows {
		n := min(gapsMulRows, hi-r0)
		if useMatVecAsm(m.Elem) {
			gapsMul[m.Elem](n, &m.RowPtr[r0], gaps, vals, unsafe.SliceData(xs), &out[0])
		} else {
			for i := 0; i < n; i++ {
				m.rowSums(out[i*BatchTokens:(i+1)*BatchTokens], r0+i, xs, x.n)
			}
		}
		for i := 0; i < n; i++ {
			for t := 0; t < x.n; t++ {
				if add {
					y[t*m.Rows+r0+i] += out[i*BatchTokens+t]
				} else {
					y[t*m.Rows+r0+i] = out[i*BatchTokens+t]
				}
			}
		}
	}
}

// rowSums is the generic path of the gap form's MatMul for row r: the
// sums of the n vectors of xs (a Batch's column layout) in out.
func (m *GapsRows) rowSums(out []float32, r int, xs []float32, n int) {
	var acc [4][BatchTokens]float32
	base := unsafe.Pointer(unsafe.SliceData(m.Values))
	lo, hi := m.RowPtr[r], m.RowPtr[r+1]
	quads := lo + (hi-lo)&^3
	col := -1
	for i := lo; i < hi; i++ {
		col += int(m.Gaps[i])
		a := &acc[0]
		if i < quads {
			a = &acc[(i-lo)%4]
		}
		w := value(base, m.Elem, int(i))
		xc := xs[col*BatchTokens : (col+1)*BatchTokens]
		for t := 0; t < n; t++ {
			a[t] = fma32(w, xc[t], a[t])
		}
	}
	for t := range out {
		out[t] = (acc[0][t] + acc[1][t]) + (acc[2][t] + acc[3][t])
	}
}
