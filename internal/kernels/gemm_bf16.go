package kernels

import (
	"fmt"
	"math"
	"sync"
	"unsafe"
)

// Compute is the precision the GEMMs run in.
//
//   - ComputeFP32: float32 operands, float32 accumulation.
//   - ComputeBF16: each operand element is rounded to bfloat16 (round to
//     nearest even) as it is packed, products are exact in float32 (8-bit
//     significands) and accumulate in float32 — autocast's bf16 matmul. The
//     inputs and the output stay float32 slices; nothing else changes.
//
// For C = A·B over depth k, ComputeBF16's error against the exact product of
// the unrounded operands is bounded, element by element, by
//
//	|Ĉ − C| ≤ (2⁻⁸ + 2⁻¹⁶ + k·2⁻²³)·Σ_p |a_ip|·|b_pj|
//
// (each operand's relative rounding error is at most 2⁻⁹, so a product's at
// most 2⁻⁸+2⁻¹⁸; the float32 sum adds at most k·2⁻²⁴ per term, doubled
// for the tiles' partial sums). Against the exact product of the rounded
// operands only the last term remains: that is what the conformance test
// checks, so it also pins the rounding.
//
// On CPUs with AMX-BF16 (Intel Sapphire Rapids and later, Linux) the bf16
// products run on the tile unit, 16×16×32 multiply-adds per TDPBF16PS;
// elsewhere the float32 kernels run on the rounded operands, the same
// numbers at float32 speed.
type Compute uint8

const (
	ComputeFP32 Compute = iota
	ComputeBF16
)

func (c Compute) String() string {
	if c == ComputeBF16 {
		return "bf16"
	}
	return "fp32"
}

// ParseCompute reads a --compute value: "fp32" or "bf16".
func ParseCompute(s string) (Compute, error) {
	switch s {
	case "fp32", "":
		return ComputeFP32, nil
	case "bf16":
		return ComputeBF16, nil
	}
	return 0, fmt.Errorf("unknown compute precision %q (want fp32 or bf16)", s)
}

// Backend names the kernels c runs on here: the float32 backend for fp32;
// "amx" for bf16 on the tile unit, else "<fp32 backend>, rounded operands".
func (c Compute) Backend() string {
	if c == ComputeFP32 {
		return Backend()
	}
	if amxUsable() {
		return "amx"
	}
	return Backend() + ", rounded operands"
}

// NT computes C[m×n] (+)= A[m×k]·B[n×k]ᵀ in precision c (see MatMulNT).
func (c Compute) NT(cm, a, b []float32, m, n, k int, accumulate bool) {
	c.gemm(cm, operand{data: a, ld: k}, operand{data: b, ld: k, trans: true}, m, n, k, accumulate, 0)
}

// NN computes C[m×n] (+)= A[m×k]·B[k×n] in precision c.
func (c Compute) NN(cm, a, b []float32, m, n, k int, accumulate bool) {
	c.gemm(cm, operand{data: a, ld: k}, operand{data: b, ld: n}, m, n, k, accumulate, 0)
}

// TN computes C[m×n] (+)= A[k×m]ᵀ·B[k×n] in precision c.
func (c Compute) TN(cm, a, b []float32, m, n, k int, accumulate bool) {
	c.gemm(cm, operand{data: a, ld: m, trans: true}, operand{data: b, ld: n}, m, n, k, accumulate, 0)
}

// NTSerial, NNSerial and TNSerial run on the calling goroutine only (see
// MatMulNTSerial).
func (c Compute) NTSerial(cm, a, b []float32, m, n, k int, accumulate bool) {
	c.gemm(cm, operand{data: a, ld: k}, operand{data: b, ld: k, trans: true}, m, n, k, accumulate, 1)
}

// NNSerial is NN on the calling goroutine only.
func (c Compute) NNSerial(cm, a, b []float32, m, n, k int, accumulate bool) {
	c.gemm(cm, operand{data: a, ld: k}, operand{data: b, ld: n}, m, n, k, accumulate, 1)
}

// TNSerial is TN on the calling goroutine only.
func (c Compute) TNSerial(cm, a, b []float32, m, n, k int, accumulate bool) {
	c.gemm(cm, operand{data: a, ld: m, trans: true}, operand{data: b, ld: n}, m, n, k, accumulate, 1)
}

// NTHalf is NT with B [n×k] as bf16 or fp16 bits (see MatMulNTHalf).
func (c Compute) NTHalf(cm, a []float32, b []uint16, kind Elem, m, n, k int, accumulate bool) {
	c.gemm(cm, operand{data: a, ld: k}, operand{half: b, kind: kind, ld: k, trans: true}, m, n, k, accumulate, 0)
}

// NNHalf is NN with B [k×n] as bf16 or fp16 bits.
func (c Compute) NNHalf(cm, a []float32, b []uint16, kind Elem, m, n, k int, accumulate bool) {
	c.gemm(cm, operand{data: a, ld: k}, operand{half: b, kind: kind, ld: n}, m, n, k, accumulate, 0)
}

// gemm runs on threads goroutines (0: GOMAXPROCS).
func (c Compute) gemm(cm []float32, a, b operand, m, n, k int, accumulate bool, threads int) {
	if c == ComputeBF16 {
		a.bf16, b.bf16 = true, true
	}
	gemmThreads(cm, a, b, m, n, k, accumulate, threads)
}

// roundBF16 rounds every value of x to the nearest bfloat16 (ties to even)
// in place: the rounded-operand path of ComputeBF16 on the float32 kernels.
func roundBF16(x []float32) {
	for i, f := range x {
		x[i] = math.Float32frombits(uint32(BF16FromF32(f)) << 16)
	}
}

// The AMX path. Tiles are 16 rows of 64 bytes; the micro-kernel (amxTile)
// computes a 32×32 block of C from a packed A panel (32 rows) and a packed B
// panel (32 columns), ks steps of 32 depth values each:
//
//	A panel, step s: two tiles, rows 0-15 then 16-31; row i holds A[i][32s..32s+31]
//	B panel, step s: two tiles, columns 0-15 then 16-31; row r holds, for
//	                 each column j, the pair B[32s+2r][j], B[32s+2r+1][j]
//
// so element (i, p) of an A panel is at tileOffA(i) + (p/32)·1024 + p%32 and
// element (p, j) of a B panel at tileOffB(j)+depthOffB(p) (in bf16 units,
// panels ks·1024 apart). Everything is zero-padded to whole tiles.
//
// Blocking: a depth block of amxKC (the C tiles are loaded and stored once
// per block, 45 ns of LDTILECFG and 8 tile moves against 32·32·1024·2
// flops), an A block of amxMC rows packed once per depth block, and a B
// block of amxNC columns (512 KiB at amxKC) that stays in L2 while every A
// panel of the block passes over it.
const (
	amxKC = 1024
	amxMC = 512
	amxNC = 256
	// panelStep is the bf16 elements of one step of a 32-row (or 32-column) panel.
	panelStep = 1024
)

// amxConfig is the LDTILECFG operand: palette 1, tiles 0-7 all 16 rows of 64 bytes.
type amxConfig [64]byte

var amxTileConfig = func() *amxConfig {
	var c amxConfig
	c[0] = 1
	for t := 0; t < 8; t++ {
		c[16+2*t] = 64 // bytes per row
		c[48+t] = 16   // rows
	}
	return &c
}()

var (
	amxOnce sync.Once
	amxOK   bool
)

// amxUsable reports whether the AMX bf16 path runs here: the CPU has
// AMX-TILE and AMX-BF16, the kernel granted this process the tile state,
// and the kernels are not forced to the generic ones.
func amxUsable() bool {
	amxOnce.Do(func() { amxOK = simdConv && amxSupported() })
	return amxOK
}

type amxBuffers struct {
	a, b []uint16
	tile []float32
	row  []uint16
}

var amxPool = sync.Pool{New: func() any { return &amxBuffers{} }}

// aligned returns n elements of *s starting at a 64-byte boundary (the tile
// kernel on line-split rows ran at less than half the speed).
func aligned[T uint16 | float32](s *[]T, n int) []T {
	const extra = 64
	if cap(*s) < n+extra {
		*s = make([]T, n+extra)
	}
	buf := (*s)[:cap(*s)]
	var zero T
	size := int(unsafe.Sizeof(zero))
	off := 0
	if mis := int(uintptr(unsafe.Pointer(&buf[0])) & 63); mis != 0 {
		off = (64 - mis) / size
	}
	return buf[off : off+n]
}

func tileOffA(i, ks int) int { return i>>5*ks*panelStep + (i&31)>>4*512 + (i&15)*32 }
func tileOffB(j, ks int) int { return j>>5*ks*panelStep + (j&31)>>4*512 + 2*(j&15) }
func depthOffB(p int) int    { return p>>5*panelStep + (p&31)>>1*32 + p&1 }
func panels(n int) int       { return (n + 31) / 32 }
func steps(kb int) int       { return (kb + 31) / 32 }
func padded(n, kb int) bool  { return n%32 != 0 || kb%32 != 0 }

// toBF16 converts o's n contiguous elements from off into dst.
func toBF16(dst []uint16, o operand, off, n int, tmp *[]float32) {
	dst = dst[:n]
	switch {
	case o.half == nil:
		F32ToBF16(dst, o.data[off:off+n])
	case o.kind == BF16:
		copy(dst, o.half[off:off+n])
	default:
		f := grow(tmp, n)
		halfToF32(o.kind)(f, o.half[off:off+n])
		F32ToBF16(dst, f)
	}
}

// packTilesA packs rows [i0, i0+mb) × depth [p0, p0+kb) of A into A panels.
func packTilesA(dst []uint16, a operand, i0, mb, p0, kb int, bufs *amxBuffers, tmp *[]float32) {
	ks := steps(kb)
	if padded(mb, kb) {
		clear(dst)
	}
	if !a.trans { // row i of A is contiguous in depth: its 32-value steps are tile rows
		row := aligned(&bufs.row, kb)
		for i := 0; i < mb; i++ {
			toBF16(row, a, (i0+i)*a.ld+p0, kb, tmp)
			d := dst[tileOffA(i, ks):]
			for s := 0; s*32 < kb; s++ {
				copy(d[s*panelStep:s*panelStep+32], row[32*s:min(kb, 32*s+32)])
			}
		}
		return
	}
	// Element (i, p) at data[p·ld+i]: convert a step's 32 depth rows, then
	// write each tile row (32 depth values of one i) from them.
	rows := aligned(&bufs.row, 32*mb)
	for s := 0; s*32 < kb; s++ {
		n := min(32, kb-32*s)
		for q := 0; q < n; q++ {
			toBF16(rows[q*mb:], a, (p0+32*s+q)*a.ld+i0, mb, tmp)
		}
		for i := 0; i < mb; i++ {
			d := dst[tileOffA(i, ks)+s*panelStep:][:n]
			for q := range d {
				d[q] = rows[q*mb+i]
			}
		}
	}
}

// packTilesB packs depth [p0, p0+kb) × columns [j0, j0+nb) of B into B panels.
func packTilesB(dst []uint16, b operand, p0, kb, j0, nb int, bufs *amxBuffers, tmp *[]float32) {
	ks := steps(kb)
	if padded(nb, kb) {
		clear(dst)
	}
	words := unsafe.Slice((*uint32)(unsafe.Pointer(unsafe.SliceData(dst))), len(dst)/2)
	simd := hasPackAsm && simdConv && b.half == nil
	if b.trans {
		// Element (p, j) at data[j·ld+p]: column j is contiguous in depth, its
		// pairs (2r, 2r+1) already the words of the tiles. Word r·16+c of a
		// tile is column c's pair r: a 16×pairs transpose, in registers
		// (packPairsT16) for whole tiles and steps, else through L1: convert
		// 16 columns, then write the tile rows in order.
		g := 0
		if simd && kb%32 == 0 {
			for ; g+16 <= nb; g += 16 {
				packPairsT16(&words[tileOffB(g, ks)/2], &b.data[(j0+g)*b.ld+p0], 4*b.ld, ks, 2*panelStep)
			}
		}
		half := (kb + 1) / 2
		cols := aligned(&bufs.row, 16*2*half)
		pairs := unsafe.Slice((*uint32)(unsafe.Pointer(unsafe.SliceData(cols))), 16*half)
		for ; g < nb; g += 16 {
			n := min(16, nb-g)
			for c := 0; c < n; c++ {
				col := cols[c*2*half : (c+1)*2*half]
				toBF16(col, b, (j0+g+c)*b.ld+p0, kb, tmp)
				if kb%2 == 1 {
					col[kb] = 0
				}
			}
			base := tileOffB(g, ks) / 2
			for r := 0; r < half; r++ {
				d := words[base+depthOffB(2*r)/2:][:n]
				for c := range d {
					d[c] = pairs[c*half+r]
				}
			}
		}
		return
	}
	// Element (p, j) at data[p·ld+j]: depth rows p and p+1 interleave into
	// the words of one tile row (packPairsN32 for whole panels).
	lo := aligned(&bufs.row, 2*nb)
	hi := lo[nb:]
	lo = lo[:nb]
	whole := 0
	if simd {
		whole = nb / 32 * 32
	}
	for p := 0; p < kb; p += 2 {
		dp := depthOffB(p) / 2
		g := 0
		if whole > 0 && p+1 < kb {
			row := (p0+p)*b.ld + j0
			packPairsN32(&words[dp], &b.data[row], &b.data[row+b.ld], whole/32, 2*ks*panelStep, &interleaveWords[0])
			g = whole
		}
		if g == nb {
			continue
		}
		toBF16(lo, b, (p0+p)*b.ld+j0, nb, tmp)
		if p+1 < kb {
			toBF16(hi, b, (p0+p+1)*b.ld+j0, nb, tmp)
		} else {
			clear(hi)
		}
		for ; g < nb; g += 16 {
			d := words[tileOffB(g, ks)/2+dp:][:min(16, nb-g)]
			for c := range d {
				d[c] = uint32(lo[g+c]) | uint32(hi[g+c])<<16
			}
		}
	}
}

// interleaveWords is packPairsN32's VPERMW index: word 2j of a tile row
// from row p (word j of the converted pair), word 2j+1 from row p+1.
var interleaveWords = func() (idx [32]uint16) {
	for j := 0; j < 16; j++ {
		idx[2*j], idx[2*j+1] = uint16(j), uint16(16+j)
	}
	return idx
}()

// gemmAMX runs the bf16 GEMM on the tile unit on one goroutine; C has row
// stride ldc.
func gemmAMX(c []float32, ldc int, a, b operand, m, n, k int, accumulate bool) {
	bufs := amxPool.Get().(*amxBuffers)
	defer amxPool.Put(bufs)
	var tmp []float32
	tile := aligned(&bufs.tile, 32*32)
	for pc := 0; pc < k; pc += amxKC {
		kb := min(amxKC, k-pc)
		ks := steps(kb)
		load := 0
		if accumulate || pc > 0 {
			load = 1
		}
		for ic := 0; ic < m; ic += amxMC {
			mb := min(amxMC, m-ic)
			ap := aligned(&bufs.a, panels(mb)*ks*panelStep)
			packTilesA(ap, a, ic, mb, pc, kb, bufs, &tmp)
			for jc := 0; jc < n; jc += amxNC {
				nb := min(amxNC, n-jc)
				bp := aligned(&bufs.b, panels(nb)*ks*panelStep)
				packTilesB(bp, b, pc, kb, jc, nb, bufs, &tmp)
				for it := 0; it < panels(mb); it++ {
					apanel := &ap[it*ks*panelStep]
					rows := min(32, mb-32*it)
					for jt := 0; jt < panels(nb); jt++ {
						bpanel := &bp[jt*ks*panelStep]
						cols := min(32, nb-32*jt)
						ci := (ic+32*it)*ldc + jc + 32*jt
						if rows == 32 && cols == 32 {
							amxTile(amxTileConfig, ks, apanel, bpanel, &c[ci], 4*ldc, load)
							continue
						}
						// Edge block: through a whole tile, the valid part copied in and out.
						clear(tile)
						if load == 1 {
							for r := 0; r < rows; r++ {
								copy(tile[32*r:32*r+cols], c[ci+r*ldc:])
							}
						}
						amxTile(amxTileConfig, ks, apanel, bpanel, &tile[0], 4*32, 1)
						for r := 0; r < rows; r++ {
							copy(c[ci+r*ldc:ci+r*ldc+cols], tile[32*r:32*r+cols])
						}
					}
				}
			}
		}
	}
}
