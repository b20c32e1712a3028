package shard

import (
	"fmt"
	"sort"
	"strings"

	st "github.com/nlpodyssey/safetensors"
)

// DType is an element type of a safetensors tensor. It extends the set known
// to github.com/nlpodyssey/safetensors with the two OCP FP8 types, which that
// library rejects (one unknown dtype fails its whole file).
type DType uint8

// The dtypes elsa-stream reads. F32, F16 and BF16 convert to float32;
// I8, U8, F8_E4M3 and F8_E5M2 are used by state files.
const (
	BOOL DType = iota
	U8
	I8
	F8_E4M3
	F8_E5M2
	I16
	U16
	F16
	BF16
	I32
	U32
	F32
	F64
	I64
	U64
)

var dtypeNames = [...]string{
	BOOL: "BOOL", U8: "U8", I8: "I8", F8_E4M3: "F8_E4M3", F8_E5M2: "F8_E5M2",
	I16: "I16", U16: "U16", F16: "F16", BF16: "BF16", I32: "I32", U32: "U32",
	F32: "F32", F64: "F64", I64: "I64", U64: "U64",
}

var dtypeSizes = [...]int64{
	BOOL: 1, U8: 1, I8: 1, F8_E4M3: 1, F8_E5M2: 1, I16: 2, U16: 2, F16: 2,
	BF16: 2, I32: 4, U32: 4, F32: 4, F64: 8, I64: 8, U64: 8,
}

// fromLibrary maps the safetensors library's dtypes onto ours, so that the
// standard names are parsed by the library and only FP8 is our extension.
var fromLibrary = map[st.DType]DType{
	st.BOOL: BOOL, st.U8: U8, st.I8: I8, st.I16: I16, st.U16: U16, st.F16: F16,
	st.BF16: BF16, st.I32: I32, st.U32: U32, st.F32: F32, st.F64: F64,
	st.I64: I64, st.U64: U64,
}

// String returns the safetensors name of the dtype ("F32", "BF16", ...).
func (d DType) String() string {
	if int(d) < len(dtypeNames) {
		return dtypeNames[d]
	}
	return fmt.Sprintf("DType(%d)", uint8(d))
}

// Size is the size of one element in bytes.
func (d DType) Size() int64 {
	if int(d) < len(dtypeSizes) {
		return dtypeSizes[d]
	}
	panic("shard: invalid DType")
}

// IsFloat reports whether the dtype converts to float32 for compute.
func (d DType) IsFloat() bool { return d == F32 || d == F16 || d == BF16 }

// ParseDType parses a safetensors dtype name. The error lists the names
// elsa-stream understands.
func ParseDType(s string) (DType, error) {
	if d, err := st.ParseDType(s); err == nil {
		return fromLibrary[d], nil
	}
	switch s {
	case "F8_E4M3":
		return F8_E4M3, nil
	case "F8_E5M2":
		return F8_E5M2, nil
	}
	names := append([]string(nil), dtypeNames[:]...)
	sort.Strings(names)
	return 0, fmt.Errorf("unknown dtype %q (supported: %s)", s, strings.Join(names, ", "))
}
