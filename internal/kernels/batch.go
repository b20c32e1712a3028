package kernels

import (
	"fmt"
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

// MatMul sets y[t·Rows + r] = Σ_c m[r][c]·x_t[c] for every vector t of x
// and row r: for each vector the bits MatVec gives (the same lanes in the
// same order). Rows run in parallel.
func (m *DenseRows) MatMul(y []float32, x *Batch) {
	checkMatMul(y, x, m.Rows, m.Cols)
	if int64(len(m.Data)) != int64(m.Rows)*int64(m.Cols)*int64(m.Elem.Size()) {
		panic("kernels: DenseRows: data is not Rows × Cols values")
	}
	full, tail := m.Cols/32, m.Cols%32
	rowBytes := m.Cols * m.Elem.Size()
	asm := full > 0 && useMatVecAsm(m.Elem)
	ParallelFor(m.Rows, matMulRowsPerTask, func(lo, hi int) {
		var lanes [BatchTokens * 16]float32
		for r := lo; r < hi; r++ {
			p := unsafe.Pointer(unsafe.SliceData(m.Data[r*rowBytes:]))
			w := func(c int) func(j int) float32 {
				return func(j int) float32 {
					if 32*c+j < m.Cols {
						return value(p, m.Elem, 32*c+j)
					}
					return 0
				}
			}
			switch {
			case asm && tail == 0:
				denseMul[m.Elem](full, nil, p, x.operand(m.Elem), unsafe.Pointer(&lanes[0]), 1)
				for t := 0; t < x.n; t++ {
					y[t*m.Rows+r] = lanes[t]
				}
				continue
			case asm:
				denseMul[m.Elem](full, nil, p, x.operand(m.Elem), unsafe.Pointer(&lanes[0]), 0)
			default:
				clear(lanes[:])
				for t := 0; t < x.n; t++ {
					for c := 0; c < full; c++ {
						chunkLanes(lanes[16*t:16*t+16], w(c), m.Elem, x.chunk(t, c))
					}
				}
			}
			for t := 0; t < x.n; t++ {
				acc := lanes[16*t : 16*t+16]
				if tail != 0 {
					chunkLanes(acc, w(full), m.Elem, x.chunk(t, full))
				}
				y[t*m.Rows+r] = reduce16(acc)
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
		var sums [BatchTokens]float32
		var acc [16]float32
		for r := lo; r < hi; r++ {
			// An empty row reads nothing; keep its pointer inside the
			// values (one past their end is no valid Go pointer).
			vals := vbase
			if m.RowPtr[r+1] > m.RowPtr[r] {
				vals = unsafe.Add(vbase, m.RowPtr[r]*size)
			}
			bm := m.Bitmap[r*words : (r+1)*words]
			if asm {
				bitmapMul[m.Elem](words, unsafe.Pointer(unsafe.SliceData(bm)), vals, x.operand(m.Elem), unsafe.Pointer(&sums[0]), 1)
			} else {
				for t := 0; t < x.n; t++ {
					m.lanes(acc[:], bm, vals, func(c int) []float32 { return x.chunk(t, c) })
					sums[t] = reduce16(acc[:])
				}
			}
			for t := 0; t < x.n; t++ {
				y[t*m.Rows+r] = sums[t]
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
	asm := useMatVecAsm(m.Elem)
	var gaps, vals unsafe.Pointer // an empty matrix has no entries to point at
	if len(m.Gaps) > 0 {
		gaps, vals = unsafe.Pointer(&m.Gaps[0]), unsafe.Pointer(&m.Values[0])
	}
	ParallelFor(m.Rows, matMulRowsPerTask, func(lo, hi int) {
		var out [gapsMulRows * BatchTokens]float32
		for r0 := lo; r0 < hi; r0 += gapsMulRows {
			n := min(gapsMulRows, hi-r0)
			if asm {
				gapsMul[m.Elem](n, &m.RowPtr[r0], gaps, vals, unsafe.SliceData(x.Cols), &out[0])
			} else {
				for i := 0; i < n; i++ {
					m.rowSums(out[i*BatchTokens:(i+1)*BatchTokens], r0+i, x)
				}
			}
			for i := 0; i < n; i++ {
				for t := 0; t < x.n; t++ {
					y[t*m.Rows+r0+i] = out[i*BatchTokens+t]
				}
			}
		}
	})
}

// rowSums is the generic path of the gap form's MatMul for row r: the
// sums of every vector of x in out.
func (m *GapsRows) rowSums(out []float32, r int, x *Batch) {
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
		xs := x.Cols[col*BatchTokens : (col+1)*BatchTokens]
		for t := 0; t < x.n; t++ {
			a[t] = fma32(w, xs[t], a[t])
		}
	}
	for t := range out {
		out[t] = (acc[0][t] + acc[1][t]) + (acc[2][t] + acc[3][t])
	}
}
