package shard

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"sort"
	"strconv"
)

// MaxHeaderSize bounds the JSON header of a safetensors file (as the
// reference implementation does): a larger claim is refused before any
// allocation, so a hostile file cannot make us reserve gigabytes.
const MaxHeaderSize = 100_000_000

// ErrInvalid is wrapped by every error about a malformed safetensors file,
// index or config, so callers can tell bad input from I/O failures.
var ErrInvalid = errors.New("invalid model file")

// FormatError describes a malformed file. Tensor is empty when the problem is
// not about one tensor.
type FormatError struct {
	File   string
	Tensor string
	Msg    string
}

func (e *FormatError) Error() string {
	if e.Tensor != "" {
		return fmt.Sprintf("%s: tensor %q: %s", e.File, e.Tensor, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.File, e.Msg)
}

// Unwrap makes errors.Is(err, ErrInvalid) true.
func (e *FormatError) Unwrap() error { return ErrInvalid }

func invalid(file, tensor, format string, args ...any) error {
	return &FormatError{File: file, Tensor: tensor, Msg: fmt.Sprintf(format, args...)}
}

// TensorInfo locates one tensor inside a safetensors file. Begin and End are
// byte offsets relative to the start of the data section (as in the header).
type TensorInfo struct {
	Name  string
	DType DType
	Shape []int64
	Begin int64
	End   int64
}

// NumElements is the product of the shape (1 for a 0-dim tensor).
func (t *TensorInfo) NumElements() int64 {
	n := int64(1)
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// NumBytes is End - Begin.
func (t *TensorInfo) NumBytes() int64 { return t.End - t.Begin }

// Header is a parsed and validated safetensors header.
type Header struct {
	// Metadata holds the "__metadata__" entries (string to string).
	Metadata map[string]string
	// Tensors in increasing offset order.
	Tensors []TensorInfo
	// DataStart is the absolute file offset of the data section (8 + header length).
	DataStart int64
}

// ParseHeader parses and validates the header of a safetensors file named
// file (used in messages). prefix holds at least the first min(size, 8 +
// header length) bytes of the file; size is the whole file's length.
//
// Validation is strict, each failure naming the file and, where it applies,
// the tensor: header length past the end of file or over MaxHeaderSize;
// invalid JSON; duplicate names; unknown dtypes; unexpected keys; shape x
// dtype size different from the byte range; offsets that leave holes,
// overlap, or run past the end of the file.
func ParseHeader(file string, prefix []byte, size int64) (*Header, error) {
	if size < 8 || len(prefix) < 8 {
		return nil, invalid(file, "", "file is %d bytes, too short for the 8-byte safetensors header length", size)
	}
	n := binary.LittleEndian.Uint64(prefix[:8])
	if n > MaxHeaderSize {
		return nil, invalid(file, "", "header length %d is over the %d-byte limit", n, MaxHeaderSize)
	}
	if int64(n) > size-8 {
		return nil, invalid(file, "", "header length %d runs past the end of the file (%d bytes)", n, size)
	}
	if uint64(len(prefix)) < 8+n {
		return nil, fmt.Errorf("shard: %s: ParseHeader needs the first %d bytes, got %d", file, 8+n, len(prefix))
	}
	h := &Header{DataStart: int64(8 + n)}
	if err := h.parseJSON(file, prefix[8:8+n]); err != nil {
		return nil, err
	}
	if err := h.validateLayout(file, size-h.DataStart); err != nil {
		return nil, err
	}
	return h, nil
}

// parseJSON decodes the header object token by token: a map decode would
// silently keep the last of two equal names, and we must refuse duplicates.
func (h *Header) parseJSON(file string, js []byte) error {
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	seen := map[string]bool{}
	err := strictObject(dec, func(key string) error {
		if seen[key] {
			if key == "__metadata__" {
				return invalid(file, "", "header has __metadata__ twice")
			}
			return invalid(file, key, "named twice in the header")
		}
		seen[key] = true
		if key == "__metadata__" {
			md, err := stringMap(dec)
			if err != nil {
				return invalid(file, "", "__metadata__: %v", err)
			}
			h.Metadata = md
			return nil
		}
		t, err := parseTensorEntry(dec, key)
		if isSyntax(err) {
			return err
		}
		if err != nil {
			return invalid(file, key, "%v", err)
		}
		h.Tensors = append(h.Tensors, t)
		return nil
	})
	if err != nil {
		var fe *FormatError
		if errors.As(err, &fe) {
			return err
		}
		return invalid(file, "", "header is not valid JSON: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		// Trailing spaces are legal padding; anything else is not.
		return invalid(file, "", "header has data after its JSON object")
	}
	return nil
}

func parseTensorEntry(dec *json.Decoder, name string) (TensorInfo, error) {
	t := TensorInfo{Name: name}
	var haveDType, haveShape, haveOffsets bool
	seen := map[string]bool{}
	err := strictObject(dec, func(key string) error {
		if seen[key] {
			return fmt.Errorf("key %q given twice", key)
		}
		seen[key] = true
		switch key {
		case "dtype":
			var s string
			if err := dec.Decode(&s); err != nil {
				return fmt.Errorf("dtype: %v", err)
			}
			d, err := ParseDType(s)
			if err != nil {
				return err
			}
			t.DType, haveDType = d, true
		case "shape":
			dims, err := intArray(dec)
			if err != nil {
				return fmt.Errorf("shape: %v", err)
			}
			t.Shape, haveShape = dims, true
		case "data_offsets":
			offs, err := intArray(dec)
			if err != nil {
				return fmt.Errorf("data_offsets: %v", err)
			}
			if len(offs) != 2 {
				return fmt.Errorf("data_offsets has %d numbers, want 2", len(offs))
			}
			t.Begin, t.End, haveOffsets = offs[0], offs[1], true
		default:
			return fmt.Errorf("unexpected key %q (want dtype, shape, data_offsets)", key)
		}
		return nil
	})
	if err != nil {
		return t, err
	}
	if !haveDType || !haveShape || !haveOffsets {
		return t, fmt.Errorf("entry needs dtype, shape and data_offsets")
	}
	if t.Shape == nil {
		t.Shape = []int64{}
	}
	return t, nil
}

// isSyntax reports whether err comes from malformed JSON rather than from
// well-formed JSON with wrong content.
func isSyntax(err error) bool {
	var se *json.SyntaxError
	return errors.As(err, &se) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// validateLayout checks sizes and that the tensors tile [0, dataLen) exactly.
func (h *Header) validateLayout(file string, dataLen int64) error {
	for i := range h.Tensors {
		t := &h.Tensors[i]
		numel := uint64(1)
		for _, d := range t.Shape {
			hi, lo := bits.Mul64(numel, uint64(d))
			if hi != 0 || lo > math.MaxInt64 {
				return invalid(file, t.Name, "shape %v overflows", t.Shape)
			}
			numel = lo
		}
		hi, want := bits.Mul64(numel, uint64(t.DType.Size()))
		if hi != 0 || want > math.MaxInt64 {
			return invalid(file, t.Name, "shape %v overflows", t.Shape)
		}
		if t.End < t.Begin {
			return invalid(file, t.Name, "data_offsets [%d, %d] end before they begin", t.Begin, t.End)
		}
		if got := uint64(t.End - t.Begin); got != want {
			return invalid(file, t.Name, "shape %v x %s (%d bytes) does not match its byte range [%d, %d) of %d bytes",
				t.Shape, t.DType, want, t.Begin, t.End, got)
		}
		if t.End > dataLen {
			return invalid(file, t.Name, "data_offsets [%d, %d) run past the end of the data section (%d bytes)", t.Begin, t.End, dataLen)
		}
	}
	sort.SliceStable(h.Tensors, func(i, j int) bool {
		a, b := &h.Tensors[i], &h.Tensors[j]
		return a.Begin < b.Begin || (a.Begin == b.Begin && a.End < b.End)
	})
	var pos int64
	for i := range h.Tensors {
		t := &h.Tensors[i]
		switch {
		case t.Begin > pos:
			return invalid(file, t.Name, "leaves a hole: data_offsets start at %d but the previous tensor ends at %d", t.Begin, pos)
		case t.Begin < pos:
			return invalid(file, t.Name, "overlaps the previous tensor (starts at %d, previous ends at %d)", t.Begin, pos)
		}
		pos = t.End
	}
	if pos != dataLen {
		return invalid(file, "", "tensors end at byte %d of the data section but the file has %d data bytes", pos, dataLen)
	}
	return nil
}

// strictObject reads one JSON object from dec, calling fn for every key with
// the decoder positioned at its value; fn must consume the value.
func strictObject(dec *json.Decoder, fn func(key string) error) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return fmt.Errorf("expected a JSON object, found %v", tok)
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		key, ok := tok.(string)
		if !ok {
			return fmt.Errorf("expected an object key, found %v", tok)
		}
		if err := fn(key); err != nil {
			return err
		}
	}
	_, err = dec.Token() // closing '}'
	return err
}

func stringMap(dec *json.Decoder) (map[string]string, error) {
	m := map[string]string{}
	err := strictObject(dec, func(key string) error {
		if _, dup := m[key]; dup {
			return fmt.Errorf("key %q given twice", key)
		}
		var s string
		if err := dec.Decode(&s); err != nil {
			return fmt.Errorf("%q: value must be a string", key)
		}
		m[key] = s
		return nil
	})
	return m, err
}

func intArray(dec *json.Decoder) ([]int64, error) {
	var raw []json.Number
	if err := dec.Decode(&raw); err != nil {
		return nil, err
	}
	out := make([]int64, len(raw))
	for i, n := range raw {
		v, err := strconv.ParseInt(n.String(), 10, 64)
		if err != nil || v < 0 {
			return nil, fmt.Errorf("%s is not a non-negative integer", n)
		}
		out[i] = v
	}
	return out, nil
}
