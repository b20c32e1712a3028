package kernels

import (
	"fmt"
	"unsafe"
)

// The gap-coded sparse form, for matrices under 1/8 dense (90% sparsity and
// beyond), where it is both the smaller and the faster form: 3 bytes per
// kept bf16 weight (a 1-byte column gap and the value) against the bitmap's
// 1/8 byte per column plus 2 per kept weight, and its product costs one
// gathered x per kept weight instead of one expand per 32 columns. On the
// 2-core Intel host, one core, 4096×4096 bf16 at 10% density from memory
// (scripts/sparse_matvec_bench.c): 35.0 G columns/s against 12.3 for a
// bitmap row; decoding at 50% and 70% the bitmap form stays faster
// (README, "Sparse checkpoints and decoding").

// GapsRows is a pruned Rows × Cols matrix in the packed checkpoint's
// gap-coded form. Row r's entries are RowPtr[r] .. RowPtr[r+1] of Gaps and
// Values; entry i of a row sits at column col(i) = col(i−1) + Gaps[i],
// counting from col(−1) = −1, so every gap is 1..255. A longer gap is
// bridged by filler entries of gap 255 whose value bits are all zero
// (which no kept value has, see Kept): they add 0·x to the product.
type GapsRows struct {
	Rows, Cols int
	Elem       Elem
	RowPtr     []int64 // Rows+1 offsets, RowPtr[0] = 0, RowPtr[Rows] = entries
	Gaps       []byte  // one per entry
	Values     []byte  // entries·Elem.Size() bytes
}

// MaxGap is the longest column gap one entry encodes.
const MaxGap = 255

// Check verifies what the kernels rely on to stay inside the slices: the
// sizes, monotone row offsets, every gap at least 1 and every row's last
// column inside Cols (so every gathered x is inside the vector).
func (m *GapsRows) Check() error {
	switch {
	case m.Rows < 0 || m.Cols < 0:
		return fmt.Errorf("negative shape %d×%d", m.Rows, m.Cols)
	case len(m.RowPtr) != m.Rows+1 || m.RowPtr[0] != 0:
		return fmt.Errorf("row offsets: %d, want %d starting at 0", len(m.RowPtr), m.Rows+1)
	case m.RowPtr[m.Rows] != int64(len(m.Gaps)):
		return fmt.Errorf("the row offsets end at %d entries, the gaps hold %d", m.RowPtr[m.Rows], len(m.Gaps))
	case int64(len(m.Values)) != int64(len(m.Gaps))*int64(m.Elem.Size()):
		return fmt.Errorf("values hold %d bytes, want %d entries of %d bytes", len(m.Values), len(m.Gaps), m.Elem.Size())
	}
	for r := 0; r < m.Rows; r++ {
		lo, hi := m.RowPtr[r], m.RowPtr[r+1]
		if hi < lo || hi > int64(len(m.Gaps)) {
			return fmt.Errorf("row %d: offsets %d..%d are not monotone inside the %d entries", r, lo, hi, len(m.Gaps))
		}
		col := int64(-1)
		for _, g := range m.Gaps[lo:hi] {
			if g == 0 {
				return fmt.Errorf("row %d: a gap of 0 (a column given twice)", r)
			}
			col += int64(g)
		}
		if col >= int64(m.Cols) {
			return fmt.Errorf("row %d: its entries reach column %d, past the %d columns", r, col, m.Cols)
		}
	}
	return nil
}

// Bytes is what one product reads of the matrix.
func (m *GapsRows) Bytes() int64 {
	return int64(8*len(m.RowPtr)+len(m.Gaps)) + int64(len(m.Values))
}

// MatVec sets y[r] = Σ_c m[r][c]·x[c] for every row. Rows run in
// parallel. m must have passed Check.
//
// Entry j of a row goes to lane j mod 16 (acc_l += w·x[col], in entry
// order), then y[r] = reduce16(acc), on both code paths (gen_asm.go,
// gapsKernels). The order differs from the dense form's, so the product
// equals the dense product to float32 rounding, not bit for bit.
func (m *GapsRows) MatVec(y []float32, x *Vector) {
	checkMatVec(y, x, m.Rows, m.Cols)
	if !useMatVecAsm(m.Elem) || m.Rows == 0 {
		ParallelFor(m.Rows, matVecRowsPerTask, func(lo, hi int) { m.matVec(y, x.F32, lo, hi, false) })
		return
	}
	inPairs(m.Rows, func(pairs, h, lo int) { m.dot(pairs, h, lo, y, x.F32, false) })
}

// inPairs runs dot-style work over rows in the kernel's pairs, in parallel:
// row p of the first half with row p + h of the second (gen_asm.go,
// gapsKernels: far-apart streams read faster), the middle row of an odd
// count alone (h = 0).
func inPairs(rows int, fn func(pairs, h, lo int)) {
	half := rows / 2
	h := rows - half
	ParallelFor(half, matVecRowsPerTask/2, func(lo, hi int) { fn(hi-lo, h, lo) })
	if h > half {
		fn(1, 0, half)
	}
}

// dot runs the kernel on pairs rows r, r + h for r in [lo, lo+pairs), x
// from the matrix's first column; with add, lane 0 of each row starts from
// y[r] instead of 0 (GapsBlocks).
func (m *GapsRows) dot(pairs, h, lo int, y, x []float32, add bool) {
	// An empty matrix has no entries to point at: the kernel reads none
	// then.
	var gaps, vals unsafe.Pointer
	if len(m.Gaps) > 0 {
		gaps, vals = unsafe.Pointer(&m.Gaps[0]), unsafe.Pointer(&m.Values[0])
	}
	a := 0
	if add {
		a = 1
	}
	gapsDot[m.Elem](pairs, h, &m.RowPtr[lo], gaps, vals, unsafe.SliceData(x), &y[lo], a)
}

// matVec is the generic path over rows [lo, hi) (x and add as for dot).
func (m *GapsRows) matVec(y, x []float32, lo, hi int, add bool) {
	var acc [16]float32
	base := unsafe.Pointer(unsafe.SliceData(m.Values))
	for r := lo; r < hi; r++ {
		clear(acc[:])
		if add {
			acc[0] = y[r]
		}
		col := -1
		for j, i := 0, m.RowPtr[r]; i < m.RowPtr[r+1]; j, i = j+1, i+1 {
			col += int(m.Gaps[i])
			acc[j%16] = fma32(value(base, m.Elem, int(i)), x[col], acc[j%16])
		}
		y[r] = reduce16(acc[:])
	}
}

// RowCounts is what one row of dense values of e takes in the two sparse
// forms, in one pass: its kept values (the bitmap form's share) and its
// gap-coded entries (the kept values and the fillers bridging gaps over
// MaxGap).
func RowCounts(row []byte, e Elem) (kept, entries int) {
	size := e.Size()
	col := -1
	for c := 0; c < len(row)/size; c++ {
		if Kept(row[c*size : (c+1)*size]) {
			kept++
			entries += 1 + (c-col-1)/MaxGap
			col = c
		}
	}
	return kept, entries
}

// PackGaps appends the gap-coded entries of whole rows (cols values of e
// each) to gaps and vals.
func PackGaps(gaps, vals, dense []byte, e Elem, cols int) ([]byte, []byte) {
	size := e.Size()
	if cols <= 0 || len(dense)%(cols*size) != 0 {
		panic("kernels: PackGaps: dense is not whole rows")
	}
	filler := make([]byte, size)
	for r := 0; r < len(dense); r += cols * size {
		col := -1
		for c := 0; c < cols; c++ {
			v := dense[r+c*size : r+(c+1)*size]
			if !Kept(v) {
				continue
			}
			for ; c-col > MaxGap; col += MaxGap {
				gaps, vals = append(gaps, MaxGap), append(vals, filler...)
			}
			gaps, vals = append(gaps, byte(c-col)), append(vals, v...)
			col = c
		}
	}
	return gaps, vals
}

// UnpackGaps writes whole rows of dense bytes (zero where no entry is)
// from their gap-coded entries: row r's are entries rowptr[r]−rowptr[0] ..
// rowptr[r+1]−rowptr[0] of gaps and vals. It fails on a gap of 0, an entry
// past the columns or entries that do not match the row offsets.
func UnpackGaps(dense []byte, rowptr []int64, gaps, vals []byte, e Elem, cols int) error {
	size := e.Size()
	rows := len(rowptr) - 1
	if rows < 0 || len(dense) != rows*cols*size {
		panic("kernels: UnpackGaps: dense is not the rows of the offsets")
	}
	n := rowptr[rows] - rowptr[0]
	if n < 0 || int64(len(gaps)) != n || int64(len(vals)) != n*int64(size) {
		return fmt.Errorf("the row offsets give %d entries, the gaps %d and the values %d", n, len(gaps), len(vals)/size)
	}
	clear(dense)
	for r := 0; r < rows; r++ {
		lo, hi := rowptr[r]-rowptr[0], rowptr[r+1]-rowptr[0]
		if lo > hi || hi > n {
			return fmt.Errorf("row %d: offsets %d..%d are not monotone", r, rowptr[r], rowptr[r+1])
		}
		col := -1
		for i := lo; i < hi; i++ {
			col += int(gaps[i])
			if gaps[i] == 0 || col >= cols {
				return fmt.Errorf("row %d: entry %d has gap %d, at column %d of %d", r, i, gaps[i], col, cols)
			}
			copy(dense[(r*cols+col)*size:], vals[i*int64(size):(i+1)*int64(size)])
		}
	}
	return nil
}
