package kernels

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
	"unsafe"
)

// Matrix-vector products for decoding at batch 1, where every weight is
// read once per token and the speed is the memory bandwidth divided by the
// bytes per weight. A matrix stays in its storage type (a zero-copy view of
// the mapped checkpoint) and is widened in registers.
//
// Both forms compute, for each row r, sixteen lane sums over the chunks of
// 32 columns (gen_asm.go, matVecKernels, has the exact order of the fused
// multiply-adds of float32 x: lane l takes columns l and 16+l of a chunk,
// or 2l and 2l+1 for BF16), then y[r] = reduce16(acc). A pruned weight contributes
// +0 to its lane, so the bitmap form of a matrix gives exactly the product
// of its dense form (for finite x) on the same code path.

// Elem is the storage type of a matrix's values (of a GEMM weight operand:
// F32 means float32 data, the others 16-bit bits converted while packing).
type Elem uint8

// The storage types weights come in from checkpoints.
const (
	F32 Elem = iota
	BF16
	F16
)

// Size is the bytes of one value.
func (e Elem) Size() int {
	if e == F32 {
		return 4
	}
	return 2
}

func (e Elem) String() string { return [...]string{"F32", "BF16", "F16"}[e] }

// Chunks is the number of 32-column chunks (bitmap words) of a row of cols
// columns.
func Chunks(cols int) int { return (cols + 31) / 32 }

// Vector is an input of MatVec, prepared once for every matrix it meets:
// float32 zero-padded to 32·Chunks(cols) values, and the same values
// deinterleaved chunk by chunk for BF16 matrices (a chunk's 16 even
// columns, then its 16 odd ones).
type Vector struct {
	F32   []float32
	Pairs []float32
	cols  int
}

// Set makes v hold x.
func (v *Vector) Set(x []float32) {
	n := 32 * Chunks(len(x))
	v.F32 = grow32(v.F32, n)
	copy(v.F32, x)
	clear(v.F32[len(x):])
	v.Pairs = grow32(v.Pairs, n)
	for c := 0; c < n; c += 32 {
		for l := 0; l < 16; l++ {
			v.Pairs[c+l], v.Pairs[c+16+l] = v.F32[c+2*l], v.F32[c+2*l+1]
		}
	}
	v.cols = len(x)
}

func grow32(s []float32, n int) []float32 {
	if cap(s) < n {
		return make([]float32, n)
	}
	return s[:n]
}

// DenseRows is a row-major Rows × Cols matrix of Elem values.
type DenseRows struct {
	Rows, Cols int
	Elem       Elem
	Data       []byte // Rows·Cols·Elem.Size() bytes, little-endian
}

// BitmapRows is a pruned Rows × Cols matrix in the packed checkpoint's
// form: row r's pattern is Chunks(Cols) little-endian uint32 words at
// Bitmap[r·Chunks(Cols):] (bit j of word c: column 32c+j is kept; bits past
// Cols are 0), its kept values, in column order, are elements
// RowPtr[r] .. RowPtr[r+1] of Values.
type BitmapRows struct {
	Rows, Cols int
	Elem       Elem
	Bitmap     []uint32
	RowPtr     []int64 // Rows+1 offsets, RowPtr[0] = 0, RowPtr[Rows] = nnz
	Values     []byte  // nnz·Elem.Size() bytes
}

// Check verifies what the kernels rely on to stay inside the slices: the
// sizes, each row's popcount equal to its share of the values (so the
// offsets are monotone), and no bit set past Cols.
func (m *BitmapRows) Check() error {
	w := Chunks(m.Cols)
	switch {
	case m.Rows < 0 || m.Cols < 0:
		return fmt.Errorf("negative shape %d×%d", m.Rows, m.Cols)
	case len(m.Bitmap) != m.Rows*w:
		return fmt.Errorf("bitmap holds %d words, want %d rows × %d", len(m.Bitmap), m.Rows, w)
	case len(m.RowPtr) != m.Rows+1 || m.RowPtr[0] != 0:
		return fmt.Errorf("row offsets: %d, want %d starting at 0", len(m.RowPtr), m.Rows+1)
	case int64(len(m.Values)) != m.RowPtr[m.Rows]*int64(m.Elem.Size()):
		return fmt.Errorf("values hold %d bytes, the row offsets end at %d values of %d bytes", len(m.Values), m.RowPtr[m.Rows], m.Elem.Size())
	}
	tail := ^uint32(0)
	if m.Cols%32 != 0 {
		tail = 1<<(m.Cols%32) - 1
	}
	for r := 0; r < m.Rows; r++ {
		row := m.Bitmap[r*w : (r+1)*w]
		n := 0
		for _, b := range row {
			n += bits.OnesCount32(b)
		}
		if w > 0 && row[w-1]&^tail != 0 {
			return fmt.Errorf("row %d: bits set past column %d", r, m.Cols)
		}
		if int64(n) != m.RowPtr[r+1]-m.RowPtr[r] {
			return fmt.Errorf("row %d: the bitmap keeps %d values, the row offsets %d", r, n, m.RowPtr[r+1]-m.RowPtr[r])
		}
	}
	return nil
}

// Bytes is what one product reads of the matrix.
func (m *BitmapRows) Bytes() int64 {
	return int64(4*len(m.Bitmap)+8*len(m.RowPtr)) + int64(len(m.Values))
}

// Bytes is what one product reads of the matrix.
func (m *DenseRows) Bytes() int64 { return int64(len(m.Data)) }

// matVecRowsPerTask is the rows one worker takes at a time: enough to make
// a goroutine's start-up negligible next to reading them.
const matVecRowsPerTask = 64

// MatVec sets y[r] = Σ_c m[r][c]·x[c] for every row. Rows run in parallel.
func (m *DenseRows) MatVec(y []float32, x *Vector) {
	checkMatVec(y, x, m.Rows, m.Cols)
	if int64(len(m.Data)) != int64(m.Rows)*int64(m.Cols)*int64(m.Elem.Size()) {
		panic("kernels: DenseRows: data is not Rows × Cols values")
	}
	ParallelFor(m.Rows, matVecRowsPerTask, func(lo, hi int) { m.matVec(y, x, lo, hi) })
}

// MatVec sets y[r] = Σ_c m[r][c]·x[c] for every row. Rows run in
// parallel. m must have passed Check.
func (m *BitmapRows) MatVec(y []float32, x *Vector) {
	checkMatVec(y, x, m.Rows, m.Cols)
	ParallelFor(m.Rows, matVecRowsPerTask, func(lo, hi int) { m.matVec(y, x, lo, hi) })
}

func checkMatVec(y []float32, x *Vector, rows, cols int) {
	if len(y) < rows || x.cols != cols {
		panic(fmt.Sprintf("kernels: MatVec: y holds %d of %d rows, x %d of %d columns", len(y), rows, x.cols, cols))
	}
}

// operand is x as the kernels of e read it.
func (x *Vector) operand(e Elem) unsafe.Pointer {
	if e == BF16 {
		return unsafe.Pointer(unsafe.SliceData(x.Pairs))
	}
	return unsafe.Pointer(unsafe.SliceData(x.F32))
}

// matVec computes rows [lo, hi) four at a time (the last group repeats its
// final row).
func (m *DenseRows) matVec(y []float32, x *Vector, lo, hi int) {
	full := m.Cols / 32
	size := m.Elem.Size()
	var acc [64]float32
	var rows [4]unsafe.Pointer
	base := unsafe.Pointer(unsafe.SliceData(m.Data))
	for r0 := lo; r0 < hi; r0 += 4 {
		for i := range rows {
			rows[i] = unsafe.Add(base, min(r0+i, hi-1)*m.Cols*size)
		}
		if full > 0 && useMatVecAsm(m.Elem) {
			denseDot4[m.Elem](full, &rows, x.operand(m.Elem), &acc)
		} else {
			clear(acc[:])
			for i, p := range rows {
				for c := 0; c < full; c++ {
					chunkLanes(acc[16*i:16*i+16], func(j int) float32 { return value(p, m.Elem, 32*c+j) }, m.Elem, x.chunk(c))
				}
			}
		}
		for i := 0; i < 4 && r0+i < hi; i++ {
			if n := m.Cols % 32; n != 0 { // the tail chunk, zero-extended
				p := rows[i]
				chunkLanes(acc[16*i:16*i+16], func(j int) float32 {
					if j < n {
						return value(p, m.Elem, 32*full+j)
					}
					return 0
				}, m.Elem, x.chunk(full))
			}
			y[r0+i] = reduce16(acc[16*i : 16*i+16])
		}
	}
}

func (m *BitmapRows) matVec(y []float32, x *Vector, lo, hi int) {
	w := Chunks(m.Cols)
	size := int64(m.Elem.Size())
	var acc [64]float32
	var bm, vals [4]unsafe.Pointer
	vbase := unsafe.Pointer(unsafe.SliceData(m.Values))
	for r0 := lo; r0 < hi; r0 += 4 {
		for i := range bm {
			r := min(r0+i, hi-1)
			bm[i] = unsafe.Pointer(unsafe.SliceData(m.Bitmap[r*w:]))
			// An empty row reads nothing; keep its pointer inside the
			// values (one past their end is no valid Go pointer).
			vals[i] = vbase
			if m.RowPtr[r+1] > m.RowPtr[r] {
				vals[i] = unsafe.Add(vbase, m.RowPtr[r]*size)
			}
		}
		if w > 0 && useMatVecAsm(m.Elem) {
			bitmapDot4[m.Elem](w, &bm, &vals, x.operand(m.Elem), &acc)
		} else {
			for i := range bm {
				r := min(r0+i, hi-1)
				m.lanes(acc[16*i:16*i+16], m.Bitmap[r*w:(r+1)*w], vals[i], x.chunk)
			}
		}
		for i := 0; i < 4 && r0+i < hi; i++ {
			y[r0+i] = reduce16(acc[16*i : 16*i+16])
		}
	}
}

// lanes sets acc to the lane sums of one bitmap row whose values start at
// p, against the input whose chunk c is xc(c).
func (m *BitmapRows) lanes(acc []float32, words []uint32, p unsafe.Pointer, xc func(c int) []float32) {
	clear(acc)
	k := 0
	var chunk [32]float32
	for c, word := range words {
		for j := range chunk {
			chunk[j] = 0
			if word&(1<<j) != 0 {
				chunk[j] = value(p, m.Elem, k)
				k++
			}
		}
		chunkLanes(acc, func(j int) float32 { return chunk[j] }, m.Elem, xc(c))
	}
}

// chunkLanes adds a chunk of a row (its 32 weights w(j), against the
// chunk's 32 input values xc) to the 16 lane sums exactly as the kernels
// do.
func chunkLanes(acc []float32, w func(j int) float32, e Elem, xc []float32) {
	if e == BF16 {
		for l := 0; l < 16; l++ {
			acc[l] = fma32(w(2*l), xc[2*l], acc[l])
			acc[l] = fma32(w(2*l+1), xc[2*l+1], acc[l])
		}
		return
	}
	for h := 0; h < 2; h++ {
		for l := 0; l < 16; l++ {
			acc[l] = fma32(w(16*h+l), xc[16*h+l], acc[l])
		}
	}
}

// chunk is x's chunk c (32 values, in column order).
func (x *Vector) chunk(c int) []float32 { return x.F32[32*c : 32*c+32] }

// value widens element i of the values at p to float32.
func value(p unsafe.Pointer, e Elem, i int) float32 {
	switch e {
	case F32:
		return *(*float32)(unsafe.Add(p, 4*i))
	case BF16:
		return math.Float32frombits(uint32(*(*uint16)(unsafe.Add(p, 2*i))) << 16)
	default:
		return F16ToF32One(*(*uint16)(unsafe.Add(p, 2*i)))
	}
}

// fma32 is float32 fused multiply-add through float64 (the product of two
// float32 is exact there; the sum may round twice, so the generic path can
// differ from the hardware FMA in the last bit).
func fma32(a, b, c float32) float32 { return float32(math.FMA(float64(a), float64(b), float64(c))) }

// reduce16 sums 16 lanes as the registers fold: halves, then quarters, ...
// (s_l = a_l + a_{l+8}, then + 4, + 2, + 1).
func reduce16(a []float32) float32 {
	var s [8]float32
	for l := range s {
		s[l] = a[l] + a[l+8]
	}
	for l := 0; l < 4; l++ {
		s[l] += s[l+4]
	}
	s[0] += s[2]
	s[1] += s[3]
	return s[0] + s[1]
}

// PackRows is the packed form of whole rows: it sets words (Chunks(cols)
// per row) to the rows' patterns and appends their kept values to vals. A
// value is kept when its bits are not all zero, so −0 and every other bit
// pattern survive a round trip through UnpackRows.
func PackRows(words []uint32, vals, dense []byte, e Elem, cols int) []byte {
	size := e.Size()
	w := Chunks(cols)
	rows := len(dense) / (cols * size)
	if len(dense) != rows*cols*size || len(words) != rows*w {
		panic("kernels: PackRows: dense is not whole rows or words does not match")
	}
	clear(words)
	for r := 0; r < rows; r++ {
		row := dense[r*cols*size : (r+1)*cols*size]
		for c := 0; c < cols; c++ {
			v := row[c*size : (c+1)*size]
			if Kept(v) {
				words[r*w+c/32] |= 1 << (c % 32)
				vals = append(vals, v...)
			}
		}
	}
	return vals
}

// UnpackRows writes whole rows of dense bytes from their bitmap words and
// packed values (zero where a bit is clear) and returns the bytes of vals
// it used; it fails when vals runs out.
func UnpackRows(dense []byte, words []uint32, vals []byte, e Elem, cols int) (int, error) {
	size := e.Size()
	w := Chunks(cols)
	rows := len(dense) / (cols * size)
	if len(dense) != rows*cols*size || len(words) != rows*w {
		panic("kernels: UnpackRows: dense is not whole rows or words does not match")
	}
	clear(dense)
	k := 0
	for r := 0; r < rows; r++ {
		for c, m := range words[r*w : (r+1)*w] {
			for m != 0 {
				l := bits.TrailingZeros32(m)
				m &= m - 1
				col := 32*c + l
				if col >= cols || k+size > len(vals) {
					return k, fmt.Errorf("row %d: the bitmap marks column %d, past the %d columns or the %d values", r, col, cols, len(vals)/size)
				}
				copy(dense[(r*cols+col)*size:], vals[k:k+size])
				k += size
			}
		}
	}
	return k, nil
}

// Kept is the packed form's rule for one value's bytes: kept unless every
// bit is zero (so −0 and any other pattern survive a round trip).
func Kept(v []byte) bool {
	for _, b := range v {
		if b != 0 {
			return true
		}
	}
	return false
}

// streamReadTail XORs b's bytes eight at a time (the probe's portable part).
func streamReadTail(b []byte) uint64 {
	var x uint64
	for len(b) >= 8 {
		x ^= binary.LittleEndian.Uint64(b)
		b = b[8:]
	}
	for _, c := range b {
		x ^= uint64(c)
	}
	return x
}
