package lowmem

import (
	"encoding/binary"
	"fmt"
	"math"
)

// Sparse stores a mostly-zero vector (the split variable z) as a bitmap of
// its non-zeros plus the non-zero values packed with Values. Zeros are
// exact; non-zeros are within Values' bound. At 90% sparsity with int8
// values this is ~0.225 bytes per parameter before the bitmap is
// compressed. Layout: uint32 non-zero count, bitmap (⌈n/8⌉ bytes, bit i of
// byte i/8 little-endian), Values' payload.
type Sparse struct{ Values Codec }

func (c Sparse) Name() string { return "sparse(" + c.Values.Name() + ")" }

// Bytes is the worst case (no zeros); the actual size depends on the data.
func (c Sparse) Bytes(n int) int { return 4 + (n+7)/8 + c.Values.Bytes(n) }

func (c Sparse) Encode(dst []byte, x []float32) []byte {
	bitmap := make([]byte, (len(x)+7)/8)
	var nz []float32
	for i, v := range x {
		if v != 0 {
			bitmap[i/8] |= 1 << (i % 8)
			nz = append(nz, v)
		}
	}
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(nz)))
	dst = append(dst, bitmap...)
	return c.Values.Encode(dst, nz)
}

func (c Sparse) Decode(x []float32, b []byte) error {
	nbm := (len(x) + 7) / 8
	if len(b) < 4+nbm {
		return sizeErr(c.Name(), len(b), 4+nbm)
	}
	nnz := int(binary.LittleEndian.Uint32(b))
	bitmap := b[4 : 4+nbm]
	if nnz > len(x) || popcount(bitmap) != nnz {
		return errCorrupt(c.Name(), fmt.Sprintf("bitmap holds %d non-zeros, header says %d", popcount(bitmap), nnz))
	}
	vals := make([]float32, nnz)
	if err := c.Values.Decode(vals, b[4+nbm:]); err != nil {
		return err
	}
	k := 0
	for i := range x {
		if bitmap[i/8]>>(i%8)&1 == 1 {
			x[i] = vals[k]
			k++
		} else {
			x[i] = 0
		}
	}
	return nil
}

func popcount(b []byte) int {
	n := 0
	for _, v := range b {
		for ; v != 0; v &= v - 1 {
			n++
		}
	}
	return n
}

// ZU stores Elsa's split and dual variables together right after a dual
// update, when their supports are complementary (docs/design.md, Elsa: with
// v = W + u, z = Proj(v) keeps v where the mask is set and u = v − z is v
// elsewhere): one quantized copy of v = z + u plus a 1-bit mask of z's
// support. z and u are each within Values' bound of the originals (the same
// quantized v feeds both). Layout: Sparse-style bitmap of z ≠ 0, then v.
type ZU struct{ Values Codec }

func (c ZU) Name() string { return "zu(" + c.Values.Name() + ")" }

// Bytes is the encoded size for n parameters (both z and u).
func (c ZU) Bytes(n int) int { return (n+7)/8 + c.Values.Bytes(n) }

// EncodeZU appends z and u. It fails if both are non-zero at one position
// (they are then not the pair of a dual update).
func (c ZU) EncodeZU(dst []byte, z, u []float32) ([]byte, error) { return c.encodeZU(dst, z, u, false) }

// RoundZU is EncodeZU, then z and u set to what DecodeZU of the bytes
// gives, in one pass when the values' codec can (a save).
func (c ZU) RoundZU(dst []byte, z, u []float32) ([]byte, error) { return c.encodeZU(dst, z, u, true) }

func (c ZU) encodeZU(dst []byte, z, u []float32, round bool) ([]byte, error) {
	if len(z) != len(u) {
		return dst, fmt.Errorf("lowmem: z has %d values, u %d", len(z), len(u))
	}
	bitmap := make([]byte, (len(z)+7)/8)
	v := make([]float32, len(z))
	overlap := false
	for i := range z {
		zb, ub := math.Float32bits(z[i]), math.Float32bits(u[i])
		inZ, inU := zb&^(1<<31) != 0, ub&^(1<<31) != 0
		overlap = overlap || (inZ && inU)
		// v = z where z ≠ 0, else u: one of the two is ±0 there.
		if inZ {
			bitmap[i/8] |= 1 << (i % 8)
			ub = zb
		}
		v[i] = math.Float32frombits(ub)
	}
	if overlap {
		for i := range z {
			if z[i] != 0 && u[i] != 0 {
				return dst, fmt.Errorf("lowmem: z and u overlap at %d (%g, %g): not the supports of a dual update", i, z[i], u[i])
			}
		}
	}
	dst = append(dst, bitmap...)
	if !round {
		return c.Values.Encode(dst, v), nil
	}
	dst = EncodeRound(dst, c.Values, v)
	splitByMask(z, u, v, bitmap)
	return dst, nil
}

// splitByMask sets z = v where bitmap's bit is set, u = v elsewhere, the
// other one +0.
func splitByMask(z, u, v []float32, bitmap []byte) {
	for i := range z {
		mask := -(uint32(bitmap[i/8]>>(i%8)) & 1)
		vb := math.Float32bits(v[i])
		z[i], u[i] = math.Float32frombits(vb&mask), math.Float32frombits(vb&^mask)
	}
}

// DecodeZU fills z and u from b.
func (c ZU) DecodeZU(z, u []float32, b []byte) error {
	n := len(z)
	nbm := (n + 7) / 8
	if len(u) != n || len(b) != nbm+c.Values.Bytes(n) {
		return sizeErr(c.Name(), len(b), nbm+c.Values.Bytes(n))
	}
	if err := c.Values.Decode(u, b[nbm:]); err != nil {
		return err
	}
	splitByMask(z, u, u, b[:nbm]) // v decoded into u
	return nil
}
