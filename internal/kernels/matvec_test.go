package kernels

import (
	"encoding/binary"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"unsafe"
)

// randomMatrix returns a rows × cols matrix of e values with the given
// density of nonzeros (pruned entries +0, a few −0 kept as written).
func randomMatrix(rng *rand.Rand, rows, cols int, e Elem, density float64) *DenseRows {
	size := e.Size()
	data := make([]byte, rows*cols*size)
	for i := 0; i < rows*cols; i++ {
		if rng.Float64() >= density {
			continue
		}
		v := float32(rng.NormFloat64())
		switch e {
		case F32:
			binary.LittleEndian.PutUint32(data[4*i:], math.Float32bits(v))
		case BF16:
			binary.LittleEndian.PutUint16(data[2*i:], BF16FromF32(v))
		case F16:
			binary.LittleEndian.PutUint16(data[2*i:], F16FromF32(v))
		}
	}
	return &DenseRows{Rows: rows, Cols: cols, Elem: e, Data: data}
}

// bitmapOf packs d with PackRows and fills the row offsets.
func bitmapOf(d *DenseRows) *BitmapRows {
	w := Chunks(d.Cols)
	b := &BitmapRows{Rows: d.Rows, Cols: d.Cols, Elem: d.Elem, Bitmap: make([]uint32, d.Rows*w), RowPtr: make([]int64, d.Rows+1)}
	b.Values = PackRows(b.Bitmap, nil, d.Data, d.Elem, d.Cols)
	for r := 0; r < d.Rows; r++ {
		n := 0
		for _, m := range b.Bitmap[r*w : (r+1)*w] {
			for ; m != 0; m &= m - 1 {
				n++
			}
		}
		b.RowPtr[r+1] = b.RowPtr[r] + int64(n)
	}
	return b
}

// gapsOf packs d with PackGaps and fills the row offsets.
func gapsOf(d *DenseRows) *GapsRows {
	g := &GapsRows{Rows: d.Rows, Cols: d.Cols, Elem: d.Elem, RowPtr: make([]int64, d.Rows+1)}
	rowBytes := d.Cols * d.Elem.Size()
	for r := 0; r < d.Rows; r++ {
		_, entries := RowCounts(d.Data[r*rowBytes:(r+1)*rowBytes], d.Elem)
		g.RowPtr[r+1] = g.RowPtr[r] + int64(entries)
	}
	g.Gaps, g.Values = PackGaps(nil, nil, d.Data, d.Elem, d.Cols)
	return g
}

func randomVector(rng *rand.Rand, cols int) *Vector {
	x := make([]float32, cols)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	v := &Vector{}
	v.Set(x)
	return v
}

// checkMatVecCase runs the three forms on both code paths and checks: the
// bitmap form equals the dense form bit for bit on each path, every result
// is within the float32 summation bound of a float64 reference
// (|y − ŷ| ≤ (d + 5)·2⁻²⁴·Σ|w·x|, d the depth of one lane's chain: 2·Chunks
// for the dense and bitmap forms, ⌈entries/16⌉ for the gaps, plus the
// fold), the gap form's two paths agree bit for bit, and both packed
// forms unpack to the same bytes.
func checkMatVecCase(t *testing.T, rng *rand.Rand, rows, cols int, e Elem, density float64) {
	t.Helper()
	d := randomMatrix(rng, rows, cols, e, density)
	b := bitmapOf(d)
	if err := b.Check(); err != nil {
		t.Fatalf("%d×%d %v: Check: %v", rows, cols, e, err)
	}
	back := make([]byte, len(d.Data))
	if n, err := UnpackRows(back, b.Bitmap, b.Values, e, cols); err != nil || n != len(b.Values) || string(back) != string(d.Data) {
		t.Fatalf("%d×%d %v: unpack used %d of %d bytes (%v), equal %v", rows, cols, e, n, len(b.Values), err, string(back) == string(d.Data))
	}
	g := gapsOf(d)
	if err := g.Check(); err != nil {
		t.Fatalf("%d×%d %v: gaps Check: %v", rows, cols, e, err)
	}
	if err := UnpackGaps(back, g.RowPtr, g.Gaps, g.Values, e, cols); err != nil || string(back) != string(d.Data) {
		t.Fatalf("%d×%d %v: gaps unpack: %v, equal %v", rows, cols, e, err, string(back) == string(d.Data))
	}
	gb := checkColumnBlocks(t, d, g, max(1, (cols+2)/3))
	x := randomVector(rng, cols)
	ref := make([]float64, rows)
	bound := make([]float64, rows)
	for r := 0; r < rows; r++ {
		for c := 0; c < cols; c++ {
			w := float64(value(unsafe.Pointer(&d.Data[0]), e, r*cols+c))
			xc := float64(x.F32[c])
			ref[r] += w * xc
			bound[r] += math.Abs(w * xc)
		}
		bound[r] *= 0x1p-24
	}
	depth := func(r int, gaps bool) float64 {
		if gaps {
			return float64((g.RowPtr[r+1]-g.RowPtr[r]+15)/16 + 5)
		}
		return float64(2*Chunks(cols) + 5)
	}
	paths, restore := matVecPaths(e)
	defer restore()
	var genericGaps, genericBlocks []float32
	for _, asm := range paths {
		simdConv = asm
		yd, yb, yg, yk := make([]float32, rows), make([]float32, rows), make([]float32, rows), make([]float32, rows)
		d.MatVec(yd, x)
		b.MatVec(yb, x)
		g.MatVec(yg, x)
		gb.MatVec(yk, x)
		if !asm {
			genericGaps, genericBlocks = yg, yk
		}
		for r := 0; r < rows; r++ {
			// Both paths sum a row's entries into the same lanes in the
			// same order (the kernel takes rows in pairs, each with its
			// own lanes): the same bits.
			if g := genericGaps[r]; math.Float32bits(yg[r]) != math.Float32bits(g) {
				t.Fatalf("%d×%d %v density %.3f asm=%v row %d: gaps %g, the generic path %g", rows, cols, e, density, asm, r, yg[r], g)
			}
			if g := genericBlocks[r]; math.Float32bits(yk[r]) != math.Float32bits(g) {
				t.Fatalf("%d×%d %v density %.3f asm=%v row %d: gaps in column blocks %g, the generic path %g", rows, cols, e, density, asm, r, yk[r], g)
			}
			if bd := blocksDepth(gb, r, 16); math.Abs(float64(yk[r])-ref[r]) > bd*bound[r] {
				t.Fatalf("%d×%d %v density %.3f asm=%v row %d: gaps in column blocks %g, reference %g, bound %g", rows, cols, e, density, asm, r, yk[r], ref[r], bd*bound[r])
			}
			if math.Float32bits(yd[r]) != math.Float32bits(yb[r]) && !(yd[r] == 0 && yb[r] == 0) {
				t.Fatalf("%d×%d %v density %.2f asm=%v row %d: bitmap %g != dense %g", rows, cols, e, density, asm, r, yb[r], yd[r])
			}
			if math.Abs(float64(yd[r])-ref[r]) > depth(r, false)*bound[r] {
				t.Fatalf("%d×%d %v asm=%v row %d: %g, reference %g, bound %g", rows, cols, e, asm, r, yd[r], ref[r], depth(r, false)*bound[r])
			}
			if math.Abs(float64(yg[r])-ref[r]) > depth(r, true)*bound[r] {
				t.Fatalf("%d×%d %v density %.3f asm=%v row %d: gaps %g, reference %g, bound %g", rows, cols, e, density, asm, r, yg[r], ref[r], depth(r, true)*bound[r])
			}
		}
	}
	checkMatMulCase(t, rng, d, b, g, gb, density)
}

// checkColumnBlocks splits g into blocks of at most maxCols columns and
// checks them: the block count, each block's Check, and that the blocks
// side by side unpack to d.
func checkColumnBlocks(t *testing.T, d *DenseRows, g *GapsRows, maxCols int) *GapsBlocks {
	t.Helper()
	gb := g.ColumnBlocks(maxCols)
	if want := (d.Cols + maxCols - 1) / maxCols; len(gb.Blocks) != max(1, want) || len(gb.First) != len(gb.Blocks) {
		t.Fatalf("%d×%d: ColumnBlocks(%d) gave %d blocks (%d starts), want %d", d.Rows, d.Cols, maxCols, len(gb.Blocks), len(gb.First), want)
	}
	size := d.Elem.Size()
	next := 0
	for b := range gb.Blocks {
		blk := &gb.Blocks[b]
		if err := blk.Check(); err != nil || gb.First[b] != next || blk.Cols > maxCols {
			t.Fatalf("%d×%d block %d: Check %v, first column %d (want %d), %d columns", d.Rows, d.Cols, b, err, gb.First[b], next, blk.Cols)
		}
		next += blk.Cols
		dense := make([]byte, d.Rows*blk.Cols*size)
		if err := UnpackGaps(dense, blk.RowPtr, blk.Gaps, blk.Values, d.Elem, blk.Cols); err != nil {
			t.Fatalf("block %d: %v", b, err)
		}
		for r := 0; r < d.Rows; r++ {
			want := d.Data[(r*d.Cols+gb.First[b])*size : (r*d.Cols+gb.First[b]+blk.Cols)*size]
			if string(dense[r*blk.Cols*size:(r+1)*blk.Cols*size]) != string(want) {
				t.Fatalf("%d×%d block %d row %d: the block does not unpack to the matrix's columns", d.Rows, d.Cols, b, r)
			}
		}
	}
	if next != d.Cols {
		t.Fatalf("%d×%d: the blocks cover %d columns", d.Rows, d.Cols, next)
	}
	if got, bound := gb.Bytes(), g.ColumnBlocksBytes(maxCols); got > bound {
		t.Fatalf("%d×%d: the blocks take %d bytes, past ColumnBlocksBytes %d", d.Rows, d.Cols, got, bound)
	}
	return gb
}

// blocksDepth is the rounding depth of row r of gb's product, per entry
// of a chain of lanes lanes (16 for MatVec, 4 for MatMul): each block's
// chains, its fold, and the additions of the blocks.
func blocksDepth(gb *GapsBlocks, r int, lanes int64) float64 {
	var depth int64
	for b := range gb.Blocks {
		p := gb.Blocks[b].RowPtr
		depth += (p[r+1]-p[r]+lanes-1)/lanes + 5
	}
	return float64(depth + int64(len(gb.Blocks)))
}

// matVecPaths is the code paths the kernels of e have here (generic, and
// asm where the CPU has it), as the values of simdConv, and what restores
// it.
func matVecPaths(e Elem) ([]bool, func()) {
	saved := simdConv
	paths := []bool{false}
	if useMatVecAsm(e) {
		paths = append(paths, true)
	}
	return paths, func() { simdConv = saved }
}

// checkMatMulCase runs the three forms' MatMul on both code paths against
// a batch of 1 to BatchTokens vectors (x's first among them) and checks:
// each vector's row of the dense and bitmap forms is the bits of MatVec on
// that path, the gap form's two paths agree bit for bit and are within the
// float32 bound of a float64 reference (depth: a quarter of the entries,
// plus the fold), and vectors past the batch's are not written.
func checkMatMulCase(t *testing.T, rng *rand.Rand, d *DenseRows, b *BitmapRows, g *GapsRows, gb *GapsBlocks, density float64) {
	t.Helper()
	rows, cols, e := d.Rows, d.Cols, d.Elem
	n := 1 + rng.IntN(BatchTokens)
	xs := make([]float32, n*cols)
	vecs := make([]*Vector, n)
	for i := range vecs {
		vecs[i] = randomVector(rng, cols)
		copy(xs[i*cols:], vecs[i].F32[:cols])
	}
	var batch Batch
	batch.Set(xs, n)
	paths, restore := matVecPaths(e)
	defer restore()
	var genericGaps, genericBlocks []float32
	for _, asm := range paths {
		simdConv = asm
		sentinel := float32(math.NaN())
		yd, yb, yg, yk := make([]float32, (n+1)*rows), make([]float32, (n+1)*rows), make([]float32, (n+1)*rows), make([]float32, (n+1)*rows)
		for _, y := range [][]float32{yd, yb, yg, yk} {
			for i := n * rows; i < len(y); i++ {
				y[i] = sentinel
			}
		}
		d.MatMul(yd, &batch)
		b.MatMul(yb, &batch)
		g.MatMul(yg, &batch)
		gb.MatMul(yk, &batch)
		if !asm {
			genericGaps, genericBlocks = yg, yk
		}
		one := make([]float32, rows)
		for v := 0; v < n; v++ {
			d.MatVec(one, vecs[v])
			for r := 0; r < rows; r++ {
				i := v*rows + r
				if math.Float32bits(yd[i]) != math.Float32bits(one[r]) {
					t.Fatalf("%d×%d %v asm=%v vector %d of %d row %d: MatMul %g, MatVec %g", rows, cols, e, asm, v, n, r, yd[i], one[r])
				}
				if math.Float32bits(yb[i]) != math.Float32bits(yd[i]) && !(yd[i] == 0 && yb[i] == 0) {
					t.Fatalf("%d×%d %v density %.2f asm=%v vector %d row %d: bitmap %g != dense %g", rows, cols, e, density, asm, v, r, yb[i], yd[i])
				}
				if math.Float32bits(yg[i]) != math.Float32bits(genericGaps[i]) {
					t.Fatalf("%d×%d %v density %.3f asm=%v vector %d row %d: gaps %g, the generic path %g", rows, cols, e, density, asm, v, r, yg[i], genericGaps[i])
				}
				var ref, bound float64
				for c := 0; c < cols; c++ {
					w := float64(value(unsafe.Pointer(&d.Data[0]), e, r*cols+c)) * float64(vecs[v].F32[c])
					ref += w
					bound += math.Abs(w)
				}
				depth := float64((g.RowPtr[r+1]-g.RowPtr[r]+3)/4 + 5)
				if math.Abs(float64(yg[i])-ref) > depth*bound*0x1p-24 {
					t.Fatalf("%d×%d %v density %.3f asm=%v vector %d row %d: gaps %g, reference %g, bound %g", rows, cols, e, density, asm, v, r, yg[i], ref, depth*bound*0x1p-24)
				}
				if math.Float32bits(yk[i]) != math.Float32bits(genericBlocks[i]) {
					t.Fatalf("%d×%d %v density %.3f asm=%v vector %d row %d: gaps in column blocks %g, the generic path %g", rows, cols, e, density, asm, v, r, yk[i], genericBlocks[i])
				}
				if bd := blocksDepth(gb, r, 4); math.Abs(float64(yk[i])-ref) > bd*bound*0x1p-24 {
					t.Fatalf("%d×%d %v density %.3f asm=%v vector %d row %d: gaps in column blocks %g, reference %g, bound %g", rows, cols, e, density, asm, v, r, yk[i], ref, bd*bound*0x1p-24)
				}
			}
		}
		for _, y := range [][]float32{yd, yb, yg, yk} {
			for i := n * rows; i < len(y); i++ {
				if !math.IsNaN(float64(y[i])) {
					t.Fatalf("%d×%d %v asm=%v: MatMul of %d vectors wrote past them (index %d)", rows, cols, e, asm, n, i)
				}
			}
		}
	}
}

func TestMatVecFormsAgree(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, e := range []Elem{F32, BF16, F16} {
		for _, shape := range [][2]int{{1, 1}, {3, 15}, {4, 16}, {5, 17}, {9, 172}, {64, 64}, {130, 257}, {257, 1024}, {6, 33}, {7, 63}, {5, 2000}} {
			for _, density := range []float64{0, 0.002, 0.05, 0.1, 0.3, 0.5, 1} {
				checkMatVecCase(t, rng, shape[0], shape[1], e, density)
			}
		}
	}
}

func FuzzMatVec(f *testing.F) {
	f.Add(uint64(1), uint16(7), uint16(33), uint8(1), uint8(25))
	f.Add(uint64(2), uint16(64), uint16(172), uint8(0), uint8(100))
	f.Fuzz(func(t *testing.T, seed uint64, rows, cols uint16, elem, percent uint8) {
		r, c := int(rows%300)+1, int(cols%600)+1
		checkMatVecCase(t, rand.New(rand.NewPCG(seed, 3)), r, c, Elem(elem%3), float64(percent%101)/100)
	})
}

func TestBitmapCheckRefuses(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	good := func() *BitmapRows { return bitmapOf(randomMatrix(rng, 8, 50, BF16, 0.3)) }
	cases := map[string]func(b *BitmapRows){
		"bit past the columns": func(b *BitmapRows) { b.Bitmap[1] |= 1 << 31 },
		"popcount":             func(b *BitmapRows) { b.Bitmap[0] ^= 1 },
		"values short":         func(b *BitmapRows) { b.Values = b.Values[:len(b.Values)-2] },
		"row offsets":          func(b *BitmapRows) { b.RowPtr = b.RowPtr[:3] },
		"bitmap short":         func(b *BitmapRows) { b.Bitmap = b.Bitmap[1:] },
	}
	for name, spoil := range cases {
		b := good()
		if b.RowPtr[b.Rows] == 0 {
			t.Fatal("empty matrix")
		}
		spoil(b)
		if err := b.Check(); err == nil {
			t.Errorf("%s: Check accepted it", name)
		}
	}
}

// BenchmarkMatVec reports the bytes/s one product reads, dense, bitmap and gaps,
// at 7B shapes (threads = GOMAXPROCS; -cpu 1,2).
func BenchmarkMatVec(b *testing.B) {
	rng := rand.New(rand.NewPCG(7, 8))
	for _, shape := range [][2]int{{4096, 4096}, {11008, 4096}, {4096, 11008}} {
		x := randomVector(rng, shape[1])
		y := make([]float32, shape[0])
		for _, density := range []float64{1, 0.5, 0.3, 0.1} {
			d := randomMatrix(rng, shape[0], shape[1], BF16, density)
			type form interface {
				MatVec(y []float32, x *Vector)
				Bytes() int64
			}
			forms := map[string]form{"dense": d}
			if density < 1 {
				sparsity := fmt.Sprintf("%.0f%%", 100*(1-density))
				forms = map[string]form{"bitmap" + sparsity: bitmapOf(d), "gaps" + sparsity: gapsOf(d)}
			}
			for _, name := range slices.Sorted(maps.Keys(forms)) {
				m := forms[name]
				b.Run(fmt.Sprintf("%s/BF16/%dx%d", name, shape[0], shape[1]), func(b *testing.B) {
					b.SetBytes(m.Bytes())
					for b.Loop() {
						m.MatVec(y, x)
					}
					b.ReportMetric(float64(shape[0]*shape[1])*float64(b.N)/b.Elapsed().Seconds()/1e9, "Gweights/s")
				})
			}
		}
	}
}

// BenchmarkStreamRead is the memory bandwidth: 2 GiB (beyond any cache
// here) read once per iteration by GOMAXPROCS workers, each over its own
// part in 16 MiB pieces of four streams.
func BenchmarkStreamRead(b *testing.B) {
	buf := make([]byte, 2<<30)
	for i := range buf {
		buf[i] = byte(i)
	}
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		ParallelFor(len(buf)>>24, 1, func(lo, hi int) {
			for p := lo; p < hi; p++ {
				StreamRead(buf[p<<24 : (p+1)<<24])
			}
		})
	}
}

// TestStreamRead: the probe reads every byte (its result is the XOR of
// all 8-byte words, which a skipped load would change).
func TestStreamRead(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	for _, n := range []int{0, 8, 256, 1000, 4096 + 64} {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		var want uint64
		for i := 0; i+8 <= n; i += 8 {
			want ^= binary.LittleEndian.Uint64(b[i:])
		}
		if got := StreamRead(b); got != want {
			t.Fatalf("%d bytes: StreamRead = %x, want %x", n, got, want)
		}
	}
}

// BenchmarkGapsFromMemory: the gap-coded product at 90% sparsity read from
// memory, not cache: 200 different 4096×4096 bf16 matrices (~1 GB) one
// after the other, as decoding reads a model's layers (threads =
// GOMAXPROCS). Reports entries/s and the bytes/s of the matrices.
func BenchmarkGapsFromMemory(b *testing.B) {
	rng := rand.New(rand.NewPCG(7, 8))
	ms := make([]*GapsRows, 200)
	var bytes, entries int64
	for i := range ms {
		ms[i] = gapsOf(randomMatrix(rng, 4096, 4096, BF16, 0.1))
		bytes += ms[i].Bytes()
		entries += int64(len(ms[i].Gaps))
	}
	x := randomVector(rng, 4096)
	y := make([]float32, 4096)
	b.SetBytes(bytes)
	for b.Loop() {
		for _, m := range ms {
			m.MatVec(y, x)
		}
	}
	b.ReportMetric(float64(entries)*float64(b.N)/b.Elapsed().Seconds()/1e9, "Gentries/s")
}

// BenchmarkGapsWide is BenchmarkGapsFromMemory at down_proj's shape,
// 4096×11008 bf16 at 10% (74 matrices, ~1 GB): all columns at once, and
// as ColumnBlocks(GapsBlockCols) (how decoding binds them).
func BenchmarkGapsWide(b *testing.B) {
	rng := rand.New(rand.NewPCG(7, 8))
	type product interface{ MatVec([]float32, *Vector) }
	once, blocks := make([]product, 74), make([]product, 74)
	var entries int64
	for i := range once {
		g := gapsOf(randomMatrix(rng, 4096, 11008, BF16, 0.1))
		once[i], blocks[i] = g, g.ColumnBlocks(GapsBlockCols)
		entries += int64(len(g.Gaps))
	}
	x := randomVector(rng, 11008)
	y := make([]float32, 4096)
	for _, c := range []struct {
		name string
		ms   []product
	}{{"at-once", once}, {"blocks", blocks}} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				for _, m := range c.ms {
					m.MatVec(y, x)
				}
			}
			b.ReportMetric(float64(entries)*float64(b.N)/b.Elapsed().Seconds()/1e9, "Gentries/s")
		})
	}
}

// BenchmarkMatMul compares, per vector, a 4096×4096 bf16 matrix's MatVec
// with its MatMul over a full batch (BatchTokens vectors): dense, the
// bitmap form at 50% and the gap form at 10%. The matrix fits the cache,
// so this is the arithmetic a prefill pays per token, not the bandwidth.
func BenchmarkMatMul(b *testing.B) {
	rng := rand.New(rand.NewPCG(9, 10))
	x := randomVector(rng, 4096)
	xs := make([]float32, BatchTokens*4096)
	for i := range xs {
		xs[i] = float32(rng.NormFloat64())
	}
	var batch Batch
	batch.Set(xs, BatchTokens)
	y := make([]float32, BatchTokens*4096)
	for _, c := range []struct {
		name    string
		density float64
		form    func(*DenseRows) interface {
			MatVec([]float32, *Vector)
			MatMul([]float32, *Batch)
		}
	}{
		{"dense", 1, func(d *DenseRows) interface {
			MatVec([]float32, *Vector)
			MatMul([]float32, *Batch)
		} {
			return d
		}},
		{"bitmap50", 0.5, func(d *DenseRows) interface {
			MatVec([]float32, *Vector)
			MatMul([]float32, *Batch)
		} {
			return bitmapOf(d)
		}},
		{"gaps10", 0.1, func(d *DenseRows) interface {
			MatVec([]float32, *Vector)
			MatMul([]float32, *Batch)
		} {
			return gapsOf(d)
		}},
	} {
		m := c.form(randomMatrix(rng, 4096, 4096, BF16, c.density))
		b.Run(c.name+"/MatVec", func(b *testing.B) {
			for b.Loop() {
				m.MatVec(y, x)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/1e3, "µs/vector")
		})
		b.Run(c.name+"/MatMul16", func(b *testing.B) {
			for b.Loop() {
				m.MatMul(y, &batch)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/BatchTokens/1e3, "µs/vector")
		})
	}
}
