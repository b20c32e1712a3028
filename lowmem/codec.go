// Package lowmem holds Elsa-L's optimizer state in low precision: codecs
// with documented error bounds, and an on-disk state store (checksummed
// spill files, a journal for crash-safe resume) that keeps one block's
// state resident at a time.
package lowmem

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sort"

	"github.com/elsa-stream/elsa-stream/internal/kernels"
)

// Codec encodes float32 state to bytes and back. Encode appends to dst.
// Every codec states its round-trip error bound in its doc comment, and
// the property tests check exactly that bound.
type Codec interface {
	Name() string
	Encode(dst []byte, x []float32) []byte
	// Decode fills x (whose length must match the encoded count) from b.
	Decode(x []float32, b []byte) error
	// Bytes is the encoded size of n values.
	Bytes(n int) int
}

// roundTripper is a codec that encodes and decodes in one pass:
// encodeRound appends exactly Encode's bytes and leaves in x exactly what
// Decode of them gives (a save continues from what is stored without
// decoding it again).
type roundTripper interface {
	encodeRound(dst []byte, x []float32) []byte
}

// NaN and Inf: fp32, bf16 and fp16 keep them; the scaled codecs (fp8,
// int8/dynamic blocks) mark a block holding any non-finite value by a NaN
// scale, so the whole block decodes to NaN: a diverged state is never
// silently turned into finite numbers.

// FP32 stores float32 exactly.
type FP32 struct{}

func (FP32) Name() string    { return "fp32" }
func (FP32) Bytes(n int) int { return 4 * n }
func (FP32) Encode(dst []byte, x []float32) []byte {
	for _, v := range x {
		dst = binary.LittleEndian.AppendUint32(dst, math.Float32bits(v))
	}
	return dst
}
func (FP32) Decode(x []float32, b []byte) error {
	if len(b) != 4*len(x) {
		return sizeErr("fp32", len(b), 4*len(x))
	}
	for i := range x {
		x[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return nil
}

func sizeErr(codec string, got, want int) error {
	return fmt.Errorf("lowmem: %s payload is %d bytes, want %d", codec, got, want)
}

// BF16 stores bfloat16. Round to nearest even: |x − q| ≤ 2⁻⁸·|x| for
// normal x (half an ulp of an 8-bit significand). With Stochastic, rounding
// goes up with probability equal to the discarded fraction: unbiased
// (E[q] = x) and |x − q| < 2⁻⁷·|x|; this keeps small optimizer updates to
// bf16 master weights from vanishing. Seed fixes the random stream, so
// resumed runs are bit-identical.
type BF16 struct {
	Stochastic bool
	Seed       uint64
}

func (c BF16) Name() string {
	if c.Stochastic {
		return "bf16-sr"
	}
	return "bf16"
}
func (BF16) Bytes(n int) int                         { return 2 * n }
func (c BF16) Encode(dst []byte, x []float32) []byte { return c.encode(dst, x, false) }

// encodeRound is Encode, then x set to the stored values (bf16 widens to
// float32 exactly: its bits shifted up).
func (c BF16) encodeRound(dst []byte, x []float32) []byte { return c.encode(dst, x, true) }

func (c BF16) encode(dst []byte, x []float32, round bool) []byte {
	h := make([]uint16, len(x))
	if !c.Stochastic {
		kernels.F32ToBF16(h, x)
	} else {
		// Adding uniform random low bits then truncating rounds up with
		// probability (discarded bits)/2^16; one 64-bit draw serves four
		// values, high bits first (across the seeds of consecutive
		// tensors, the first draws' low 16 bits were measurably biased).
		r := rand.NewPCG(c.Seed, uint64(len(x)))
		var bits uint64
		for i, v := range x {
			if i%4 == 0 {
				bits = r.Uint64()
			}
			b := math.Float32bits(v)
			if b&0x7fffffff >= 0x7f800000 { // Inf, NaN: as RNE
				h[i] = kernels.BF16FromF32(v)
			} else {
				h[i] = uint16((b + uint32(bits>>48)) >> 16)
			}
			bits <<= 16
		}
	}
	if round {
		kernels.BF16ToF32(x, h)
	}
	return appendU16(dst, h)
}
func (BF16) Decode(x []float32, b []byte) error {
	if len(b) != 2*len(x) {
		return sizeErr("bf16", len(b), 2*len(x))
	}
	kernels.BF16ToF32(x, u16s(b))
	return nil
}

// FP16 stores IEEE binary16, saturating: round to nearest even, values
// beyond ±65504 become ±65504 (state must not overflow to Inf). For
// 2⁻¹⁴ ≤ |x| ≤ 65504: |x − q| ≤ 2⁻¹¹·|x|; below: |x − q| ≤ 2⁻²⁵.
type FP16 struct{}

func (FP16) Name() string    { return "fp16" }
func (FP16) Bytes(n int) int { return 2 * n }
func (FP16) Encode(dst []byte, x []float32) []byte {
	h := make([]uint16, len(x))
	kernels.F32ToF16(h, x)
	for i, v := range x {
		if h[i]&0x7fff == 0x7c00 && !math.IsInf(float64(v), 0) {
			h[i] = h[i]&0x8000 | 0x7bff // saturate finite overflow
		}
	}
	return appendU16(dst, h)
}
func (FP16) Decode(x []float32, b []byte) error {
	if len(b) != 2*len(x) {
		return sizeErr("fp16", len(b), 2*len(x))
	}
	kernels.F16ToF32(x, u16s(b))
	return nil
}

func appendU16(dst []byte, h []uint16) []byte {
	n := len(dst)
	dst = slices.Grow(dst, 2*len(h))[:n+2*len(h)]
	for i, v := range h {
		binary.LittleEndian.PutUint16(dst[n+2*i:], v)
	}
	return dst
}

func u16s(b []byte) []uint16 {
	h := make([]uint16, len(b)/2)
	for i := range h {
		h[i] = binary.LittleEndian.Uint16(b[2*i:])
	}
	return h
}

// codeBook is a sorted table of representable values in [−1, 1] (or
// [0, 1]); encoding picks the nearest entry.
type codeBook []float32

// bucketIndex speeds up nearest() for a code book: a binary search over 256
// entries mispredicts a branch at nearly every probe (~40 ns per value).
// Instead the top 16 bits of the float32 (sign, exponent, 7 mantissa bits)
// select a bucket whose nearest-entry candidates were precomputed: first
// and how many follow. Buckets are 2⁻⁷ relative wide, narrower than the
// code books' gaps, so a bucket has one or two candidates; with two, the
// choice is a comparison with the bucket's threshold (below).
type bucketIndex struct {
	cb    codeBook
	first []uint16
	span  []uint8
	// thr[k] is, for a bucket with two candidates, the smallest value of
	// the bucket that codeBook.nearest maps to the second (+Inf if none):
	// with a = cb[first], b = cb[first+1], a < b, the float32 predicate
	// |b − v| < |a − v| only turns from false to true as v grows, so
	// nearest(v) = first + (v ≥ thr) exactly, without a branch.
	thr []float32
}

func newBucketIndex(cb codeBook) *bucketIndex {
	bi := &bucketIndex{cb: cb, first: make([]uint16, 1<<16), span: make([]uint8, 1<<16), thr: make([]float32, 1<<16)}
	inf := float32(math.Inf(1))
	for k := 0; k < 1<<16; k++ {
		bi.thr[k] = inf
		lo := math.Float32frombits(uint32(k) << 16)
		hi := math.Float32frombits(uint32(k)<<16 | 0xffff)
		if lo != lo || hi != hi { // NaN buckets: never queried
			continue
		}
		a, b := cb.nearest(lo), cb.nearest(hi)
		if a > b {
			a, b = b, a
		}
		bi.first[k] = uint16(a)
		bi.span[k] = uint8(min(255, b-a))
		if b-a == 1 {
			bi.thr[k] = secondFrom(cb[a], cb[b], uint32(k))
		}
	}
	return bi
}

// secondFrom is the smallest value v of bucket k (the float32s whose top 16
// bits are k) with |b − v| < |a − v| in float32, +Inf if there is none.
func secondFrom(a, b float32, k uint32) float32 {
	// The t-th smallest value of the bucket: bit patterns ascend with the
	// value for positive floats and descend for negative ones.
	value := func(t uint32) float32 {
		if k&0x8000 != 0 {
			t = 0xffff - t
		}
		return math.Float32frombits(k<<16 | t)
	}
	second := func(v float32) bool { return absf(b-v) < absf(a-v) }
	lo, hi := uint32(0), uint32(1<<16) // the answer's t lies in [lo, hi]
	for lo < hi {
		mid := (lo + hi) / 2
		if second(value(mid)) {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	if lo == 1<<16 {
		return float32(math.Inf(1))
	}
	return value(lo)
}

func absf(x float32) float32 { return math.Float32frombits(math.Float32bits(x) &^ (1 << 31)) }

// nearest is codeBook.nearest through the bucket table (v finite).
func (bi *bucketIndex) nearest(v float32) int {
	k := math.Float32bits(v) >> 16
	i := int(bi.first[k])
	if bi.span[k] > 1 {
		return bi.scan(v, i, int(bi.span[k]))
	}
	if v >= bi.thr[k] {
		i++
	}
	return i
}

// scan is the nearest of the span+1 candidates from first (ties to the first).
func (bi *bucketIndex) scan(v float32, first, span int) int {
	best, bestD := first, absf(bi.cb[first]-v)
	for j := first + 1; j <= first+span; j++ {
		if d := absf(bi.cb[j] - v); d < bestD {
			best, bestD = j, d
		}
	}
	return best
}

func (cb codeBook) nearest(v float32) int {
	// Binary search for the first entry ≥ v (inlined: sort.Search's closure
	// call per probe made the encoders 3x slower).
	lo, hi := 0, len(cb)
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if cb[mid] < v {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	i := lo
	switch {
	case i == 0:
		return 0
	case i == len(cb):
		return len(cb) - 1
	case v-cb[i-1] <= cb[i]-v:
		return i - 1
	}
	return i
}

// FP8 stores OCP FP8 (E4M3 or E5M2) with one per-tensor scale
// s = max|x| / fp8max × 1.05 (the reference code's headroom), q = fp8(x/s)
// rounded to the nearest representable value. E4M3: |x − q| ≤ 2⁻⁴·|x| for
// |x/s| ≥ 2⁻⁶, else ≤ 2⁻¹⁰·s; E5M2: ≤ 2⁻³·|x| for |x/s| ≥ 2⁻¹⁴, else
// ≤ 2⁻¹⁷·s. Layout: float32 scale, then one byte per value.
type FP8 struct{ E5M2 bool }

func (c FP8) Name() string {
	if c.E5M2 {
		return "fp8-e5m2"
	}
	return "fp8-e4m3"
}
func (FP8) Bytes(n int) int { return 4 + n }

var fp8Books = func() [2]struct {
	values codeBook
	index  *bucketIndex
	codes  []uint8
	max    float32
} {
	var out [2]struct {
		values codeBook
		index  *bucketIndex
		codes  []uint8
		max    float32
	}
	for k, dec := range []func(uint8) float32{kernels.F8E4M3ToF32One, kernels.F8E5M2ToF32One} {
		type pair struct {
			v float32
			c uint8
		}
		var ps []pair
		for c := 0; c < 256; c++ {
			v := dec(uint8(c))
			if v != v || math.IsInf(float64(v), 0) || (v == 0 && c != 0) {
				continue // NaN, Inf and −0 are never chosen
			}
			ps = append(ps, pair{v, uint8(c)})
		}
		sort.Slice(ps, func(i, j int) bool { return ps[i].v < ps[j].v })
		for _, p := range ps {
			out[k].values = append(out[k].values, p.v)
			out[k].codes = append(out[k].codes, p.c)
		}
		out[k].max = ps[len(ps)-1].v
		out[k].index = newBucketIndex(out[k].values)
	}
	return out
}()

func (c FP8) book() (*bucketIndex, []uint8, float32) {
	k := 0
	if c.E5M2 {
		k = 1
	}
	return fp8Books[k].index, fp8Books[k].codes, fp8Books[k].max
}

func (c FP8) Encode(dst []byte, x []float32) []byte {
	vals, codes, fmax := c.book()
	amax, finite := absMax(x)
	scale := amax / fmax * 1.05
	if !finite {
		scale = float32(math.NaN())
	}
	dst = binary.LittleEndian.AppendUint32(dst, math.Float32bits(scale))
	inv := 1 / scale
	for _, v := range x {
		if scale == 0 || !finite {
			dst = append(dst, 0)
			continue
		}
		dst = append(dst, codes[vals.nearest(v*inv)])
	}
	return dst
}

func (c FP8) Decode(x []float32, b []byte) error {
	if len(b) != 4+len(x) {
		return sizeErr(c.Name(), len(b), 4+len(x))
	}
	scale := math.Float32frombits(binary.LittleEndian.Uint32(b))
	if c.E5M2 {
		kernels.F8E5M2ToF32(x, b[4:], scale)
	} else {
		kernels.F8E4M3ToF32(x, b[4:], scale)
	}
	return nil
}

// absMax is max|x| and whether every x is finite. On the bits: with the
// sign cleared, float32 order is unsigned integer order, and NaN and ±Inf
// are exactly the patterns ≥ 0x7f800000 (a branch-free max per value).
func absMax(x []float32) (float32, bool) {
	var m uint32
	for _, v := range x {
		m = max(m, math.Float32bits(v)&^(1<<31))
	}
	if m >= 0x7f800000 {
		return 0, false
	}
	return math.Float32frombits(m), true
}
