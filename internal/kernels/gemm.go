package kernels

import (
	"fmt"
	"os"
	"runtime"
	"sync"
)

const errShape = "kernels: slice too short for the stated shape"

// The three GEMM forms a linear layer needs, on row-major flat slices:
//
//	forward        Y = X·Wᵀ   MatMulNT
//	input grad     dX = dY·W  MatMulNN
//	weight grad    dW = dYᵀ·X MatMulTN
//
// With accumulate the product is added to C, otherwise C is overwritten.
// They run a BLIS-style packed GEMM: A and B are packed into micro-panels
// (kc-deep), and a register-blocked micro-kernel (AVX-512 12×32, AVX2
// 6×16, or generic Go) accumulates each MR×NR tile of C. Work is split
// across GOMAXPROCS goroutines by columns (or rows when C is narrow), each
// with its own packing buffers, so no synchronisation is needed inside.

// MatMulNT computes C[m×n] (+)= A[m×k] · B[n×k]ᵀ.
func MatMulNT(c, a, b []float32, m, n, k int, accumulate bool) {
	ComputeFP32.NT(c, a, b, m, n, k, accumulate)
}

// MatMulNN computes C[m×n] (+)= A[m×k] · B[k×n].
func MatMulNN(c, a, b []float32, m, n, k int, accumulate bool) {
	ComputeFP32.NN(c, a, b, m, n, k, accumulate)
}

// MatMulTN computes C[m×n] (+)= A[k×m]ᵀ · B[k×n].
func MatMulTN(c, a, b []float32, m, n, k int, accumulate bool) {
	ComputeFP32.TN(c, a, b, m, n, k, accumulate)
}

// MatMulNTSerial, MatMulNNSerial and MatMulTNSerial are the same products
// on the calling goroutine only, for callers that already run one GEMM per
// core (attention over heads), so the cores are not oversubscribed.
func MatMulNTSerial(c, a, b []float32, m, n, k int, accumulate bool) {
	ComputeFP32.NTSerial(c, a, b, m, n, k, accumulate)
}

// MatMulNNSerial is MatMulNN on the calling goroutine only.
func MatMulNNSerial(c, a, b []float32, m, n, k int, accumulate bool) {
	ComputeFP32.NNSerial(c, a, b, m, n, k, accumulate)
}

// MatMulTNSerial is MatMulTN on the calling goroutine only.
func MatMulTNSerial(c, a, b []float32, m, n, k int, accumulate bool) {
	ComputeFP32.TNSerial(c, a, b, m, n, k, accumulate)
}

// MatMulNTHalf is MatMulNT with B [n×k] given as bf16 or fp16 bits (a
// weight straight from an mmapped checkpoint): the conversion to float32 is
// fused into packing, so no float32 copy of the weight is ever made.
func MatMulNTHalf(c, a []float32, b []uint16, kind Elem, m, n, k int, accumulate bool) {
	ComputeFP32.NTHalf(c, a, b, kind, m, n, k, accumulate)
}

// MatMulNNHalf is MatMulNN with B [k×n] given as bf16 or fp16 bits.
func MatMulNNHalf(c, a []float32, b []uint16, kind Elem, m, n, k int, accumulate bool) {
	ComputeFP32.NNHalf(c, a, b, kind, m, n, k, accumulate)
}

// operand is a matrix in memory with leading dimension ld. For the left
// operand A (m×k): element (i,p) is data[i·ld+p], or data[p·ld+i] when
// trans. For the right operand B (k×n): element (p,j) is data[p·ld+j], or
// data[j·ld+p] when trans. A right operand may instead hold 16-bit floats
// in half (kind says which), converted while packing. With bf16 its
// elements are rounded to bfloat16 as they are packed (ComputeBF16).
type operand struct {
	data  []float32
	half  []uint16
	kind  Elem
	ld    int
	trans bool
	bf16  bool
}

func (o operand) len() int {
	if o.half != nil {
		return len(o.half)
	}
	return len(o.data)
}

// microKernel computes C[mr×nr] += Apanel·Bpanel over k steps; Apanel holds
// mr values per step, Bpanel nr values per step, C has row stride ldc.
type microKernel struct {
	name   string
	mr, nr int
	fn     func(k int, a, b, c *float32, ldc int)
}

// Blocking: kc is the depth of packed panels. An A block of up to
// mcPanels·mr rows is packed once per kc step and reused across all of n;
// the inner loop keeps one mr×kc A micro-panel (12 KiB for AVX-512) in L1
// and streams the kc×nr B micro-panels of a kc×(ncPanels·nr) B block
// (512 KiB) from L2.
const (
	kc       = 256
	mcPanels = 64
	ncPanels = 16
)

var (
	kernelsAvailable []*microKernel // best first
	active           *microKernel
	activeBLAS       func(c []float32, a, b operand, m, n, k int, accumulate bool) // non-nil: external BLAS
)

func init() {
	kernelsAvailable = append(platformKernels(), &microKernel{"generic", 4, 16, genericKernel})
	active = kernelsAvailable[0]
	if os.Getenv("ELSA_KERNELS") == "generic" {
		simdConv = false
	}
	// "openblas" is selected by RegisterBLAS when that backend is linked.
	if name := os.Getenv("ELSA_KERNELS"); name != "" && name != "openblas" {
		if err := SetBackend(name); err != nil {
			fmt.Fprintf(os.Stderr, "elsa-stream: ELSA_KERNELS: %v; using %s\n", err, active.name)
		}
	}
}

// Backends lists the GEMM backends usable on this machine, fastest first.
func Backends() []string {
	var names []string
	for _, k := range kernelsAvailable {
		names = append(names, k.name)
	}
	if blasBackend != nil {
		names = append(names, "openblas")
	}
	return names
}

// Backend is the GEMM backend in use.
func Backend() string {
	if activeBLAS != nil {
		return "openblas"
	}
	return active.name
}

// SetBackend selects a GEMM backend by name ("avx512", "avx2", "generic",
// or "openblas" when built with -tags openblas). The environment variable
// ELSA_KERNELS does the same at start-up. Not safe to call concurrently
// with GEMMs.
func SetBackend(name string) error {
	if name == "openblas" && blasBackend != nil {
		activeBLAS = blasBackend
		return nil
	}
	for _, k := range kernelsAvailable {
		if k.name == name {
			active, activeBLAS = k, nil
			return nil
		}
	}
	return fmt.Errorf("GEMM backend %q is not available here (available: %v)", name, Backends())
}

// BLASGemm is an external sgemm in cblas row-major convention:
// C[m×n] (+)= op(A)·op(B) with op(A) m×k, op(B) k×n.
type BLASGemm func(transA, transB bool, m, n, k int, a []float32, lda int, b []float32, ldb int, accumulate bool, c []float32, ldc int)

// blasBackend is set by RegisterBLAS (package kernels/openblas).
var blasBackend func(c []float32, a, b operand, m, n, k int, accumulate bool)

// RegisterBLAS makes an external sgemm available as the "openblas" backend.
func RegisterBLAS(g BLASGemm) {
	blasBackend = func(c []float32, a, b operand, m, n, k int, accumulate bool) {
		g(a.trans, b.trans, m, n, k, a.data, a.ld, b.data, b.ld, accumulate, c, n)
	}
	if name := os.Getenv("ELSA_KERNELS"); name == "openblas" {
		activeBLAS = blasBackend
	}
}

// gemmThreads runs C (+)= A·B on up to threads goroutines (0: GOMAXPROCS),
// split by columns or rows in whole micro-tiles. Operands marked bf16 go to
// the AMX kernel when it is usable, else to the float32 kernel, which
// rounds them as it packs them.
func gemmThreads(c []float32, a, b operand, m, n, k int, accumulate bool, threads int) {
	if m < 0 || n < 0 || k < 0 || len(c) < m*n || a.len() < m*k || b.len() < n*k {
		panic(errShape)
	}
	if m == 0 || n == 0 {
		return
	}
	if k == 0 {
		if !accumulate {
			clear(c[:m*n])
		}
		return
	}
	// An external BLAS runs every call but the serial ones (those run
	// inside a parallel loop of ours, where BLAS threads would oversubscribe
	// the cores), with GOMAXPROCS threads - one thread included: it is the
	// peer of the single-core benchmarks.
	if activeBLAS != nil && b.half == nil && !a.bf16 && threads <= 0 {
		activeBLAS(c, a, b, m, n, k, accumulate)
		return
	}
	if threads <= 0 {
		threads = runtime.GOMAXPROCS(0)
	}
	kern := active
	mr, nr := kern.mr, kern.nr
	ldc := n
	run := func(c []float32, a, b operand, m, n int) { gemmSerial(kern, c, ldc, a, b, m, n, k, accumulate) }
	if a.bf16 && amxUsable() {
		mr, nr = 32, 32
		run = func(c []float32, a, b operand, m, n int) { gemmAMX(c, ldc, a, b, m, n, k, accumulate) }
	}
	// Below ~1 MFLOP the goroutine hand-off costs more than it saves.
	if threads > 1 && m*n*k >= 1<<19 {
		if n >= m || n >= threads*nr*4 {
			parts := splitAligned(n, nr, threads)
			ParallelFor(len(parts)-1, 1, func(lo, hi int) {
				for t := lo; t < hi; t++ {
					j0, j1 := parts[t], parts[t+1]
					run(c[j0:], a, b.cols(j0), m, j1-j0)
				}
			})
			return
		}
		parts := splitAligned(m, mr, threads)
		ParallelFor(len(parts)-1, 1, func(lo, hi int) {
			for t := lo; t < hi; t++ {
				i0, i1 := parts[t], parts[t+1]
				run(c[i0*n:], a.rows(i0), b, i1-i0, n)
			}
		})
		return
	}
	run(c, a, b, m, n)
}

// splitAligned cuts [0, n) into at most parts ranges whose inner bounds are
// multiples of align.
func splitAligned(n, align, parts int) []int {
	units := (n + align - 1) / align
	parts = max(1, min(parts, units))
	bounds := []int{0}
	for t := 1; t < parts; t++ {
		bounds = append(bounds, min(n, units*t/parts*align))
	}
	return append(bounds, n)
}

// cols returns B restricted to columns j0.. (B is the right operand).
func (o operand) cols(j0 int) operand {
	off := j0
	if o.trans {
		off = j0 * o.ld
	}
	if o.half != nil {
		o.half = o.half[off:]
	} else {
		o.data = o.data[off:]
	}
	return o
}

// rows returns A restricted to rows i0.. (A is the left operand).
func (o operand) rows(i0 int) operand {
	if o.trans {
		o.data = o.data[i0:]
	} else {
		o.data = o.data[i0*o.ld:]
	}
	return o
}

type packBuffers struct{ a, b, tile []float32 }

var bufPool = sync.Pool{New: func() any { return &packBuffers{} }}

// gemmSerial runs the packed GEMM on one goroutine; C has row stride ldc.
func gemmSerial(kern *microKernel, c []float32, ldc int, a, b operand, m, n, k int, accumulate bool) {
	mr, nr := kern.mr, kern.nr
	mc, nc := mr*mcPanels, nr*ncPanels
	bufs := bufPool.Get().(*packBuffers)
	defer bufPool.Put(bufs)
	abuf := grow(&bufs.a, mc*kc)
	bbuf := grow(&bufs.b, nc*kc)
	tile := grow(&bufs.tile, mr*nr)
	if !accumulate {
		for i := 0; i < m; i++ {
			clear(c[i*ldc : i*ldc+n])
		}
	}
	for pc := 0; pc < k; pc += kc {
		kcb := min(kc, k-pc)
		for ic := 0; ic < m; ic += mc {
			mcb := min(mc, m-ic)
			packA(abuf, a, ic, mcb, pc, kcb, mr)
			if a.bf16 {
				roundBF16(abuf[:(mcb+mr-1)/mr*mr*kcb])
			}
			for jc := 0; jc < n; jc += nc {
				ncb := min(nc, n-jc)
				packB(bbuf, b, pc, kcb, jc, ncb, nr)
				if b.bf16 {
					roundBF16(bbuf[:(ncb+nr-1)/nr*nr*kcb])
				}
				for ir := 0; ir < mcb; ir += mr {
					ap := &abuf[ir*kcb]
					for jr := 0; jr < ncb; jr += nr {
						bp := &bbuf[jr*kcb]
						ci := (ic+ir)*ldc + jc + jr
						if ir+mr <= mcb && jr+nr <= ncb {
							kern.fn(kcb, ap, bp, &c[ci], ldc)
							continue
						}
						// Edge tile: compute into a zeroed tile, add the valid part.
						clear(tile)
						kern.fn(kcb, ap, bp, &tile[0], nr)
						rows, cols := min(mr, mcb-ir), min(nr, ncb-jr)
						for r := 0; r < rows; r++ {
							dst := c[ci+r*ldc : ci+r*ldc+cols]
							for j, v := range tile[r*nr : r*nr+cols] {
								dst[j] += v
							}
						}
					}
				}
			}
		}
	}
}

func grow(s *[]float32, n int) []float32 {
	if cap(*s) < n {
		*s = make([]float32, n)
	}
	*s = (*s)[:n]
	return *s
}

// packA packs rows [i0, i0+mb) × depth [p0, p0+kb) of A into micro-panels
// of mr rows: panel q holds, for each p, rows q·mr..q·mr+mr−1 (zero-padded).
func packA(dst []float32, a operand, i0, mb, p0, kb, mr int) {
	for q := 0; q < mb; q += mr {
		panel := dst[q*kb : (q+mr)*kb]
		rows := min(mr, mb-q)
		if rows < mr {
			clear(panel)
		}
		if a.trans { // element (i,p) at data[p·ld+i]: rows of a panel are contiguous per p
			if mr == 12 && rows == 12 { // fixed-size copies, not a memmove call per 48 bytes
				for p := 0; p < kb; p++ {
					*(*[12]float32)(panel[p*12:]) = *(*[12]float32)(a.data[(p0+p)*a.ld+i0+q:])
				}
				continue
			}
			for p := 0; p < kb; p++ {
				src := a.data[(p0+p)*a.ld+i0+q:]
				copy(panel[p*mr:p*mr+rows], src[:rows])
			}
			continue
		}
		// Element (i,p) at data[i·ld+p]: rows of A, transposed into the panel.
		transposeRows(panel, mr, func(r int) []float32 {
			base := (i0+q+r)*a.ld + p0
			return a.data[base : base+kb]
		}, rows)
	}
}

// transposeRows writes rows row(0..n−1) (each kb long) into panel so that
// panel[p·stride + r] = row(r)[p]: the transposed copy packing needs when a
// panel's rows are the matrix's columns. Four rows per pass, so each pass
// writes 16 contiguous bytes.
func transposeRows(panel []float32, stride int, row func(r int) []float32, n int) {
	r := 0
	for ; r+4 <= n; r += 4 {
		r0, r1, r2, r3 := row(r), row(r+1), row(r+2), row(r+3)
		for p := range r0 {
			d := panel[p*stride+r : p*stride+r+4 : p*stride+r+4]
			d[0], d[1], d[2], d[3] = r0[p], r1[p], r2[p], r3[p]
		}
	}
	for ; r < n; r++ {
		for p, v := range row(r) {
			panel[p*stride+r] = v
		}
	}
}

// packB packs depth [p0, p0+kb) × columns [j0, j0+nb) of B into
// micro-panels of nr columns: panel q holds, for each p, columns
// q·nr..q·nr+nr−1 (zero-padded).
func packB(dst []float32, b operand, p0, kb, j0, nb, nr int) {
	if b.half != nil {
		packBHalf(dst, b, p0, kb, j0, nb, nr)
		return
	}
	if !b.trans && nr == 32 && nb%32 == 0 {
		// Element (p,j) at data[p·ld+j]: each depth row read once, in
		// order, into the 32-column slice of every panel (as fixed-size
		// copies, not a memmove call per 128 bytes: 7% of a TN GEMM).
		for p := 0; p < kb; p++ {
			src := b.data[(p0+p)*b.ld+j0:]
			for q := 0; q < nb; q += 32 {
				*(*[32]float32)(dst[q*kb+p*32:]) = *(*[32]float32)(src[q:])
			}
		}
		return
	}
	for q := 0; q < nb; q += nr {
		panel := dst[q*kb : (q+nr)*kb]
		cols := min(nr, nb-q)
		if cols < nr {
			clear(panel)
		}
		if !b.trans { // element (p,j) at data[p·ld+j]
			for p := 0; p < kb; p++ {
				src := b.data[(p0+p)*b.ld+j0+q:]
				copy(panel[p*nr:p*nr+cols], src[:cols])
			}
			continue
		}
		// Element (p,j) at data[j·ld+p]: weight rows, transposed into the
		// panel, 16 rows × 16 depth values at a time in registers where
		// the assembly runs (simdConv: not under ELSA_KERNELS=generic).
		if hasTransposeAsm && simdConv && cols%16 == 0 && kb >= 16 {
			steps := kb / 16
			for g := 0; g < cols; g += 16 {
				packT16(&panel[g], &b.data[(j0+q+g)*b.ld+p0], 4*b.ld, steps, 4*nr)
			}
			if rest := kb - 16*steps; rest > 0 {
				p1 := 16 * steps
				transposeRows(panel[p1*nr:], nr, func(j int) []float32 {
					base := (j0+q+j)*b.ld + p0 + p1
					return b.data[base : base+rest]
				}, cols)
			}
			continue
		}
		transposeRows(panel, nr, func(j int) []float32 {
			base := (j0+q+j)*b.ld + p0
			return b.data[base : base+kb]
		}, cols)
	}
}

// packBHalf is packB for 16-bit weights, converting to float32 on the way.
func packBHalf(dst []float32, b operand, p0, kb, j0, nb, nr int) {
	conv := halfToF32(b.kind)
	for q := 0; q < nb; q += nr {
		panel := dst[q*kb : (q+nr)*kb]
		cols := min(nr, nb-q)
		if cols < nr {
			clear(panel)
		}
		if !b.trans {
			for p := 0; p < kb; p++ {
				src := b.half[(p0+p)*b.ld+j0+q:]
				conv(panel[p*nr:p*nr+cols], src[:cols])
			}
			continue
		}
		var row [kc]float32
		for j := 0; j < cols; j++ {
			src := b.half[(j0+q+j)*b.ld+p0 : (j0+q+j)*b.ld+p0+kb]
			conv(row[:kb], src)
			for p, v := range row[:kb] {
				panel[p*nr+j] = v
			}
		}
	}
}

func halfToF32(kind Elem) func(dst []float32, src []uint16) {
	switch kind {
	case BF16:
		return BF16ToF32
	case F16:
		return F16ToF32
	}
	panic("kernels: unknown Elem")
}

// genericKernel is the portable 4×16 micro-kernel.
func genericKernel(k int, a, b, c *float32, ldc int) {
	const mr, nr = 4, 16
	ap := unsafeSlice(a, k*mr)
	bp := unsafeSlice(b, k*nr)
	var acc [mr][nr]float32
	for p := 0; p < k; p++ {
		bv := (*[nr]float32)(bp[p*nr : p*nr+nr])
		for r := 0; r < mr; r++ {
			av := ap[p*mr+r]
			row := &acc[r]
			for j := range row {
				row[j] += av * bv[j]
			}
		}
	}
	cp := unsafeSlice(c, (mr-1)*ldc+nr)
	for r := 0; r < mr; r++ {
		dst := cp[r*ldc : r*ldc+nr]
		for j, v := range acc[r] {
			dst[j] += v
		}
	}
}
