package kernels

import "fmt"

// GapsBlockCols is the widest column block GapsBlocks gives one matrix:
// the block of x a product gathers from (32 KiB of float32 at most) then
// stays in the 48 KiB L1 beside the streams. 4096 rows at 10% from memory
// on the 2-core Intel host (BenchmarkGapsWide): 4096×11008 at once 6.9-7.0
// G entries/s, as two blocks of 5504 columns 7.7-7.9 (4096×4096 at once:
// 7.9-8.1, BenchmarkGapsFromMemory).
const GapsBlockCols = 8192

// GapsBlocks is a gap-coded matrix wider than GapsBlockCols, re-encoded as
// column blocks of equal width, each a GapsRows of its own with contiguous
// streams. A product takes the blocks one after another over a core's
// rows: for MatVec, block b's lanes start from y[r] in lane 0 (b > 0) and
// fold into y[r] as GapsRows' do; for MatMul, each block's sums are added
// to y. (Splitting the rows' existing streams in place was measured and is
// slower: 5.3-6.6 G entries/s for 11008 columns, the blocks' entries
// interleaved in memory defeating the prefetches.)
type GapsBlocks struct {
	Rows, Cols int
	Elem       Elem
	Blocks     []GapsRows
	First      []int // block b holds columns First[b] .. First[b]+Blocks[b].Cols
}

// ColumnBlocks re-encodes m (checked) as blocks of at most maxCols columns,
// fillers rebuilt for each block's gaps (m's own fillers, all-zero values,
// dropped): the same kept values at the same columns.
func (m *GapsRows) ColumnBlocks(maxCols int) *GapsBlocks {
	if maxCols < 1 {
		panic(fmt.Sprintf("kernels: ColumnBlocks(%d)", maxCols))
	}
	nb := blockCount(m.Cols, maxCols)
	size := m.Elem.Size()
	g := &GapsBlocks{Rows: m.Rows, Cols: m.Cols, Elem: m.Elem, Blocks: make([]GapsRows, nb), First: make([]int, nb+1)}
	for b := range g.First {
		g.First[b] = b * m.Cols / nb
	}
	share := len(m.Gaps)/nb + m.Rows // a block's likely entries
	for b := range g.Blocks {
		g.Blocks[b] = GapsRows{Rows: m.Rows, Cols: g.First[b+1] - g.First[b], Elem: m.Elem,
			RowPtr: make([]int64, 1, m.Rows+1), Gaps: make([]byte, 0, share), Values: make([]byte, 0, share*size)}
	}
	filler := make([]byte, size)
	for r := 0; r < m.Rows; r++ {
		b, last := 0, -1 // the current block and its last column there (block-relative)
		col := -1
		for i := m.RowPtr[r]; i < m.RowPtr[r+1]; i++ {
			col += int(m.Gaps[i])
			v := m.Values[int(i)*size : (int(i)+1)*size]
			if !Kept(v) {
				continue
			}
			for col >= g.First[b+1] {
				b, last = b+1, -1
			}
			c, blk := col-g.First[b], &g.Blocks[b]
			for ; c-last > MaxGap; last += MaxGap {
				blk.Gaps, blk.Values = append(blk.Gaps, MaxGap), append(blk.Values, filler...)
			}
			blk.Gaps, blk.Values = append(blk.Gaps, byte(c-last)), append(blk.Values, v...)
			last = c
		}
		for b := range g.Blocks {
			blk := &g.Blocks[b]
			blk.RowPtr = append(blk.RowPtr, int64(len(blk.Gaps)))
		}
	}
	g.First = g.First[:nb]
	return g
}

// ColumnBlocksBytes bounds ColumnBlocks(maxCols).Bytes() before the copy
// is made: m's bytes and the blocks' extra row offsets. The blocks never
// need more fillers than m has, since a block's first gap counts from the
// block's first column, no farther than from the entry before it.
func (m *GapsRows) ColumnBlocksBytes(maxCols int) int64 {
	return m.Bytes() + int64(8*(blockCount(m.Cols, maxCols)-1)*(m.Rows+1))
}

// blockCount is the number of column blocks of at most maxCols (≥ 1).
func blockCount(cols, maxCols int) int {
	return max(1, (cols+maxCols-1)/max(maxCols, 1))
}

// Bytes is what one product reads of the matrix.
func (g *GapsBlocks) Bytes() int64 {
	var n int64
	for b := range g.Blocks {
		n += g.Blocks[b].Bytes()
	}
	return n
}

// MatVec sets y[r] = Σ_c m[r][c]·x[c] for every row, block after block
// (see GapsBlocks). Rows run in parallel.
func (g *GapsBlocks) MatVec(y []float32, x *Vector) {
	checkMatVec(y, x, g.Rows, g.Cols)
	if !useMatVecAsm(g.Elem) || g.Rows == 0 {
		ParallelFor(g.Rows, matVecRowsPerTask, func(lo, hi int) {
			for b := range g.Blocks {
				g.Blocks[b].matVec(y, x.F32[g.First[b]:], lo, hi, b > 0)
			}
		})
		return
	}
	// Each core takes its pairs of rows block by block.
	inPairs(g.Rows, func(pairs, h, lo int) {
		for b := range g.Blocks {
			g.Blocks[b].dot(pairs, h, lo, y, x.F32[g.First[b]:], b > 0)
		}
	})
}

// MatMul sets y[t·Rows + r] = Σ_c m[r][c]·x_t[c] for the batch's vectors,
// each block's sums added to the previous ones'.
func (g *GapsBlocks) MatMul(y []float32, x *Batch) {
	checkMatMul(y, x, g.Rows, g.Cols)
	ParallelFor(g.Rows, matMulRowsPerTask, func(lo, hi int) {
		for b := range g.Blocks {
			g.Blocks[b].mulRows(y, x, g.First[b], b > 0, lo, hi)
		}
	})
}
