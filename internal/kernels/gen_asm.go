//go:build ignore

// gen_asm.go writes gemm_amd64.s, the GEMM micro-kernels. Run it with
// `go generate ./internal/kernels` (see gemm_amd64.go).
//
// Both kernels compute C[MR×NR] += Apanel·Bpanel over k, where Apanel is MR
// values per k step (k-major) and Bpanel NR values per k step; C has a row
// stride of ldc floats.
//
//   - AVX-512, 12×32: 24 zmm accumulators, two zmm loads of B per k step and
//     VFMADD231PS with a broadcast memory operand for each A value (no
//     separate broadcast instruction; this shape reached 86% of the FMA peak
//     kernel-only on this machine class, docs/design.md, This machine class).
//   - AVX2, 6×16: 12 ymm accumulators, two ymm loads of B and one
//     VBROADCASTSS per row (AVX2 FMA has no broadcast operand).
package main

import (
	"fmt"
	"os"
	"strings"
)

// kernel writes one mr×(2 vectors) micro-kernel: accumulators reg0..reg(2mr−1)
// zeroed with zero, per k step two vector loads of B into reg(2mr) and
// reg(2mr+1) (vec bytes each), row(r) for the FMAs of A's row r, then
// A += mr floats, B += 2 vectors; finally C += accumulators row by row.
func kernel(w func(string, ...any), name string, mr int, reg string, vec int, zero string, row func(r int), prefetch string) {
	label := map[string]string{"Z": "512", "Y": "256"}[reg]
	w("// func %s(k int, a, b, c *float32, ldc int)", name)
	w("TEXT ·%s(SB), NOSPLIT, $0-40", name)
	w("\tMOVQ k+0(FP), CX")
	w("\tMOVQ a+8(FP), SI")
	w("\tMOVQ b+16(FP), DI")
	w("\tMOVQ c+24(FP), DX")
	w("\tMOVQ ldc+32(FP), R8")
	w("\tSHLQ $2, R8")
	for i := 0; i < 2*mr; i++ {
		w("\t%s %s%d, %s%d, %s%d", zero, reg, i, reg, i, reg, i)
	}
	w("\tTESTQ CX, CX")
	w("\tJEQ store%s", label)
	w("loop%s:", label)
	w("\tVMOVUPS (DI), %s%d", reg, 2*mr)
	w("\tVMOVUPS %d(DI), %s%d", vec, reg, 2*mr+1)
	if prefetch != "" {
		w(prefetch)
	}
	for r := 0; r < mr; r++ {
		row(r)
	}
	w("\tADDQ $%d, SI", 4*mr)
	w("\tADDQ $%d, DI", 2*vec)
	w("\tDECQ CX")
	w("\tJNE loop%s", label)
	w("store%s:", label)
	for r := 0; r < mr; r++ {
		w("\tVADDPS (DX), %s%d, %s%d", reg, 2*r, reg, 2*r)
		w("\tVMOVUPS %s%d, (DX)", reg, 2*r)
		w("\tVADDPS %d(DX), %s%d, %s%d", vec, reg, 2*r+1, reg, 2*r+1)
		w("\tVMOVUPS %s%d, %d(DX)", reg, 2*r+1, vec)
		if r < mr-1 {
			w("\tADDQ R8, DX")
		}
	}
	w("\tVZEROUPPER")
	w("\tRET")
}

// conversions writes the AVX-512 dtype conversion loops. Each handles n
// elements, n a multiple of 16 (the Go wrappers convert the tail).
func conversions(w func(string, ...any)) {
	loop := func(name, sig string, setup, body []string, srcStep, dstStep int) {
		w("")
		w("// func %s%s", name, sig)
		w("TEXT ·%s(SB), NOSPLIT, $0-24", name)
		w("\tMOVQ dst+0(FP), DI")
		w("\tMOVQ src+8(FP), SI")
		w("\tMOVQ n+16(FP), CX")
		w("\tSHRQ $4, CX")
		w("\tJEQ %s_done", name)
		for _, l := range setup {
			w("\t%s", l)
		}
		w("%s_loop:", name)
		for _, l := range body {
			w("\t%s", l)
		}
		w("\tADDQ $%d, SI", srcStep)
		w("\tADDQ $%d, DI", dstStep)
		w("\tDECQ CX")
		w("\tJNE %s_loop", name)
		w("%s_done:", name)
		w("\tVZEROUPPER")
		w("\tRET")
	}
	// binary16 -> float32: exact.
	loop("f16ToF32x16", "(dst *float32, src *uint16, n int)", nil, []string{
		"VCVTPH2PS (SI), Z0",
		"VMOVUPS Z0, (DI)",
	}, 32, 64)
	// float32 -> binary16, imm 0: round to nearest even (not MXCSR).
	loop("f32ToF16x16", "(dst *uint16, src *float32, n int)", nil, []string{
		"VMOVUPS (SI), Z0",
		"VCVTPS2PH $0, Z0, (DI)",
	}, 64, 32)
	// bfloat16 -> float32: zero-extend and shift into the high half.
	loop("bf16ToF32x16", "(dst *float32, src *uint16, n int)", nil, []string{
		"VPMOVZXWD (SI), Z0",
		"VPSLLD $16, Z0, Z0",
		"VMOVUPS Z0, (DI)",
	}, 32, 64)
	// float32 -> bfloat16 with round to nearest even, in integer arithmetic
	// (Go's assembler has no AVX512_BF16): b + 0x7fff + ((b >> 16) & 1),
	// then the high half; NaN lanes become (b >> 16) | 0x40 (quiet).
	var setup []string
	for i, c := range []uint32{1, 0x7fff, 0x7fffffff, 0x7f800000, 0x40} {
		setup = append(setup, fmt.Sprintf("MOVL $0x%x, AX", c), fmt.Sprintf("VPBROADCASTD AX, Z%d", 10+i))
	}
	loop("f32ToBF16x16", "(dst *uint16, src *float32, n int)", setup, []string{
		"VMOVDQU32 (SI), Z0",
		"VPSRLD $16, Z0, Z1",      // b >> 16
		"VPANDD Z10, Z1, Z2",      // (b >> 16) & 1
		"VPADDD Z11, Z2, Z2",      // + 0x7fff
		"VPADDD Z0, Z2, Z2",       // + b
		"VPSRLD $16, Z2, Z2",      // rounded high half
		"VPANDD Z12, Z0, Z3",      // |b|
		"VPCMPUD $6, Z13, Z3, K1", // |b| > 0x7f800000: NaN
		"VPORD Z14, Z1, K1, Z2",   // NaN lanes: (b >> 16) | 0x40
		"VPMOVDW Z2, (DI)",
	}, 64, 32)
}

// expLoop writes expShiftSum16: dst[i] = e^(src[i] − shift) for n a
// multiple of 16, returning Σ dst[i] (16 lane sums, then a horizontal
// add): the Cephes expf polynomial of Exp32 in 16 lanes (VRNDSCALEPS for
// round-to-nearest n, VSCALEFPS for the 2^n scaling, which also flushes
// underflow to 0). Inputs are softmax logits minus their maximum, so
// x − shift ≤ 0 and no overflow clamp is needed.
func expLoop(w func(string, ...any)) {
	consts := []struct {
		reg  int
		bits uint32
	}{
		{20, 0xc2aeac4f}, // -87.33654
		{21, 0x3fb8aa3b}, // log2(e)
		{22, 0x3f318000}, // C1 = 0.693359375
		{23, 0xb95e8083}, // C2 = -2.12194440e-4
		{24, 0x39506967}, // p0 1.9875691500e-4
		{25, 0x3ab743ce}, // p1 1.3981999507e-3
		{26, 0x3c088908}, // p2 8.3334519073e-3
		{27, 0x3d2aa9c1}, // p3 4.1665795894e-2
		{28, 0x3e2aaaaa}, // p4 1.6666665459e-1
		{29, 0x3f000000}, // p5 5.0000001201e-1
		{30, 0x3f800000}, // 1
	}
	w("")
	w("// func expShiftSum16(dst, src *float32, n int, shift float32) float32")
	w("TEXT ·expShiftSum16(SB), NOSPLIT, $0-36")
	w("\tMOVQ dst+0(FP), DI")
	w("\tMOVQ src+8(FP), SI")
	w("\tMOVQ n+16(FP), CX")
	w("\tVBROADCASTSS shift+24(FP), Z31")
	for _, c := range consts {
		w("\tMOVL $0x%08x, AX", c.bits)
		w("\tVPBROADCASTD AX, Z%d", c.reg)
	}
	w("\tVPXORD Z4, Z4, Z4")
	w("\tSHRQ $4, CX")
	w("\tJEQ exp_done")
	w("exp_loop:")
	for _, l := range []string{
		"VMOVUPS (SI), Z0",
		"VSUBPS Z31, Z0, Z0",       // x = src - shift
		"VMAXPS Z20, Z0, Z0",       // x >= -87.34
		"VMULPS Z21, Z0, Z1",       // t = x*log2e
		"VRNDSCALEPS $0, Z1, Z1",   // n = round(t), nearest even
		"VFNMADD231PS Z22, Z1, Z0", // r = x - n*C1
		"VFNMADD231PS Z23, Z1, Z0", // r -= n*C2
		"VMOVAPS Z24, Z2",          // p = p0
		"VFMADD213PS Z25, Z0, Z2",  // p = p*r + p1
		"VFMADD213PS Z26, Z0, Z2",
		"VFMADD213PS Z27, Z0, Z2",
		"VFMADD213PS Z28, Z0, Z2",
		"VFMADD213PS Z29, Z0, Z2",
		"VMULPS Z0, Z0, Z3",      // r²
		"VFMADD213PS Z0, Z3, Z2", // p*r² + r
		"VADDPS Z30, Z2, Z2",     // + 1
		"VSCALEFPS Z1, Z2, Z2",   // * 2^n
		"VMOVUPS Z2, (DI)",
		"VADDPS Z2, Z4, Z4", // lane sums
	} {
		w("\t%s", l)
	}
	w("\tADDQ $64, SI")
	w("\tADDQ $64, DI")
	w("\tDECQ CX")
	w("\tJNE exp_loop")
	w("exp_done:")
	reduce(w, "VADDPS", 4)
	w("\tMOVSS X4, ret+32(FP)")
	w("\tVZEROUPPER")
	w("\tRET")
}

// reduce folds the 16 lanes of zmm z with op (VADDPS, VMAXPS) into lane 0,
// using Z5 as scratch.
func reduce(w func(string, ...any), op string, z int) {
	w("\tVEXTRACTF32X8 $1, Z%d, Y5", z)
	w("\t%s Y5, Y%d, Y%d", op, z, z)
	w("\tVEXTRACTF128 $1, Y%d, X5", z)
	w("\t%s X5, X%d, X%d", op, z, z)
	w("\tVPERMILPS $0x4e, X%d, X5", z) // swap the 64-bit halves
	w("\t%s X5, X%d, X%d", op, z, z)
	w("\tVPERMILPS $0xb1, X%d, X5", z) // swap neighbours
	w("\t%s X5, X%d, X%d", op, z, z)
}

// scaleLoops writes scaleMax16 (x *= s, returning max x) and scale16
// (x *= s) for n a multiple of 16: the softmax's passes before and after
// the exponentials.
func scaleLoops(w func(string, ...any)) {
	for _, withMax := range []bool{true, false} {
		name, frame := "scale16", "$0-20"
		if withMax {
			name, frame = "scaleMax16", "$0-28"
		}
		w("")
		if withMax {
			w("// func scaleMax16(x *float32, n int, s float32) float32")
		} else {
			w("// func scale16(x *float32, n int, s float32)")
		}
		w("TEXT ·%s(SB), NOSPLIT, %s", name, frame)
		w("\tMOVQ x+0(FP), SI")
		w("\tMOVQ n+8(FP), CX")
		w("\tVBROADCASTSS s+16(FP), Z31")
		if withMax {
			w("\tMOVL $0xff800000, AX") // -Inf
			w("\tVPBROADCASTD AX, Z4")
		}
		w("\tSHRQ $4, CX")
		w("\tJEQ %s_done", name)
		w("%s_loop:", name)
		w("\tVMULPS (SI), Z31, Z0")
		w("\tVMOVUPS Z0, (SI)")
		if withMax {
			w("\tVMAXPS Z0, Z4, Z4")
		}
		w("\tADDQ $64, SI")
		w("\tDECQ CX")
		w("\tJNE %s_loop", name)
		w("%s_done:", name)
		if withMax {
			reduce(w, "VMAXPS", 4)
			w("\tMOVSS X4, ret+24(FP)")
		}
		w("\tVZEROUPPER")
		w("\tRET")
	}
}

func main() {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("// Code generated by gen_asm.go; DO NOT EDIT.")
	w("")
	w("#include \"textflag.h\"")
	w("")

	// AVX-512 12x32: two zmm loads of B, one VBROADCASTSS per row of A
	// into Z26-Z31 in turn, two FMAs from registers. A broadcast operand on
	// each FMA instead (VFMADD231PS.BCST) loads every A value twice: 26
	// loads per 24 FMAs, which on Intel's two 512-bit load ports bounds the
	// loop at 13 cycles per k instead of the FMAs' 12.
	kernel(w, "sgemmKernel12x32", 12, "Z", 64, "VPXORD", func(r int) {
		w("\tVBROADCASTSS %d(SI), Z%d", 4*r, 26+r%6)
		w("\tVFMADD231PS Z24, Z%d, Z%d", 26+r%6, 2*r)
		w("\tVFMADD231PS Z25, Z%d, Z%d", 26+r%6, 2*r+1)
	}, "\tPREFETCHT0 512(DI)")
	w("")
	// AVX2 6x16: two ymm loads of B, one VBROADCASTSS per row of A.
	kernel(w, "sgemmKernel6x16", 6, "Y", 32, "VXORPS", func(r int) {
		w("\tVBROADCASTSS %d(SI), Y14", 4*r)
		w("\tVFMADD231PS Y12, Y14, Y%d", 2*r)
		w("\tVFMADD231PS Y13, Y14, Y%d", 2*r+1)
	}, "")

	// FMA peak probe: 24 independent zmm FMA chains, no memory traffic.
	w("")
	w("// func fmaPeakLoop(n int)")
	w("TEXT ·fmaPeakLoop(SB), NOSPLIT, $0-8")
	w("\tMOVQ n+0(FP), CX")
	for i := 0; i < 26; i++ {
		w("\tVPXORD Z%d, Z%d, Z%d", i, i, i)
	}
	w("peak:")
	for i := 0; i < 24; i++ {
		w("\tVFMADD231PS Z24, Z25, Z%d", i)
	}
	w("\tDECQ CX")
	w("\tJNE peak")
	w("\tVZEROUPPER")
	w("\tRET")

	conversions(w)
	expLoop(w)
	scaleLoops(w)
	matVecKernels(w)
	gapsKernels(w)
	matMulKernels(w)
	streamRead(w)
	amxKernel(w)
	amxPackKernels(w)
	transposePack(w)

	if err := os.WriteFile("gemm_amd64.s", []byte(b.String()), 0o644); err != nil {
		panic(err)
	}
}

// matVecKernels writes the batch-1 decoding kernels: four rows of a matrix
// against one vector x, 32 columns (one chunk, one bitmap word) per step,
// each row accumulating into its own zmm of 16 lanes. The dense and the
// bitmap forms use the same lanes and the same order, so a pruned matrix
// gives bit for bit the product of its dense form: a pruned weight
// contributes 0·x = +0.
//
//   - F32, F16: acc_l += w[32c+l]·x[32c+l], then acc_l += w[32c+16+l]·x[32c+16+l]
//     (VFMADD231PS; f16 widened by VCVTPH2PS);
//   - BF16: the 32 words of a chunk are widened in place, the even columns
//     by a shift (VPSLLD 16) and the odd ones by a mask (the high word of
//     each dword is its bf16 as float32), acc_l += w[32c+2l]·x[32c+2l],
//     then acc_l += w[32c+2l+1]·x[32c+2l+1], with x given deinterleaved
//     (the chunk's 16 even values, then its 16 odd ones). This beat
//     VDPBF16PS by a quarter here (VDPBF16PS and the expand compete for the
//     same port) and keeps x in float32.
//
// The bitmap form expands a chunk's values from memory into the lanes its
// word marks (VPEXPANDW for 16-bit values, VEXPANDPS per half for f32; an
// expand-load reads only the values the mask selects, never past the row)
// and moves the value pointer on by the word's popcount. Both leave the
// 4×16 lane sums in acc; the Go side reduces them (and finishes a dense
// tail chunk) in the same order as the generic code.
// The kernels prefetch each stream this many bytes ahead: the eight
// streams of the bitmap form (four bitmaps, four value arrays) outran the
// hardware prefetchers. Measured decoding a 4-layer model of 7B-shaped
// layers at 90% (scripts/decode_bench.sh): 27.6 tok/s without, 30.3 at
// 512 bytes, 35.5 at 2048, 40.5 at 8192, 38.7 at 16384; dense 14.7 -> 15.3
// at 4096.
const (
	bitmapPrefetch = 8192
	densePrefetch  = 4096
)

// elemKinds are the storage types the decoding kernels are written for,
// with their sizes in bytes.
var elemKinds = []struct {
	name string
	size int
}{{"F32", 4}, {"BF16", 2}, {"F16", 2}}

func matVecKernels(w func(string, ...any)) {
	w("")
	w("DATA highWords<>+0(SB)/4, $0xFFFF0000")
	w("GLOBL highWords<>(SB), RODATA|NOPTR, $4")
	bm := []string{"SI", "BX", "DX", "AX"}
	val := []string{"R9", "R10", "R11", "R13"}
	load4 := func(arg, off string, regs []string) {
		w("\tMOVQ %s+%s(FP), R8", arg, off)
		for i, r := range regs {
			w("\tMOVQ %d(R8), %s", 8*i, r)
		}
	}
	// prologue loads x, zeroes the accumulators (and the BF16 mask) and
	// skips to store for zero chunks.
	prologue := func(xOff, store string, bf16 bool) {
		w("\tMOVQ x+%s(FP), DI", xOff)
		for r := 0; r < 4; r++ {
			w("\tVPXORD Z%d, Z%d, Z%d", r, r, r)
		}
		if bf16 {
			w("\tVPBROADCASTD highWords<>(SB), Z20")
		}
		w("\tTESTQ CX, CX")
		w("\tJEQ %s", store)
	}
	store := func(accOff string, label string) {
		w("%s:", label)
		w("\tMOVQ acc+%s(FP), R8", accOff)
		for r := 0; r < 4; r++ {
			w("\tVMOVUPS Z%d, %d(R8)", r, 64*r)
		}
		w("\tVZEROUPPER")
		w("\tRET")
	}
	for _, e := range elemKinds {
		xStep := 128 // x as float32: 32 values (deinterleaved for BF16)
		w("")
		w("// func bitmapDot4%s(chunks int, bm, vals *[4]unsafe.Pointer, x unsafe.Pointer, acc *[64]float32)", e.name)
		w("TEXT ·bitmapDot4%s(SB), NOSPLIT, $0-40", e.name)
		w("\tMOVQ chunks+0(FP), CX")
		load4("bm", "8", bm)
		load4("vals", "16", val)
		prologue("24", "bstore"+e.name, e.name == "BF16")
		// Bitmap pointers to their ends, CX from −4·chunks up to 0.
		w("\tSHLQ $2, CX")
		for _, r := range bm {
			w("\tADDQ CX, %s", r)
		}
		w("\tNEGQ CX")
		w("bloop%s:", e.name)
		for r := 0; r < 4; r++ {
			w("\tPREFETCHT0 %d(%s)(CX*1)", bitmapPrefetch, bm[r])
			w("\tPREFETCHT0 %d(%s)", bitmapPrefetch, val[r])
		}
		w("\tVMOVUPS (DI), Z8")
		w("\tVMOVUPS 64(DI), Z9")
		for r := 0; r < 4; r++ {
			z := 4 + r
			word := fmt.Sprintf("(%s)(CX*1)", bm[r])
			switch e.name {
			case "BF16":
				w("\tKMOVD %s, K1", word)
				w("\tPOPCNTL %s, R8", word)
				w("\tVPEXPANDW.Z (%s), K1, Z%d", val[r], z)
				widenBF16(w, z, r)
				w("\tLEAQ (%s)(R8*2), %s", val[r], val[r])
			default:
				for h := 0; h < 2; h++ {
					w("\tMOVWLZX %d%s, R8", 2*h, word)
					w("\tKMOVW R8, K1")
					if e.name == "F32" {
						w("\tVEXPANDPS.Z (%s), K1, Z%d", val[r], z)
					} else {
						w("\tVPEXPANDW.Z (%s), K1, Y%d", val[r], z)
						w("\tVCVTPH2PS Y%d, Z%d", z, z)
					}
					w("\tVFMADD231PS Z%d, Z%d, Z%d", 8+h, z, r)
					w("\tPOPCNTL R8, R8")
					w("\tLEAQ (%s)(R8*%d), %s", val[r], e.size, val[r])
				}
			}
		}
		w("\tADDQ $%d, DI", xStep)
		w("\tADDQ $4, CX")
		w("\tJNE bloop%s", e.name)
		store("32", "bstore"+e.name)

		w("")
		w("// func denseDot4%s(chunks int, rows *[4]unsafe.Pointer, x unsafe.Pointer, acc *[64]float32)", e.name)
		w("TEXT ·denseDot4%s(SB), NOSPLIT, $0-32", e.name)
		w("\tMOVQ chunks+0(FP), CX")
		load4("rows", "8", val)
		prologue("16", "dstore"+e.name, e.name == "BF16")
		w("dloop%s:", e.name)
		for r := 0; r < 4; r++ {
			w("\tPREFETCHT0 %d(%s)", densePrefetch, val[r])
		}
		w("\tVMOVUPS (DI), Z8")
		w("\tVMOVUPS 64(DI), Z9")
		for r := 0; r < 4; r++ {
			z := 4 + r
			switch e.name {
			case "BF16":
				w("\tVMOVDQU16 (%s), Z%d", val[r], z)
				widenBF16(w, z, r)
			case "F32":
				w("\tVFMADD231PS (%s), Z8, Z%d", val[r], r)
				w("\tVFMADD231PS 64(%s), Z9, Z%d", val[r], r)
			case "F16":
				w("\tVCVTPH2PS (%s), Z%d", val[r], z)
				w("\tVFMADD231PS Z8, Z%d, Z%d", z, r)
				w("\tVCVTPH2PS 32(%s), Z%d", val[r], z)
				w("\tVFMADD231PS Z9, Z%d, Z%d", z, r)
			}
			w("\tADDQ $%d, %s", 32*e.size, val[r])
		}
		w("\tADDQ $%d, DI", xStep)
		w("\tDECQ CX")
		w("\tJNE dloop%s", e.name)
		store("24", "dstore"+e.name)
	}
}

// gapsKernels writes the gap-coded decoding kernels (gaps.go): rows of a
// GapsRows, y[r] for each, 16 entries per step: their gaps
// widened to dwords (a masked load, so a row's tail reads nothing past
// it), prefix-summed in four shift-and-add steps and offset by the
// previous step's last column (broadcast from lane 15) to give their
// columns, x gathered at those columns (VGATHERDPS; fillers gather real
// columns and add 0·x), times the widened values into the lane sums; then
// the lanes are folded as reduce16 does (halves, quarters, then pairs).
//
// It takes rows in pairs, p and p + h (h = 0: row p alone), one step of
// each in turn until the shorter ends: each row keeps its own lanes, so y
// is bit for bit what one row at a time gives, but four streams far apart
// are read at once instead of two. One row's two streams left bandwidth
// unused, and so did two rows near each other (scripts/gaps_rows_bench.c;
// decoding the 4-layer 7B-shaped model at 90%: 62.4 → 69.1 tok/s). So
// GapsRows.MatVec pairs each row of the first half with its row of the
// second. (Four rows at a time would need two more general registers per
// extra row, and all 14 free ones are in use.)
//
// Lanes start from 0, or with add (a column block after the first,
// GapsBlocks) lane 0 from y[r]. While both rows of a pair have 16 entries
// left a step needs no masks: full steps skip the tail-mask arithmetic and
// the masked loads (BenchmarkGapsFromMemory 7.96 → 8.10 G entries/s).
//
// Both streams of each row are prefetched gapsPrefetch entries ahead:
// without it the kernel ran from memory at a third below its speed from
// cache (one core, one row at a time, 4096×4096 bf16 at 10% from DRAM:
// 25.0 G columns/s without, 35.0 at 1024 entries, 34.5 at 2048, 31.9 at
// 4096; decoding the 4-layer 7B-shaped model at 90%,
// scripts/decode_bench.sh, medians of 3: 47.5 tok/s without, 66.3 at 512,
// 71.4 at 1024, 70.2 at 2048).
const gapsPrefetch = 1024

// gapsRow names one row's registers in the paired kernel: its next entry
// and its end (entry indices), the step's masks (load, gather), and its
// lane sums, last column, columns, gathered x and widened values.
type gapsRow struct {
	idx, end             string
	load, gather         string
	acc, last, col, x, v int
}

func gapsKernels(w func(string, ...any)) {
	a := gapsRow{"AX", "DX", "K2", "K1", 0, 1, 3, 4, 5}
	b := gapsRow{"BX", "SI", "K4", "K3", 10, 11, 13, 14, 15}
	for _, e := range elemKinds {
		// step writes one step of row r: entries idx .. min(idx+16, end);
		// full, one known to hold 16 entries (no masks to compute, no
		// masked loads).
		step := func(r gapsRow, full bool) {
			load := func(op, src string, dst int) { w("\t%s.Z %s, %s, Z%d", op, src, r.load, dst) }
			if full {
				w("\tKXNORW K5, K5, %s", r.gather)
				load = func(op, src string, dst int) { w("\t%s %s, Z%d", op, src, dst) }
			} else {
				w("\tMOVQ %s, R13", r.end)
				w("\tSUBQ %s, R13", r.idx)
				w("\tMOVQ $16, R14")
				w("\tCMPQ R13, R14")
				w("\tCMOVQGT R14, R13")
				w("\tBZHIL R13, R12, R14")
				w("\tKMOVW R14, %s", r.load)
				w("\tKMOVW %s, %s", r.load, r.gather) // the gather clears its mask
			}
			w("\tPREFETCHT0 %d(R9)(%s*1)", gapsPrefetch, r.idx)
			w("\tPREFETCHT0 %d(R10)(%s*%d)", gapsPrefetch*e.size, r.idx, e.size)
			load("VPMOVZXBD", fmt.Sprintf("(R9)(%s*1)", r.idx), r.col)
			for _, s := range []int{15, 14, 12, 8} { // lanes shifted up by 1, 2, 4, 8
				w("\tVALIGND $%d, Z2, Z%d, Z%d", s, r.col, r.x)
				w("\tVPADDD Z%d, Z%d, Z%d", r.x, r.col, r.col)
			}
			w("\tVPADDD Z%d, Z%d, Z%d", r.last, r.col, r.col)
			w("\tVPERMD Z%d, Z6, Z%d", r.col, r.last)
			w("\tVPXORD Z%d, Z%d, Z%d", r.x, r.x, r.x)
			w("\tVGATHERDPS (DI)(Z%d*4), %s, Z%d", r.col, r.gather, r.x)
			switch e.name {
			case "BF16":
				load("VPMOVZXWD", fmt.Sprintf("(R10)(%s*2)", r.idx), r.v)
				w("\tVPSLLD $16, Z%d, Z%d", r.v, r.v)
			case "F16":
				load("VCVTPH2PS", fmt.Sprintf("(R10)(%s*2)", r.idx), r.v)
			case "F32":
				load("VMOVUPS", fmt.Sprintf("(R10)(%s*4)", r.idx), r.v)
			}
			w("\tVFMADD231PS Z%d, Z%d, Z%d", r.v, r.x, r.acc)
			w("\tADDQ $16, %s", r.idx)
		}
		// fold writes reduce16 of row r's lanes to dst.
		fold := func(r gapsRow, dst string) { fold16(w, r.acc, 7, dst) }
		// alone jumps to label when the pairs have no row B (h = 0).
		alone := func(label string) {
			w("\tTESTQ R15, R15")
			w("\tJEQ %s%s", label, e.name)
		}
		w("")
		w("// func gapsDot%s(pairs, h int, rowptr *int64, gaps, vals unsafe.Pointer, x, y *float32, add int)", e.name)
		w("TEXT ·gapsDot%s(SB), NOSPLIT, $0-64", e.name)
		w("\tMOVQ pairs+0(FP), CX")
		w("\tMOVQ h+8(FP), R15")
		w("\tMOVQ rowptr+16(FP), R8")
		w("\tMOVQ gaps+24(FP), R9")
		w("\tMOVQ vals+32(FP), R10")
		w("\tMOVQ x+40(FP), DI")
		w("\tMOVQ y+48(FP), R11")
		w("\tTESTQ CX, CX")
		w("\tJEQ gdone%s", e.name)
		w("\tVPXORD Z2, Z2, Z2")
		w("\tMOVL $15, R13")
		w("\tVPBROADCASTD R13, Z6")
		w("\tMOVL $0xFFFF, R12")
		w("gpair%s:", e.name)
		w("\tMOVQ (R8), AX")
		w("\tMOVQ 8(R8), DX")
		w("\tXORL BX, BX")
		w("\tXORL SI, SI")
		alone("gsolo")
		w("\tMOVQ (R8)(R15*8), BX")
		w("\tMOVQ 8(R8)(R15*8), SI")
		w("gsolo%s:", e.name)
		for _, r := range []gapsRow{a, b} {
			w("\tVPXORD Z%d, Z%d, Z%d", r.acc, r.acc, r.acc)
			w("\tVPTERNLOGD $0xff, Z%d, Z%d, Z%d", r.last, r.last, r.last) // the column before the row: −1
		}
		// With add, lane 0 starts from y (a column block after the first).
		w("\tMOVQ add+56(FP), R13")
		w("\tTESTQ R13, R13")
		w("\tJEQ gfull%s", e.name)
		w("\tVMOVSS (R11), X%d", a.acc)
		alone("gfull")
		w("\tVMOVSS (R11)(R15*4), X%d", b.acc)
		// While both rows have 16 entries left, the steps are full.
		w("gfull%s:", e.name)
		for _, r := range []gapsRow{a, b} {
			w("\tMOVQ %s, R13", r.end)
			w("\tSUBQ %s, R13", r.idx)
			w("\tCMPQ R13, $16")
			w("\tJLT gboth%s", e.name)
		}
		step(a, true)
		step(b, true)
		w("\tJMP gfull%s", e.name)
		w("gboth%s:", e.name)
		w("\tCMPQ AX, DX")
		w("\tJGE grestB%s", e.name)
		w("\tCMPQ BX, SI")
		w("\tJGE grestA%s", e.name)
		step(a, false)
		step(b, false)
		w("\tJMP gboth%s", e.name)
		w("grestA%s:", e.name)
		step(a, false)
		w("\tCMPQ AX, DX")
		w("\tJLT grestA%s", e.name)
		w("\tJMP gfold%s", e.name)
		w("grestB%s:", e.name)
		w("\tCMPQ BX, SI")
		w("\tJGE gfold%s", e.name)
		step(b, false)
		w("\tJMP grestB%s", e.name)
		w("gfold%s:", e.name)
		fold(a, "(R11)")
		alone("gnext")
		fold(b, "(R11)(R15*4)")
		w("gnext%s:", e.name)
		w("\tADDQ $8, R8")
		w("\tADDQ $4, R11")
		w("\tDECQ CX")
		w("\tJNE gpair%s", e.name)
		w("gdone%s:", e.name)
		w("\tVZEROUPPER")
		w("\tRET")
	}
}

// matMulKernels writes the small-batch products (batch.go): one matrix
// against up to BatchTokens vectors at once, so each weight is read and
// widened once for all of them.
//
// The dense and bitmap forms take one row: per chunk of 32 columns the
// weights are loaded (or expanded) and widened exactly as in
// matVecKernels, into Z16 (the chunk's first 16 columns, the even ones for
// BF16) and Z17, then vector t's lanes Z_t take acc += Z16·x_t[..16], then
// acc += Z17·x_t[16..32], x in the batch's chunk layout (vector t's 32
// values of chunk c at 128·(16c + t) bytes). So every vector's lanes are
// its MatVec lanes bit for bit. mode says where the lanes start and end:
// with bit 1 they start from the 16×16 lanes in out (a row taken in column
// blocks: the input of a block stays in L1), else from 0; with bit 0 each
// vector's lanes are folded as reduce16 does and written to out[t], else
// (a block before the last, or a dense row with a tail chunk, which the Go
// side finishes) the 16×16 lanes are written as they are.
//
// The gap form takes rows one after another, one entry at a time: its
// column (times 64, the bytes of one column of the batch's column layout)
// moves on by its gap, its value is broadcast to 16 lanes, one per vector,
// and one FMA from x's column adds it to every vector. Entries go to four
// accumulators in turn (entry j of the row's first 4⌊n/4⌋ to acc[j mod 4],
// the rest to acc[0]: the FMA's latency is four cycles), summed
// (acc0 + acc1) + (acc2 + acc3) into out[16r ..].
func matMulKernels(w func(string, ...any)) {
	const vectors = 16 // BatchTokens
	// accumulate adds the widened chunk in Z16/Z17 to every vector's lanes.
	accumulate := func() {
		for t := 0; t < vectors; t++ {
			w("\tVFMADD231PS %d(DI), Z16, Z%d", 128*t, t)
			w("\tVFMADD231PS %d(DI), Z17, Z%d", 128*t+64, t)
		}
		w("\tADDQ $%d, DI", 128*vectors)
	}
	// finish folds (or stores) the lanes of every vector.
	finish := func(label string) {
		w("%s:", label)
		w("\tMOVQ out+32(FP), R11")
		w("\tMOVQ mode+40(FP), R8")
		w("\tTESTQ $1, R8")
		w("\tJEQ %sraw", label)
		for t := 0; t < vectors; t++ {
			fold16(w, t, 18, fmt.Sprintf("%d(R11)", 4*t))
		}
		w("\tVZEROUPPER")
		w("\tRET")
		w("%sraw:", label)
		for t := 0; t < vectors; t++ {
			w("\tVMOVUPS Z%d, %d(R11)", t, 64*t)
		}
		w("\tVZEROUPPER")
		w("\tRET")
	}
	for _, e := range elemKinds {
		for _, form := range []string{"dense", "bitmap"} {
			name := form + "Mul" + e.name
			w("")
			w("// func %s(chunks int, words, vals, x, out unsafe.Pointer, mode int)", name)
			w("TEXT ·%s(SB), NOSPLIT, $0-48", name)
			w("\tMOVQ chunks+0(FP), CX")
			w("\tMOVQ words+8(FP), BX")
			w("\tMOVQ vals+16(FP), SI")
			w("\tMOVQ x+24(FP), DI")
			w("\tMOVQ out+32(FP), R11")
			w("\tMOVQ mode+40(FP), R8")
			w("\tTESTQ $2, R8")
			w("\tJEQ %szero", name)
			for t := 0; t < vectors; t++ {
				w("\tVMOVUPS %d(R11), Z%d", 64*t, t)
			}
			w("\tJMP %sready", name)
			w("%szero:", name)
			for t := 0; t < vectors; t++ {
				w("\tVPXORD Z%d, Z%d, Z%d", t, t, t)
			}
			w("%sready:", name)
			if e.name == "BF16" {
				w("\tVPBROADCASTD highWords<>(SB), Z20")
			}
			w("\tTESTQ CX, CX")
			w("\tJEQ %sdone", name)
			w("%sloop:", name)
			switch {
			case form == "dense" && e.name == "BF16":
				w("\tVMOVDQU16 (SI), Z16")
				w("\tADDQ $64, SI")
			case form == "dense" && e.name == "F32":
				w("\tVMOVUPS (SI), Z16")
				w("\tVMOVUPS 64(SI), Z17")
				w("\tADDQ $128, SI")
			case form == "dense" && e.name == "F16":
				w("\tVCVTPH2PS (SI), Z16")
				w("\tVCVTPH2PS 32(SI), Z17")
				w("\tADDQ $64, SI")
			case e.name == "BF16":
				w("\tKMOVD (BX), K1")
				w("\tPOPCNTL (BX), R8")
				w("\tVPEXPANDW.Z (SI), K1, Z16")
				w("\tLEAQ (SI)(R8*2), SI")
				w("\tADDQ $4, BX")
			default:
				for h := 0; h < 2; h++ {
					w("\tMOVWLZX %d(BX), R8", 2*h)
					w("\tKMOVW R8, K1")
					if e.name == "F32" {
						w("\tVEXPANDPS.Z (SI), K1, Z%d", 16+h)
					} else {
						w("\tVPEXPANDW.Z (SI), K1, Y%d", 16+h)
						w("\tVCVTPH2PS Y%d, Z%d", 16+h, 16+h)
					}
					w("\tPOPCNTL R8, R8")
					w("\tLEAQ (SI)(R8*%d), SI", e.size)
				}
				w("\tADDQ $4, BX")
			}
			if e.name == "BF16" { // odd columns: the high words; even: the low ones shifted up
				w("\tVPANDD Z20, Z16, Z17")
				w("\tVPSLLD $16, Z16, Z16")
			}
			accumulate()
			w("\tDECQ CX")
			w("\tJNE %sloop", name)
			finish(name + "done")
		}

		name := "gapsMul" + e.name
		// entry adds entry AX + i (its gap, its value broadcast into
		// Z(4+acc)) to accumulator Zacc.
		entry := func(i, acc int) {
			w("\tMOVBLZX %d(R9)(AX*1), R13", i)
			w("\tSHLQ $6, R13")
			w("\tADDQ R13, R14")
			z := 4 + acc
			switch e.name {
			case "BF16":
				w("\tVPBROADCASTW %d(R10)(AX*2), Z%d", 2*i, z)
				w("\tVPSLLD $16, Z%d, Z%d", z, z)
			case "F16":
				w("\tVPBROADCASTW %d(R10)(AX*2), Y%d", 2*i, z)
				w("\tVCVTPH2PS Y%d, Z%d", z, z)
			case "F32":
				w("\tVBROADCASTSS %d(R10)(AX*4), Z%d", 4*i, z)
			}
			w("\tVFMADD231PS (DI)(R14*1), Z%d, Z%d", z, acc)
		}
		w("")
		w("// func %s(rows int, rowptr *int64, gaps, vals unsafe.Pointer, x, out *float32)", name)
		w("TEXT ·%s(SB), NOSPLIT, $0-48", name)
		w("\tMOVQ rows+0(FP), CX")
		w("\tMOVQ rowptr+8(FP), R8")
		w("\tMOVQ gaps+16(FP), R9")
		w("\tMOVQ vals+24(FP), R10")
		w("\tMOVQ x+32(FP), DI")
		w("\tMOVQ out+40(FP), R11")
		w("\tTESTQ CX, CX")
		w("\tJEQ %sdone", name)
		w("%srow:", name)
		w("\tMOVQ (R8), AX")
		w("\tMOVQ 8(R8), DX")
		w("\tMOVQ $-64, R14") // the column before the row: −1, times 64
		for a := 0; a < 4; a++ {
			w("\tVPXORD Z%d, Z%d, Z%d", a, a, a)
		}
		w("\tMOVQ DX, R12") // R12: the end of the row's quads
		w("\tSUBQ AX, R12")
		w("\tANDQ $-4, R12")
		w("\tADDQ AX, R12")
		w("%squad:", name)
		w("\tCMPQ AX, R12")
		w("\tJGE %sone", name)
		for a := 0; a < 4; a++ {
			entry(a, a)
		}
		w("\tADDQ $4, AX")
		w("\tJMP %squad", name)
		w("%sone:", name)
		w("\tCMPQ AX, DX")
		w("\tJGE %sstore", name)
		entry(0, 0)
		w("\tINCQ AX")
		w("\tJMP %sone", name)
		w("%sstore:", name)
		w("\tVADDPS Z1, Z0, Z0")
		w("\tVADDPS Z3, Z2, Z2")
		w("\tVADDPS Z2, Z0, Z0")
		w("\tVMOVUPS Z0, (R11)")
		w("\tADDQ $8, R8")
		w("\tADDQ $64, R11")
		w("\tDECQ CX")
		w("\tJNE %srow", name)
		w("%sdone:", name)
		w("\tVZEROUPPER")
		w("\tRET")
	}
}

// fold16 writes reduce16 of the 16 lanes of Zz to dst (halves, quarters,
// pairs, then the last two), with Ztmp as scratch.
func fold16(w func(string, ...any), z, tmp int, dst string) {
	w("\tVEXTRACTF32X8 $1, Z%d, Y%d", z, tmp)
	w("\tVADDPS Y%d, Y%d, Y%d", tmp, z, z)
	w("\tVEXTRACTF32X4 $1, Y%d, X%d", z, tmp)
	w("\tVADDPS X%d, X%d, X%d", tmp, z, z)
	w("\tVMOVHLPS X%d, X%d, X%d", z, tmp, tmp)
	w("\tVADDPS X%d, X%d, X%d", tmp, z, z)
	w("\tVMOVSHDUP X%d, X%d", z, tmp)
	w("\tVADDSS X%d, X%d, X%d", tmp, z, z)
	w("\tVMOVSS X%d, %s", z, dst)
}

// widenBF16 accumulates the 32 bf16 words in Zz into Zacc: the even
// columns (low words, shifted up) times x's even values in Z8, then the odd
// ones (high words, masked by Z20) times x's odd values in Z9. Z(16+acc)
// holds the odd half.
func widenBF16(w func(string, ...any), z, acc int) {
	w("\tVPANDD Z20, Z%d, Z%d", z, 16+acc)
	w("\tVPSLLD $16, Z%d, Z%d", z, z)
	w("\tVFMADD231PS Z8, Z%d, Z%d", z, acc)
	w("\tVFMADD231PS Z9, Z%d, Z%d", 16+acc, acc)
}

// streamRead writes the memory-bandwidth probe: n bytes (a multiple of
// 256) read as four streams at once, one per quarter (the access pattern
// of a four-row matrix-vector kernel: one sequential stream per core
// leaves bandwidth unused), 64 bytes of each per step, XORed together so
// the loads cannot be dropped.
func streamRead(w func(string, ...any)) {
	w("")
	w("// func streamRead256(p *byte, n int) uint64")
	w("TEXT ·streamRead256(SB), NOSPLIT, $0-24")
	w("\tMOVQ p+0(FP), SI")
	w("\tMOVQ n+8(FP), CX")
	w("\tSHRQ $2, CX") // bytes per stream (a multiple of 64)
	w("\tLEAQ (SI)(CX*1), BX")
	w("\tLEAQ (BX)(CX*1), DX")
	w("\tLEAQ (DX)(CX*1), AX")
	w("\tSHRQ $6, CX")
	for i := 0; i < 4; i++ {
		w("\tVPXORQ Z%d, Z%d, Z%d", i, i, i)
	}
	w("\tTESTQ CX, CX")
	w("\tJEQ sdone")
	w("sloop:")
	for i, r := range []string{"SI", "BX", "DX", "AX"} {
		w("\tVPXORQ (%s), Z%d, Z%d", r, i, i)
		w("\tADDQ $64, %s", r)
	}
	w("\tDECQ CX")
	w("\tJNE sloop")
	w("sdone:")
	w("\tVPXORQ Z1, Z0, Z0")
	w("\tVPXORQ Z3, Z2, Z2")
	w("\tVPXORQ Z2, Z0, Z0")
	w("\tVEXTRACTI64X4 $1, Z0, Y1")
	w("\tVPXORQ Y1, Y0, Y0")
	w("\tVEXTRACTI128 $1, Y0, X1")
	w("\tVPXORQ X1, X0, X0")
	w("\tVPSHUFD $0x4E, X0, X1")
	w("\tVPXORQ X1, X0, X0")
	w("\tMOVQ X0, AX")
	w("\tMOVQ AX, ret+16(FP)")
	w("\tVZEROUPPER")
	w("\tRET")
}

// amxKernel writes amxTile, the bf16 micro-kernel on AMX: C[32×32] (+)=
// A[32×32ks]·B[32ks×32] in four 16×16 fp32 accumulator tiles (tmm0-3), per
// step of 32 depth values two A tiles (tmm4: rows 0-15, tmm5: rows 16-31,
// each row 32 bf16) and two B tiles in the VNNI layout (tmm6: columns 0-15,
// tmm7: 16-31; row r holds the pairs (2r, 2r+1) of the step for 16
// columns). TDPBF16PS multiplies the bf16 pairs exactly and accumulates in
// fp32. The loads are interleaved with the products; with 64-byte-aligned
// panels this loop ran at 2.7 TFLOP/s from L1 and 2.0 from L2 on one core
// here (unaligned panels: less than half of that).
//
// The Go assembler knows no AMX instruction: each is emitted as its bytes
// (from GNU as, registers fixed: AX config, SI A, DI B, DX C, R8 C's row
// stride in bytes, R9 = 64 the packed tiles' row stride, R10 = C + 16 rows).
// The tile configuration is loaded and released within the call, so a
// goroutine that moves to another thread between calls finds nothing stale.
func amxKernel(w func(string, ...any)) {
	raw := func(asm, hex string) { byteLine(w, asm, hex) }
	w("")
	w("// func amxTile(cfg *amxConfig, ks int, a, b *uint16, c *float32, ldcBytes int, load int)")
	w("TEXT ·amxTile(SB), NOSPLIT, $0-56")
	w("\tMOVQ cfg+0(FP), AX")
	w("\tMOVQ ks+8(FP), CX")
	w("\tMOVQ a+16(FP), SI")
	w("\tMOVQ b+24(FP), DI")
	w("\tMOVQ c+32(FP), DX")
	w("\tMOVQ ldcBytes+40(FP), R8")
	w("\tMOVQ load+48(FP), BX")
	w("\tMOVQ $64, R9")
	w("\tMOVQ R8, R10")
	w("\tSHLQ $4, R10")
	w("\tADDQ DX, R10")
	raw("ldtilecfg (AX)", "c4 e2 78 49 00")
	w("\tTESTQ BX, BX")
	w("\tJEQ amxzero")
	raw("tileloadd (DX)(R8*1), tmm0", "c4 a2 7b 4b 04 02")
	raw("tileloadd 64(DX)(R8*1), tmm1", "c4 a2 7b 4b 4c 02 40")
	raw("tileloadd (R10)(R8*1), tmm2", "c4 82 7b 4b 14 02")
	raw("tileloadd 64(R10)(R8*1), tmm3", "c4 82 7b 4b 5c 02 40")
	w("\tJMP amxloop")
	w("amxzero:")
	raw("tilezero tmm0", "c4 e2 7b 49 c0")
	raw("tilezero tmm1", "c4 e2 7b 49 c8")
	raw("tilezero tmm2", "c4 e2 7b 49 d0")
	raw("tilezero tmm3", "c4 e2 7b 49 d8")
	w("amxloop:")
	raw("tileloadd (SI)(R9*1), tmm4", "c4 a2 7b 4b 24 0e")
	raw("tileloadd (DI)(R9*1), tmm6", "c4 a2 7b 4b 34 0f")
	raw("tdpbf16ps tmm0 += tmm4·tmm6", "c4 e2 4a 5c c4")
	raw("tileloadd 1024(DI)(R9*1), tmm7", "c4 a2 7b 4b bc 0f 00 04 00 00")
	raw("tdpbf16ps tmm1 += tmm4·tmm7", "c4 e2 42 5c cc")
	raw("tileloadd 1024(SI)(R9*1), tmm5", "c4 a2 7b 4b ac 0e 00 04 00 00")
	raw("tdpbf16ps tmm2 += tmm5·tmm6", "c4 e2 4a 5c d5")
	raw("tdpbf16ps tmm3 += tmm5·tmm7", "c4 e2 42 5c dd")
	w("\tADDQ $2048, SI")
	w("\tADDQ $2048, DI")
	w("\tDECQ CX")
	w("\tJNE amxloop")
	raw("tilestored tmm0, (DX)(R8*1)", "c4 a2 7a 4b 04 02")
	raw("tilestored tmm1, 64(DX)(R8*1)", "c4 a2 7a 4b 4c 02 40")
	raw("tilestored tmm2, (R10)(R8*1)", "c4 82 7a 4b 14 02")
	raw("tilestored tmm3, 64(R10)(R8*1)", "c4 82 7a 4b 5c 02 40")
	raw("tilerelease", "c4 e2 78 49 c0")
	w("\tRET")
}

// cvtToZ[c] encodes VCVTNE2PS2BF16 (R11), Z16, Zc (AVX512_BF16, which the
// Go assembler does not know): words 0-15 of Zc ← bf16 of the 16 floats at
// (R11), words 16-31 ← bf16 of Z16, round to nearest even.
var cvtToZ = [16]string{"62 d2 7f 40 72 03", "62 d2 7f 40 72 0b", "62 d2 7f 40 72 13", "62 d2 7f 40 72 1b",
	"62 d2 7f 40 72 23", "62 d2 7f 40 72 2b", "62 d2 7f 40 72 33", "62 d2 7f 40 72 3b",
	"62 52 7f 40 72 03", "62 52 7f 40 72 0b", "62 52 7f 40 72 13", "62 52 7f 40 72 1b",
	"62 52 7f 40 72 23", "62 52 7f 40 72 2b", "62 52 7f 40 72 33", "62 52 7f 40 72 3b"}

// transpose16 transposes the 16×16 dwords in Z0..Z15 (row r in Zr) in
// place: unpack dword, unpack qword, two lane shuffles, 64 instructions.
func transpose16(w func(string, ...any)) {
	// Rows r0..r15 in Z0..Z15; t in Z16..Z31; u in Z0..Z15; v, v', w, w'
	// in Z16..Z31; the transposed rows back in Z0..Z15.
	for i := 0; i < 8; i++ {
		w("\tVPUNPCKLDQ Z%d, Z%d, Z%d", 2*i+1, 2*i, 16+2*i)
		w("\tVPUNPCKHDQ Z%d, Z%d, Z%d", 2*i+1, 2*i, 16+2*i+1)
	}
	for i := 0; i < 4; i++ {
		t := 16 + 4*i
		w("\tVPUNPCKLQDQ Z%d, Z%d, Z%d", t+2, t, 4*i)
		w("\tVPUNPCKHQDQ Z%d, Z%d, Z%d", t+2, t, 4*i+1)
		w("\tVPUNPCKLQDQ Z%d, Z%d, Z%d", t+3, t+1, 4*i+2)
		w("\tVPUNPCKHQDQ Z%d, Z%d, Z%d", t+3, t+1, 4*i+3)
	}
	for q := 0; q < 4; q++ {
		w("\tVSHUFI32X4 $0x88, Z%d, Z%d, Z%d", 4+q, q, 16+q)
		w("\tVSHUFI32X4 $0xdd, Z%d, Z%d, Z%d", 4+q, q, 20+q)
		w("\tVSHUFI32X4 $0x88, Z%d, Z%d, Z%d", 12+q, 8+q, 24+q)
		w("\tVSHUFI32X4 $0xdd, Z%d, Z%d, Z%d", 12+q, 8+q, 28+q)
	}
	for q := 0; q < 4; q++ {
		w("\tVSHUFI32X4 $0x88, Z%d, Z%d, Z%d", 24+q, 16+q, q)
		w("\tVSHUFI32X4 $0xdd, Z%d, Z%d, Z%d", 24+q, 16+q, 8+q)
		w("\tVSHUFI32X4 $0x88, Z%d, Z%d, Z%d", 28+q, 20+q, 4+q)
		w("\tVSHUFI32X4 $0xdd, Z%d, Z%d, Z%d", 28+q, 20+q, 12+q)
	}
}

// transposePack writes packT16, the float32 GEMM's packer of a panel whose
// rows are a matrix's columns (NT's weights, B = Wᵀ): per step, 16 rows
// of 16 consecutive depth values are loaded, transposed (transpose16) and
// stored as 16 depth rows of the panel, dstStride bytes apart. It replaces
// a scalar copy of ~1 ns per element, 15% of an NT GEMM at m = 512.
func transposePack(w func(string, ...any)) {
	w("")
	w("// func packT16(dst, src *float32, ldBytes, steps, dstStride int)")
	w("TEXT ·packT16(SB), NOSPLIT, $0-40")
	w("\tMOVQ dst+0(FP), DI")
	w("\tMOVQ src+8(FP), SI")
	w("\tMOVQ ldBytes+16(FP), R8")
	w("\tMOVQ steps+24(FP), CX")
	w("\tMOVQ dstStride+32(FP), R9")
	w("packT16:")
	w("\tMOVQ SI, R11")
	for r := 0; r < 16; r++ {
		w("\tVMOVUPS (R11), Z%d", r)
		w("\tADDQ R8, R11")
	}
	transpose16(w)
	for p := 0; p < 16; p++ {
		w("\tVMOVUPS Z%d, (DI)", p)
		w("\tADDQ R9, DI")
	}
	w("\tADDQ $64, SI")
	w("\tDECQ CX")
	w("\tJNE packT16")
	w("\tVZEROUPPER")
	w("\tRET")
}

func byteLine(w func(string, ...any), asm, hex string) {
	var bytes []string
	for _, h := range strings.Fields(hex) {
		bytes = append(bytes, "BYTE $0x"+h)
	}
	w("\t%s // %s", strings.Join(bytes, "; "), asm)
}

// amxPackKernels writes the packers of AMX B panels from float32 (the
// bf16 GEMM's hot loops besides the tile kernel):
//
//   - packPairsT16: 16 rows of a matrix whose rows are B's columns (a
//     weight in the forward, B = Wᵀ): per step of 32 depth values each row
//     becomes 16 bf16 pairs (one VCVTNE2PS2BF16), and the 16×16 words are
//     transposed (unpack dword, unpack qword, two lane shuffles: 64
//     instructions) into the tile's 16 rows, each the pair of 16 columns.
//   - packPairsN32: two depth rows p, p+1 of a row-major B, 32 columns per
//     panel: converted together and interleaved word by word (VPERMW) into
//     the tile rows of the panel's two tiles.
func amxPackKernels(w func(string, ...any)) {
	w("")
	w("// func packPairsT16(dst *uint32, src *float32, ldBytes, steps, dstStep int)")
	w("TEXT ·packPairsT16(SB), NOSPLIT, $0-40")
	w("\tMOVQ dst+0(FP), DI")
	w("\tMOVQ src+8(FP), SI")
	w("\tMOVQ ldBytes+16(FP), R8")
	w("\tMOVQ steps+24(FP), CX")
	w("\tMOVQ dstStep+32(FP), R9")
	w("pairsT16:")
	w("\tMOVQ SI, R11")
	for c := 0; c < 16; c++ {
		w("\tVMOVUPS 64(R11), Z16")
		byteLine(w, fmt.Sprintf("VCVTNE2PS2BF16 (R11), Z16, Z%d", c), cvtToZ[c])
		w("\tADDQ R8, R11")
	}
	transpose16(w)
	for j := 0; j < 16; j++ {
		w("\tVMOVDQU32 Z%d, %d(DI)", j, 64*j)
	}
	w("\tADDQ $128, SI")
	w("\tADDQ R9, DI")
	w("\tDECQ CX")
	w("\tJNE pairsT16")
	w("\tVZEROUPPER")
	w("\tRET")

	w("")
	w("// func packPairsN32(dst *uint32, lo, hi *float32, panels, panelBytes int, interleave *uint16)")
	w("TEXT ·packPairsN32(SB), NOSPLIT, $0-48")
	w("\tMOVQ dst+0(FP), DI")
	w("\tMOVQ lo+8(FP), R11")
	w("\tMOVQ hi+16(FP), SI")
	w("\tMOVQ panels+24(FP), CX")
	w("\tMOVQ panelBytes+32(FP), R9")
	w("\tMOVQ interleave+40(FP), AX")
	w("\tVMOVDQU16 (AX), Z17")
	w("pairsN32:")
	for half := 0; half < 2; half++ {
		w("\tVMOVUPS %d(SI), Z16", 64*half)
		byteLine(w, "VCVTNE2PS2BF16 (R11), Z16, Z0", cvtToZ[0])
		w("\tVPERMW Z0, Z17, Z1")
		w("\tVMOVDQU32 Z1, %d(DI)", 1024*half)
		w("\tADDQ $64, R11")
	}
	w("\tADDQ $128, SI")
	w("\tADDQ R9, DI")
	w("\tDECQ CX")
	w("\tJNE pairsN32")
	w("\tVZEROUPPER")
	w("\tRET")
}
