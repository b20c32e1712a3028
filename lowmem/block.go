package lowmem

import (
	"encoding/binary"
	"math"
	"slices"
	"unsafe"

	"github.com/elsa-stream/elsa-stream/internal/kernels"
)

// Int8Block is block-wise absmax int8 (blocks of 256): per block
// scale = max|x|/127, q = round(x/scale). |x − q·scale| ≤ scale/2 =
// max|x_block|/254. Zeros stay exactly zero. Layout: float32 scales, then
// one int8 per value.
type Int8Block struct{}

func (Int8Block) Name() string { return "int8-block256" }
func (Int8Block) Bytes(n int) int {
	return 4*((n+kernels.Int8Block-1)/kernels.Int8Block) + n
}
func (c Int8Block) Encode(dst []byte, x []float32) []byte {
	nb := (len(x) + kernels.Int8Block - 1) / kernels.Int8Block
	s := make([]float32, nb)
	n := len(dst)
	dst = slices.Grow(dst, c.Bytes(len(x)))[:n+c.Bytes(len(x))]
	kernels.QuantizeInt8Block(int8s(dst[n+4*nb:]), s, x)
	for i, v := range s {
		binary.LittleEndian.PutUint32(dst[n+4*i:], math.Float32bits(v))
	}
	return dst
}
func (c Int8Block) Decode(x []float32, b []byte) error {
	if len(b) != c.Bytes(len(x)) {
		return sizeErr(c.Name(), len(b), c.Bytes(len(x)))
	}
	nb := (len(x) + kernels.Int8Block - 1) / kernels.Int8Block
	s := make([]float32, nb)
	for i := range s {
		s[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	kernels.DequantizeInt8Block(x, int8s(b[4*nb:]), s)
	return nil
}

// int8s views b as int8s (the codes are stored as their two's-complement
// bytes), so the kernels quantize into and decode from the buffer itself.
func int8s(b []byte) []int8 {
	return unsafe.Slice((*int8)(unsafe.Pointer(unsafe.SliceData(b))), len(b))
}

// dynamicMap builds a dynamic (tree) quantization code book in the manner
// of bitsandbytes' 8-bit Adam: for each decade i of `decades`, 2^i (signed)
// or 2^(i+1) (unsigned) values spread linearly over
// [0.1, 1]·10^(i−decades+1) (interval midpoints), mirrored for signed maps,
// plus 0 and 1. Small magnitudes get fine steps, large ones coarse: a good
// fit for Adam's moments, which span many orders of magnitude. Unlike
// bitsandbytes the signed map also holds −1 (so a block whose largest
// magnitude is negative decodes it exactly) and gives up the smallest
// positive entry for it. bits = 8 (decades 7) or 4 (decades 3) gives
// exactly 2^bits entries.
func dynamicMap(signed bool, bits int) codeBook {
	decades := bits - 1
	var data []float32
	for i := 0; i < decades; i++ {
		items := 1 << i
		if !signed {
			items = 2 << i
		}
		// Midpoints of items equal intervals of [0.1, 1].
		for j := 0; j < items; j++ {
			lo := 0.1 + 0.9*float64(j)/float64(items)
			hi := 0.1 + 0.9*float64(j+1)/float64(items)
			v := math.Pow(10, float64(i-decades+1)) * (lo + hi) / 2
			data = append(data, float32(v))
			if signed {
				data = append(data, float32(-v))
			}
		}
	}
	data = append(data, 0, 1)
	if signed {
		// −1 takes the slot of the smallest positive entry, data[0].
		data[0] = -1
	}
	for len(data) < 1<<bits { // unsigned maps are one short of 2^bits
		data = append(data, 0)
	}
	sortFloats(data)
	return dedupe(data)
}

func sortFloats(v []float32) {
	for i := 1; i < len(v); i++ {
		for j := i; j > 0 && v[j] < v[j-1]; j-- {
			v[j], v[j-1] = v[j-1], v[j]
		}
	}
}

func dedupe(v []float32) codeBook {
	out := v[:0]
	for i, x := range v {
		if i == 0 || x != v[i-1] {
			out = append(out, x)
		}
	}
	return codeBook(out)
}

// Dynamic is block-wise dynamic quantization for Adam moments (as
// bitsandbytes' 8-bit Adam): per block, x/max|x| is rounded to the nearest
// entry of a dynamic code book (signed for the first moment m, unsigned
// for the second moment v). |x − q| ≤ max|x_block| · g/2, with g the gap
// between the two code book entries around x/max|x| (the property tests
// check this exactly); relative error is ~2-13% per decade for 8 bits,
// largest for values below 10⁻⁶ of the block max. Bits 8 uses blocks of
// 256, bits 4 blocks of 128 (two values per byte). Layout: float32 scales,
// then the codes.
type Dynamic struct {
	Signed bool
	Bits   int // 8 or 4
}

// dynBooks are the four dynamic code books with their bucket indexes,
// built once.
var dynBooks = func() map[[2]int]*bucketIndex {
	m := map[[2]int]*bucketIndex{}
	for _, bits := range []int{8, 4} {
		for _, signed := range []int{0, 1} {
			m[[2]int{bits, signed}] = newBucketIndex(dynamicMap(signed == 1, bits))
		}
	}
	return m
}()

func (c Dynamic) index() *bucketIndex {
	k := [2]int{c.Bits, 0}
	if c.Signed {
		k[1] = 1
	}
	return dynBooks[k]
}

func (c Dynamic) book() codeBook { return c.index().cb }

func (c Dynamic) block() int {
	if c.Bits == 4 {
		return 128
	}
	return 256
}

func (c Dynamic) Name() string {
	s := "unsigned"
	if c.Signed {
		s = "signed"
	}
	return map[int]string{8: "dyn8-", 4: "dyn4-"}[c.Bits] + s
}

func (c Dynamic) Bytes(n int) int {
	nb := (n + c.block() - 1) / c.block()
	if c.Bits == 4 {
		return 4*nb + (n+1)/2
	}
	return 4*nb + n
}

func (c Dynamic) Encode(dst []byte, x []float32) []byte { return c.encode(dst, x, false) }

// encodeRound is Encode, then x set to code book entry × scale, as Decode.
func (c Dynamic) encodeRound(dst []byte, x []float32) []byte { return c.encode(dst, x, true) }

func (c Dynamic) encode(dst []byte, x []float32, round bool) []byte {
	if c.Bits != 8 && c.Bits != 4 {
		panic("lowmem: Dynamic.Bits must be 8 or 4")
	}
	bi := c.index()
	bs := c.block()
	nb := (len(x) + bs - 1) / bs
	dst = slices.Grow(dst, c.Bytes(len(x)))
	scales := make([]float32, nb)
	codes := make([]uint8, len(x))
	zero := uint8(bi.nearest(0))
	for b := range scales {
		blk, out := x[b*bs:min(len(x), (b+1)*bs)], codes[b*bs:min(len(x), (b+1)*bs)]
		amax, finite := absMax(blk)
		scales[b] = amax
		if !finite {
			scales[b] = float32(math.NaN())
		}
		if amax == 0 || !finite {
			for i := range out {
				out[i] = zero
				if round {
					blk[i] = bi.cb[zero] * scales[b]
				}
			}
			continue
		}
		inv := 1 / amax
		if !round {
			for i, v := range blk {
				out[i] = uint8(bi.nearest(v * inv))
			}
			continue
		}
		for i, v := range blk {
			code := bi.nearest(v * inv)
			out[i], blk[i] = uint8(code), bi.cb[code]*amax
		}
	}
	for _, s := range scales {
		dst = binary.LittleEndian.AppendUint32(dst, math.Float32bits(s))
	}
	if c.Bits == 8 {
		return append(dst, codes...)
	}
	for i := 0; i < len(codes); i += 2 {
		lo, hi := codes[i], uint8(0)
		if i+1 < len(codes) {
			hi = codes[i+1]
		}
		dst = append(dst, lo|hi<<4)
	}
	return dst
}

func (c Dynamic) Decode(x []float32, b []byte) error {
	if len(b) != c.Bytes(len(x)) {
		return sizeErr(c.Name(), len(b), c.Bytes(len(x)))
	}
	// The code book padded to all 2^bits codes; a code past its end is
	// corrupt data, flagged once per block instead of a branch per value.
	var table [256]float32
	cb := c.book()
	copy(table[:], cb)
	bs := c.block()
	nb := (len(x) + bs - 1) / bs
	codes := b[4*nb:]
	top := uint8(len(cb) - 1)
	for blk := 0; blk < nb; blk++ {
		scale := math.Float32frombits(binary.LittleEndian.Uint32(b[4*blk:]))
		lo, hi := blk*bs, min(len(x), (blk+1)*bs)
		var worst uint8
		if c.Bits == 8 {
			for i, code := range codes[lo:hi] {
				worst = max(worst, code)
				x[lo+i] = table[code] * scale
			}
		} else {
			for i := lo; i < hi; i++ {
				code := codes[i/2] >> (4 * (i % 2)) & 0xf
				worst = max(worst, code)
				x[i] = table[code] * scale
			}
		}
		if worst > top {
			return errCorrupt(c.Name(), "code out of range")
		}
	}
	return nil
}

func errCorrupt(codec, what string) error {
	return &CorruptError{Codec: codec, What: what}
}

// CorruptError reports undecodable state.
type CorruptError struct{ Codec, What string }

func (e *CorruptError) Error() string { return "lowmem: corrupt " + e.Codec + " data: " + e.What }
