package shard

import (
	"encoding/binary"
	"fmt"
	"math"
)

// NonFinite returns the index of the first NaN or infinity among the
// little-endian values of dtype d in b, or -1 when every value is finite
// (and for dtypes without non-finite values: integers, and F8_E4M3FN whose
// only NaN is checked too).
//
// A value is non-finite exactly when its exponent field is all ones: F32
// 0x7f800000, BF16 0x7f80, F16 0x7c00, F8_E5M2 0x7c; F8_E4M3 (the FN
// variant) has no infinity and NaN only as S.1111.111. The wide formats
// are checked four 16-bit (two 32-bit) lanes per 64-bit word with the
// classic "has a zero lane" test on (x & mask) ^ mask, so the check runs at
// memory speed; the index is then found in the one word that failed.
func NonFinite(b []byte, d DType) int {
	switch d {
	case F32:
		return nonFiniteLanes(b, 4, 0x7f800000_7f800000, 0x00000001_00000001, 0x80000000_80000000)
	case BF16:
		return nonFiniteLanes(b, 2, 0x7f80_7f80_7f80_7f80, 0x0001_0001_0001_0001, 0x8000_8000_8000_8000)
	case F16:
		return nonFiniteLanes(b, 2, 0x7c00_7c00_7c00_7c00, 0x0001_0001_0001_0001, 0x8000_8000_8000_8000)
	case F8_E5M2:
		for i, v := range b {
			if v&0x7c == 0x7c {
				return i
			}
		}
	case F8_E4M3:
		for i, v := range b {
			if v&0x7f == 0x7f {
				return i
			}
		}
	}
	return -1
}

// nonFiniteLanes scans b as size-byte lanes for an exponent field equal to
// the lane mask (mask repeated per lane; ones and highs are the lane-wise
// 1 and sign bits for the zero-lane test).
func nonFiniteLanes(b []byte, size int, mask, ones, highs uint64) int {
	n := len(b) / 8 * 8
	for off := 0; off < n; off += 8 {
		y := binary.LittleEndian.Uint64(b[off:])&mask ^ mask
		if (y-ones)&^y&highs != 0 {
			if i := nonFiniteScalar(b[off:off+8], size, mask); i >= 0 {
				return off/size + i
			}
		}
	}
	if i := nonFiniteScalar(b[n:], size, mask); i >= 0 {
		return n/size + i
	}
	return -1
}

func nonFiniteScalar(b []byte, size int, mask uint64) int {
	for i := 0; i+size <= len(b); i += size {
		var v, m uint64
		if size == 4 {
			v, m = uint64(binary.LittleEndian.Uint32(b[i:])), mask&0xffffffff
		} else {
			v, m = uint64(binary.LittleEndian.Uint16(b[i:])), mask&0xffff
		}
		if v&m == m {
			return i / size
		}
	}
	return -1
}

// describeValue renders element i of b ("NaN", "+Inf", "-Inf") for errors.
func describeValue(b []byte, d DType, i int) string {
	var f float32
	dst := []float32{0}
	s := int(d.Size())
	if DecodeFloat32(dst, b[i*s:(i+1)*s], d, nil) == nil {
		f = dst[0]
	}
	switch {
	case math.IsNaN(float64(f)):
		return "NaN"
	case math.IsInf(float64(f), 1):
		return "+Inf"
	case math.IsInf(float64(f), -1):
		return "-Inf"
	}
	return fmt.Sprint(f)
}
