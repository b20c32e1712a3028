package shard

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"runtime/debug"
	"unsafe"

	mmap "github.com/edsrzf/mmap-go"

	"github.com/elsa-stream/elsa-stream/internal/budget"
	"github.com/elsa-stream/elsa-stream/internal/fsguard"
	"github.com/elsa-stream/elsa-stream/internal/kernels"
)

// File is one safetensors file mapped read-only into memory. Tensor bytes are
// zero-copy slices of the mapping: pages are read from disk when touched and
// count in the process RSS while resident.
type File struct {
	Path   string
	Header *Header
	data   mmap.MMap // nil when opened with NoMmap
	f      *os.File  // pread source, and fstat'ed before each read of a mapping
	size   int64     // the file's size when opened
	byName map[string]int
	table  *budget.Reservation // the parsed header's memory in the ledger (nil: none)
}

// Options select how files are read.
type Options struct {
	// NoMmap reads tensors with pread instead of mapping the file: slower on
	// local disks, but on network filesystems mmap is known to be 30-50x
	// slower than sequential reads.
	NoMmap bool
	// Ledger, when set, holds what parsing a header costs while it is
	// parsed (HeaderParseBytes): a hostile 100 MB header is refused by the
	// budget instead of overrunning it.
	Ledger *budget.Ledger
}

// HeaderParseBytes is the memory parsing a safetensors header of n bytes
// takes at its peak, and HeaderTableBytes what the parsed tensor table
// keeps for as long as the file is open. Measured on a 20.8 MB header of
// 200,000 tensors: 14.3 bytes allocated per header byte during the parse
// (most of it garbage the memory limit collects), 3.4 live after it.
func HeaderParseBytes(n int64) int64 { return 5 * n }

// HeaderTableBytes: see HeaderParseBytes. Only headers of smallHeader
// bytes or more keep it reserved; a usual one (tens to hundreds of KB)
// belongs to the plan's small buffers.
func HeaderTableBytes(n int64) int64 { return 4 * n }

const smallHeader = 1 << 20

// OpenFile maps path read-only and validates its header.
func OpenFile(path string) (*File, error) { return OpenFileWith(path, Options{}) }

// OpenFileWith opens path as OpenFile does, or for pread with opt.NoMmap.
func OpenFileWith(path string, opt Options) (out *File, err error) {
	f, err := fsguard.OpenRegular(path)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := fi.Size()
	if size < 8 {
		return nil, invalid(path, "", "file is %d bytes, too short for the 8-byte safetensors header length", size)
	}
	var lenBuf [8]byte
	if _, err := f.ReadAt(lenBuf[:], 0); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	// Check the header length before mapping so a hostile length is refused
	// with the same message ParseHeader gives.
	if n := binary.LittleEndian.Uint64(lenBuf[:]); n > MaxHeaderSize || int64(n) > size-8 {
		_, err := ParseHeader(path, lenBuf[:], size)
		return nil, err
	}
	if opt.Ledger != nil {
		n := int64(binary.LittleEndian.Uint64(lenBuf[:]))
		r, err := opt.Ledger.Reserve("safetensors header of "+path+" (parsing)", HeaderParseBytes(n))
		if err != nil {
			return nil, fmt.Errorf("%s: its %s header: %w", path, budget.Format(n), err)
		}
		defer func() {
			r.Release()
			if out == nil || n < smallHeader {
				return // a usual header's table is among a run's small buffers
			}
			// The tensor table stays while the file is open.
			if out.table, err = opt.Ledger.Reserve("safetensors header of "+path, HeaderTableBytes(n)); err != nil {
				out.Close()
				out = nil
			}
		}()
	}
	var sf *File
	if opt.NoMmap {
		n := binary.LittleEndian.Uint64(lenBuf[:])
		hdr := make([]byte, 8+n)
		if _, err := f.ReadAt(hdr, 0); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		h, err := ParseHeader(path, hdr, size)
		if err != nil {
			return nil, err
		}
		sf = &File{Path: path, Header: h, f: f, size: size}
	} else {
		m, err := mmap.Map(f, mmap.RDONLY, 0)
		if err != nil {
			return nil, fmt.Errorf("%s: mmap: %w", path, err)
		}
		h, err := ParseHeader(path, m, size)
		if err != nil {
			m.Unmap()
			return nil, err
		}
		sf = &File{Path: path, Header: h, data: m, f: f, size: size}
	}
	h := sf.Header
	sf.byName = make(map[string]int, len(h.Tensors))
	for i, t := range h.Tensors {
		sf.byName[t.Name] = i
	}
	return sf, nil
}

// Close unmaps (or closes) the file. Views obtained from it must not be
// used afterwards.
func (f *File) Close() error {
	if f.table != nil {
		f.table.Release()
		f.table = nil
	}
	var err error
	if f.data != nil {
		err = f.data.Unmap()
		f.data = nil
	}
	if f.f != nil {
		if e := f.f.Close(); err == nil {
			err = e
		}
		f.f = nil
	}
	return err
}

// Mapped reports whether tensors are zero-copy views of a mapping.
func (f *File) Mapped() bool { return f.data != nil }

// Tensor returns the named tensor of this file.
func (f *File) Tensor(name string) (*Tensor, bool) {
	i, ok := f.byName[name]
	if !ok {
		return nil, false
	}
	return &Tensor{TensorInfo: f.Header.Tensors[i], File: f}, true
}

// Tensor is a tensor inside a mapped file.
type Tensor struct {
	TensorInfo
	File   *File
	packed *PackedParts // a packed folder's sparse tensor (File: its values')
}

// Bytes returns the tensor's raw little-endian bytes (zero copy). It is nil
// for files opened with NoMmap; use ReadBytes there.
func (t *Tensor) Bytes() []byte {
	if t.File.data == nil || t.packed != nil {
		return nil
	}
	s := t.File.Header.DataStart
	return t.File.data[s+t.Begin : s+t.End : s+t.End]
}

// ReadBytes copies the tensor's raw bytes into dst (len NumBytes), by copy
// from the mapping or by pread.
func (t *Tensor) ReadBytes(dst []byte) error {
	if int64(len(dst)) != t.NumBytes() {
		return t.errorf("has %d bytes, destination holds %d", t.NumBytes(), len(dst))
	}
	return t.ReadRangeBytes(dst, 0)
}

// ReadRangeBytes copies the tensor's raw bytes [off, off+len(dst)) into
// dst, by copy from the mapping or by pread.
func (t *Tensor) ReadRangeBytes(dst []byte, off int64) error {
	if off < 0 || off+int64(len(dst)) > t.NumBytes() {
		return t.errorf("bytes [%d, %d) are outside its %d", off, off+int64(len(dst)), t.NumBytes())
	}
	if t.packed != nil {
		return t.packed.decodeRange(t, dst, off)
	}
	if t.File.data != nil {
		return t.fromMapping(func() { copy(dst, t.Bytes()[off:]) })
	}
	if _, err := t.File.f.ReadAt(dst, t.File.Header.DataStart+t.Begin+off); err != nil {
		if fi, serr := t.File.f.Stat(); serr == nil && fi.Size() < t.File.Header.DataStart+t.End {
			return t.errorf("read: %v: the file shrank to %d bytes while in use (it held %d): was it overwritten or truncated during the run?", err, fi.Size(), t.File.size)
		}
		return t.errorf("read: %v", err)
	}
	return nil
}

// fromMapping runs fn, which reads the tensor's mapped bytes, after
// checking that the file still holds them: a mapped page past the end of a
// file that shrank raises SIGBUS, which Go turns into a fatal error. The
// fstat catches a file truncated before the read; one truncated during it
// faults, and debug.SetPanicOnFault turns that fault into a recovered
// panic and the panic into an error.
func (t *Tensor) fromMapping(fn func()) (err error) {
	var fi os.FileInfo
	if fi, err = t.File.f.Stat(); err != nil {
		return t.errorf("stat: %v", err)
	}
	end := t.File.Header.DataStart + t.End
	if fi.Size() < end {
		return t.errorf("the file shrank to %d bytes while in use (it held %d; the tensor ends at byte %d): was it overwritten or truncated during the run?", fi.Size(), t.File.size, end)
	}
	return t.guardFault(fn)
}

// guardFault runs fn with faults on this goroutine turned into a
// recovered panic, and that panic into an error naming the tensor.
func (t *Tensor) guardFault(fn func()) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			if _, fault := r.(interface{ Addr() uintptr }); !fault {
				panic(r)
			}
			err = t.errorf("memory fault reading the mapped file (%v): was it truncated or removed during the run?", r)
		}
	}()
	fn()
	return nil
}

// CheckFinite returns an error naming the file, the tensor and the element
// when b, the tensor's values as dtype d (its own bytes, or a conversion),
// holds a NaN or an infinity.
func (t *Tensor) CheckFinite(b []byte, d DType) error { return t.CheckFiniteAt(b, d, 0) }

// CheckFiniteAt is CheckFinite for a range of the tensor's values starting
// at element first.
func (t *Tensor) CheckFiniteAt(b []byte, d DType, first int64) error {
	if i := NonFinite(b, d); i >= 0 {
		return t.errorf("element %d (of %d) is %s: the checkpoint holds non-finite weights", first+int64(i), t.NumElements(), describeValue(b, d, i))
	}
	return nil
}

func (t *Tensor) errorf(format string, args ...any) error {
	return fmt.Errorf("%s: tensor %q: %s", t.File.Path, t.Name, fmt.Sprintf(format, args...))
}

// view casts the tensor's bytes to []E after checking dtype and alignment:
// an unaligned cast is undefined behaviour in Go, so it is refused (use
// ReadFloat32, which copies).
func view[E any](t *Tensor, want ...DType) ([]E, error) {
	ok := false
	for _, d := range want {
		ok = ok || t.DType == d
	}
	if !ok {
		return nil, t.errorf("dtype %s, want %v", t.DType, want)
	}
	if t.File.data == nil {
		return nil, t.errorf("zero-copy view of a file opened without mmap")
	}
	if t.packed != nil {
		return nil, t.errorf("zero-copy view of a packed tensor (read its components)")
	}
	b := t.Bytes()
	if len(b) == 0 {
		return []E{}, nil
	}
	size := t.DType.Size()
	if uintptr(unsafe.Pointer(&b[0]))%uintptr(size) != 0 {
		return nil, t.errorf("data at file offset %d is not %d-byte aligned; a zero-copy view is impossible", t.File.Header.DataStart+t.Begin, size)
	}
	return unsafe.Slice((*E)(unsafe.Pointer(&b[0])), int64(len(b))/size), nil
}

// Float32s is a zero-copy view of an F32 tensor.
func (t *Tensor) Float32s() ([]float32, error) { return view[float32](t, F32) }

// Uint16s is a zero-copy view of the bit patterns of an F16 or BF16 tensor.
func (t *Tensor) Uint16s() ([]uint16, error) { return view[uint16](t, F16, BF16, I16, U16) }

// Uint32s is a zero-copy view of a U32 tensor.
func (t *Tensor) Uint32s() ([]uint32, error) { return view[uint32](t, U32) }

// Int64s is a zero-copy view of an I64 tensor.
func (t *Tensor) Int64s() ([]int64, error) { return view[int64](t, I64) }

// Int8s is a zero-copy view of an I8 tensor.
func (t *Tensor) Int8s() ([]int8, error) { return view[int8](t, I8) }

// Uint8s is a zero-copy view of a one-byte tensor (U8, BOOL, F8_E4M3, F8_E5M2).
func (t *Tensor) Uint8s() ([]uint8, error) { return view[uint8](t, U8, BOOL, F8_E4M3, F8_E5M2) }

// ReadFloat32 converts the tensor into dst (len(dst) must equal the number
// of elements). F32, F16, BF16, I8, U8, F8_E4M3 and F8_E5M2 are supported;
// integer and FP8 values are converted unscaled.
func (t *Tensor) ReadFloat32(dst []float32) error {
	if int64(len(dst)) != t.NumElements() {
		return t.errorf("has %d elements, destination holds %d", t.NumElements(), len(dst))
	}
	errf := func(format string, args ...any) error { return t.errorf(format, args...) }
	if b := t.Bytes(); b != nil || t.NumBytes() == 0 {
		var err error
		if ferr := t.fromMapping(func() { err = DecodeFloat32(dst, b, t.DType, errf) }); ferr != nil {
			return ferr
		}
		return err
	}
	if t.DType == F32 { // pread straight into dst
		return t.ReadBytes(unsafe.Slice((*byte)(unsafe.Pointer(&dst[0])), 4*len(dst)))
	}
	b := make([]byte, t.NumBytes())
	if err := t.ReadBytes(b); err != nil {
		return err
	}
	return DecodeFloat32(dst, b, t.DType, errf)
}

// ReadRangeFloat32 converts elements [off, off+len(dst)) of the tensor
// into dst: a few rows of an embedding or a vocabulary chunk of an lm_head,
// without converting the rest. Ranges under preadBelow bytes are read with
// pread even from a mapped file; larger mapped reads are fault-guarded as
// ReadFloat32's, and the caller drops their pages (Advise DontNeed) when
// done.
func (t *Tensor) ReadRangeFloat32(dst []float32, off int64) error {
	size := t.DType.Size()
	if off < 0 || off+int64(len(dst)) > t.NumElements() {
		return t.errorf("elements [%d, %d) are outside its %d", off, off+int64(len(dst)), t.NumElements())
	}
	lo, hi := off*size, (off+int64(len(dst)))*size
	errf := func(format string, args ...any) error { return t.errorf(format, args...) }
	if b := t.Bytes(); b != nil && hi-lo >= preadBelow {
		var err error
		if ferr := t.fromMapping(func() { err = DecodeFloat32(dst, b[lo:hi], t.DType, errf) }); ferr != nil {
			return ferr
		}
		return err
	}
	raw := make([]byte, hi-lo)
	if t.packed != nil {
		if err := t.ReadRangeBytes(raw, lo); err != nil {
			return err
		}
	} else if _, err := t.File.f.ReadAt(raw, t.File.Header.DataStart+t.Begin+lo); err != nil {
		return t.errorf("read: %v", err)
	}
	return DecodeFloat32(dst, raw, t.DType, errf)
}

// preadBelow is the size under which a range is read with pread rather
// than from the mapping: a mapped read of one embedding row (a few KiB)
// maps the kernel's whole fault-around window (64 KiB) into the process,
// pages no DontNeed of the row itself drops; thousands of random rows
// kept 200 MiB of a 256 MiB embedding resident.
const preadBelow = 256 << 10

// DecodeFloat32 converts little-endian bytes of dtype d into dst. errf
// formats the error for an unsupported dtype (nil: a plain error).
func DecodeFloat32(dst []float32, b []byte, d DType, errf func(string, ...any) error) error {
	if errf == nil {
		errf = func(format string, args ...any) error { return fmt.Errorf("shard: "+format, args...) }
	}
	if int64(len(b)) != int64(len(dst))*d.Size() {
		return errf("has %d bytes, want %d for %d %s elements", len(b), int64(len(dst))*d.Size(), len(dst), d)
	}
	if len(dst) == 0 {
		return nil
	}
	switch d {
	case F32:
		copy(unsafe.Slice((*byte)(unsafe.Pointer(&dst[0])), len(b)), b)
	case F16, BF16:
		var src []uint16
		if uintptr(unsafe.Pointer(&b[0]))%2 == 0 {
			src = unsafe.Slice((*uint16)(unsafe.Pointer(&b[0])), len(dst))
		} else {
			src = make([]uint16, len(dst))
			for i := range src {
				src[i] = binary.LittleEndian.Uint16(b[2*i:])
			}
		}
		if d == F16 {
			kernels.F16ToF32(dst, src)
		} else {
			kernels.BF16ToF32(dst, src)
		}
	case I8:
		for i, v := range b {
			dst[i] = float32(int8(v))
		}
	case U8:
		for i, v := range b {
			dst[i] = float32(v)
		}
	case F8_E4M3:
		kernels.F8E4M3ToF32(dst, b, 1)
	case F8_E5M2:
		kernels.F8E5M2ToF32(dst, b, 1)
	default:
		return errf("dtype %s does not convert to float32", d)
	}
	return nil
}

// EncodeFloat32 converts src to little-endian bytes of dtype d (F32, F16 with
// round-to-nearest-even, BF16 with round-to-nearest-even) appended to dst.
func EncodeFloat32(dst []byte, src []float32, d DType) ([]byte, error) {
	switch d {
	case F32:
		for _, v := range src {
			dst = binary.LittleEndian.AppendUint32(dst, math.Float32bits(v))
		}
	case F16:
		for _, v := range src {
			dst = binary.LittleEndian.AppendUint16(dst, kernels.F16FromF32(v))
		}
	case BF16:
		for _, v := range src {
			dst = binary.LittleEndian.AppendUint16(dst, kernels.BF16FromF32(v))
		}
	default:
		return dst, fmt.Errorf("shard: cannot encode float32 as %s", d)
	}
	return dst, nil
}

// Advice is a page-cache hint for a tensor's mapped bytes.
type Advice int

// The hints stream uses: WillNeed before a block is read (the kernel starts
// reading ahead), DontNeed once it is converted (its pages leave the RSS).
const (
	WillNeed Advice = iota
	DontNeed
)

// Advise passes a hint for the tensor's mapped pages to the kernel
// (madvise on the page-aligned range). It is a no-op for files opened
// without mmap.
func (t *Tensor) Advise(a Advice) error {
	if t.packed != nil {
		return t.packed.advise(a)
	}
	if t.File.data == nil {
		return nil
	}
	s := t.File.Header.DataStart
	return adviseRange(t.File.data, s+t.Begin, s+t.End, a)
}

// AdviseRange passes a hint for the pages of elements [off, off+n).
func (t *Tensor) AdviseRange(a Advice, off, n int64) error {
	if t.packed != nil {
		return t.packed.advise(a) // the components' ranges do not map onto rows simply
	}
	if t.File.data == nil {
		return nil
	}
	s, size := t.File.Header.DataStart+t.Begin, t.DType.Size()
	return adviseRange(t.File.data, s+off*size, s+(off+n)*size, a)
}
