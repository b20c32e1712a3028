package shard

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"unsafe"

	"github.com/elsa-stream/elsa-stream/internal/fsguard"
	"github.com/elsa-stream/elsa-stream/internal/kernels"
)

// The packed sparse checkpoint: a folder of its own holding config.json and
// the tokenizer files verbatim, a manifest (ManifestFile) and the tensors in
// safetensors containers named by PackedLayout (sparse.elsa, or
// sparse-0000i-of-0000n.elsa and sparse.index.json), never *.safetensors,
// so no loader of Hugging Face folders mistakes it for a checkpoint.
//
// A tensor is stored in the smallest of three encodings: as it is
// ("dense"), or as a sparse matrix over its last dimension (rows = product
// of the others), "bitmap":
//
//	<name>.rowptr  I64 [rows+1]         row r's values are rowptr[r] .. rowptr[r+1]
//	<name>.bitmap  U32 [rows, ⌈cols/32⌉] bit j of word c: column 32c+j is kept
//	<name>.values  dtype [nnz]          the kept values, row-major, bits unchanged
//
// or "gaps" (kernels.GapsRows):
//
//	<name>.rowptr  I64 [rows+1]         row r's entries are rowptr[r] .. rowptr[r+1]
//	<name>.values  dtype [entries]      the entries' values, bits unchanged
//	<name>.gaps    U8 [entries]         column of an entry − column of the previous
//	                                    one (−1 before a row's first): 1..255; a
//	                                    longer gap is bridged by fillers (gap 255,
//	                                    value bits all zero)
//
// A value is kept when its bits are not all zero, so unpacking gives the
// tensor back bit for bit (−0 included). Per weight of a bf16 matrix with
// a fraction d kept: bitmap 1/8 + 2d bytes, gaps 3d (plus fillers), dense 2,
// so gaps win below d = 1/8 (at 90% sparsity 0.30 bytes against the
// bitmap's 0.325), bitmaps from there to d = 15/16; gaps also decode faster
// there (kernels.GapsRows). The components are ordered by element size
// (all row offsets, all bitmaps, then values and dense tensors, widest
// first, the gaps last) so every one is aligned for zero-copy views.

// ManifestFile names a packed folder's manifest.
const ManifestFile = "elsa-sparse.json"

// ManifestFormat and ManifestVersion identify the packed format (version
// 2 added the gaps encoding; version 1 folders read unchanged).
const (
	ManifestFormat  = "elsa-sparse"
	ManifestVersion = 2
)

// The encodings of a packed tensor.
const (
	EncodingDense  = "dense"
	EncodingBitmap = "bitmap"
	EncodingGaps   = "gaps"
)

// Manifest describes a packed folder.
type Manifest struct {
	Format  string `json:"format"`
	Version int    `json:"version"`
	// Tensors in the source checkpoint's order (file by file, by offset).
	Tensors []PackedTensor `json:"tensors"`
	// Metadata is the source's safetensors __metadata__ (of its first file).
	Metadata map[string]string `json:"metadata,omitempty"`
	// DenseBytes and PackedBytes are the tensor bytes before and after.
	DenseBytes  int64 `json:"dense_bytes"`
	PackedBytes int64 `json:"packed_bytes"`
}

// PackedTensor is one tensor of the source checkpoint.
type PackedTensor struct {
	Name     string  `json:"name"`
	DType    string  `json:"dtype"`
	Shape    []int64 `json:"shape"`
	Encoding string  `json:"encoding"`
	// NNZ is the values a sparse encoding stores: the kept ones (for
	// gaps, the fillers too).
	NNZ int64 `json:"nnz,omitempty"`
}

// SideFiles are copied verbatim between checkpoint folders when present:
// the config and the tokenizer, never tensors.
var SideFiles = []string{ConfigFile, "generation_config.json", "tokenizer.json", "tokenizer.model",
	"tokenizer_config.json", "special_tokens_map.json"}

// packSideFiles are SideFiles and a pruned model's statistics.
var packSideFiles = append(SideFiles[:len(SideFiles):len(SideFiles)], "sparsity.json")

// PackedParts are the components of a sparse tensor of a packed folder.
type PackedParts struct {
	Encoding string  // EncodingBitmap or EncodingGaps
	RowPtr   *Tensor // I64 [rows+1]
	Index    *Tensor // the bitmap (U32 [rows, ⌈cols/32⌉]) or the gaps (U8 [entries])
	Values   *Tensor // dtype [NNZ]
	rows     int64
	cols     int64
}

// Packed returns the components of a sparse tensor of a packed folder (ok
// false for a tensor stored as it is).
func (t *Tensor) Packed() (parts *PackedParts, ok bool) {
	return t.packed, t.packed != nil
}

// bitmapShape is the rows and columns of shape as a bitmap matrix.
func bitmapShape(shape []int64) (rows, cols int64, ok bool) {
	if len(shape) < 2 {
		return 0, 0, false
	}
	rows = 1
	for _, d := range shape[:len(shape)-1] {
		rows *= d
	}
	return rows, shape[len(shape)-1], shape[len(shape)-1] > 0
}

func bitmapBytes(rows, cols, nnz, size int64) int64 {
	return 8*(rows+1) + 4*rows*int64(kernels.Chunks(int(cols))) + nnz*size
}

func gapsBytes(rows, entries, size int64) int64 { return 8*(rows+1) + entries*(1+size) }

// encodedBytes is the bytes of a sparse encoding of a rows × cols matrix
// storing nnz values of size bytes.
func encodedBytes(enc string, rows, cols, nnz, size int64) int64 {
	if enc == EncodingGaps {
		return gapsBytes(rows, nnz, size)
	}
	return bitmapBytes(rows, cols, nnz, size)
}

func elemOf(d DType) (kernels.Elem, bool) {
	switch d {
	case F32:
		return kernels.F32, true
	case BF16:
		return kernels.BF16, true
	case F16:
		return kernels.F16, true
	}
	return 0, false
}

// openPacked opens a packed folder: its manifest, its containers, and one
// logical tensor per manifest entry, every component checked against it.
func openPacked(dir string, opt Options) (*Model, error) {
	mf, err := ReadManifest(dir)
	if err != nil {
		return nil, err
	}
	c, err := openLayout(dir, opt, PackedLayout)
	if err != nil {
		return nil, err
	}
	m := &Model{Dir: dir, Files: c.Files, tensors: map[string]*Tensor{}}
	path := filepath.Join(dir, ManifestFile)
	used := map[string]bool{}
	component := func(pt PackedTensor, suffix string, d DType, shape ...int64) (*Tensor, error) {
		name := pt.Name + suffix
		t, ok := c.tensors[name]
		if !ok {
			return nil, invalid(path, pt.Name, "component %q is missing from the containers", name)
		}
		if t.DType != d || !equalShape(t.Shape, shape) {
			return nil, invalid(path, pt.Name, "component %q is %s %v, want %s %v", name, t.DType, t.Shape, d, shape)
		}
		used[name] = true
		return t, nil
	}
	for _, pt := range mf.Tensors {
		d, err := ParseDType(pt.DType)
		if err != nil {
			return nil, invalid(path, pt.Name, "%v", err)
		}
		if _, dup := m.tensors[pt.Name]; dup {
			return nil, invalid(path, pt.Name, "listed twice")
		}
		switch pt.Encoding {
		case EncodingDense:
			t, err := component(pt, "", d, pt.Shape...)
			if err != nil {
				c.Close()
				return nil, err
			}
			m.tensors[pt.Name] = t
		case EncodingBitmap, EncodingGaps:
			rows, cols, ok := bitmapShape(pt.Shape)
			// Fillers bridge at most cols/255 gaps per row.
			most := rows * cols
			if pt.Encoding == EncodingGaps {
				most += rows * (cols / kernels.MaxGap)
			}
			if _, isFloat := elemOf(d); !ok || !isFloat || pt.NNZ < 0 || pt.NNZ > most {
				c.Close()
				return nil, invalid(path, pt.Name, "a %s tensor must be a float matrix with 0 ≤ nnz ≤ %d; got %s %v nnz %d", pt.Encoding, most, d, pt.Shape, pt.NNZ)
			}
			p := &PackedParts{Encoding: pt.Encoding, rows: rows, cols: cols}
			var errs [3]error
			p.RowPtr, errs[0] = component(pt, ".rowptr", I64, rows+1)
			if pt.Encoding == EncodingGaps {
				p.Index, errs[1] = component(pt, ".gaps", U8, pt.NNZ)
			} else {
				p.Index, errs[1] = component(pt, ".bitmap", U32, rows, int64(kernels.Chunks(int(cols))))
			}
			p.Values, errs[2] = component(pt, ".values", d, pt.NNZ)
			if err := errors.Join(errs[:]...); err != nil {
				c.Close()
				return nil, err
			}
			n := d.Size()
			for _, x := range pt.Shape {
				n *= x
			}
			m.tensors[pt.Name] = &Tensor{TensorInfo: TensorInfo{Name: pt.Name, DType: d, Shape: pt.Shape, End: n}, File: p.Values.File, packed: p}
		default:
			c.Close()
			return nil, invalid(path, pt.Name, "unknown encoding %q (want %s, %s or %s)", pt.Encoding, EncodingDense, EncodingBitmap, EncodingGaps)
		}
	}
	for _, name := range c.Names {
		if !used[name] {
			c.Close()
			return nil, invalid(path, "", "the containers hold %q, which the manifest does not name", name)
		}
	}
	for name := range m.tensors {
		m.Names = append(m.Names, name)
	}
	sort.Strings(m.Names)
	return m, nil
}

func equalShape(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// ReadManifest reads and checks dir's packed manifest.
func ReadManifest(dir string) (*Manifest, error) {
	path := filepath.Join(dir, ManifestFile)
	b, err := fsguard.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s is not a packed folder (it has no %s; `elsa-stream pack` writes one): %w", dir, ManifestFile, err)
	}
	if err != nil {
		return nil, err
	}
	var mf Manifest
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&mf); err != nil {
		return nil, invalid(path, "", "not a packed manifest: %v", err)
	}
	if mf.Format != ManifestFormat || mf.Version < 1 || mf.Version > ManifestVersion {
		return nil, invalid(path, "", "format %q version %d; this build reads %q versions 1 to %d", mf.Format, mf.Version, ManifestFormat, ManifestVersion)
	}
	return &mf, nil
}

// decodeRange writes the tensor's dense bytes [off, off+len(dst)) from its
// components: the rows the range touches are unpacked, their entries
// checked against the row offsets.
func (p *PackedParts) decodeRange(t *Tensor, dst []byte, off int64) error {
	size := t.DType.Size()
	e0, e1 := off/size, (off+int64(len(dst)))/size
	if e0 == e1 {
		return nil
	}
	r0, r1 := e0/p.cols, (e1+p.cols-1)/p.cols
	rpBytes := make([]byte, 8*(r1-r0+1))
	if err := p.RowPtr.ReadRangeBytes(rpBytes, 8*r0); err != nil {
		return err
	}
	rowptr := make([]int64, r1-r0+1)
	for i := range rowptr {
		rowptr[i] = int64(binary.LittleEndian.Uint64(rpBytes[8*i:]))
	}
	lo, hi := rowptr[0], rowptr[len(rowptr)-1]
	if lo < 0 || hi < lo || hi > p.Values.NumElements() {
		return t.errorf("row offsets [%d, %d) of rows %d..%d are outside its %d values: the packed file is damaged", lo, hi, r0, r1, p.Values.NumElements())
	}
	vals := make([]byte, (hi-lo)*size)
	if err := p.Values.ReadRangeBytes(vals, lo*size); err != nil {
		return err
	}
	rowBytes := p.cols * size
	out := dst
	aligned := off == r0*rowBytes && int64(len(dst)) == (r1-r0)*rowBytes
	if !aligned {
		out = make([]byte, (r1-r0)*rowBytes)
	}
	e, _ := elemOf(t.DType)
	var err error
	if p.Encoding == EncodingGaps {
		gaps := make([]byte, hi-lo)
		if err := p.Index.ReadRangeBytes(gaps, lo); err != nil {
			return err
		}
		err = kernels.UnpackGaps(out, rowptr, gaps, vals, e, int(p.cols))
	} else {
		words := int64(kernels.Chunks(int(p.cols)))
		bm := make([]uint32, (r1-r0)*words)
		if err := p.Index.ReadRangeBytes(unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(bm))), 4*len(bm)), 4*r0*words); err != nil {
			return err
		}
		var n int
		n, err = kernels.UnpackRows(out, bm, vals, e, int(p.cols))
		if err == nil && n != len(vals) {
			err = fmt.Errorf("the bitmap of rows %d..%d keeps %d values, the row offsets %d", r0, r1, n/int(size), hi-lo)
		}
	}
	if err != nil {
		return t.errorf("%v: the packed file is damaged", err)
	}
	if !aligned {
		copy(dst, out[off-r0*rowBytes:])
	}
	return nil
}

// advise passes a hint for every component's pages.
func (p *PackedParts) advise(a Advice) error {
	return errors.Join(p.RowPtr.Advise(a), p.Index.Advise(a), p.Values.Advise(a))
}

// PackOptions configure Pack.
type PackOptions struct {
	MaxShardSize int64 // 0: DefaultMaxShardSize
	Force        bool  // replace an existing output folder
}

// packPiece is the dense bytes Pack and Unpack handle at once.
const packPiece = 4 << 20

// Pack writes the packed form of the Hugging Face folder in to the new
// folder out: each float matrix in the smallest of its encodings, every
// other tensor as it is, config and tokenizer files verbatim. Tensors are
// read a piece at a time (their pages dropped after) and checked finite.
func Pack(in, out string, opt PackOptions) (*Manifest, error) {
	if _, err := os.Stat(filepath.Join(in, ManifestFile)); err == nil {
		return nil, fmt.Errorf("%s is already packed (it holds %s)", in, ManifestFile)
	}
	m, err := Open(in)
	if err != nil {
		return nil, err
	}
	defer m.Close()
	mf := &Manifest{Format: ManifestFormat, Version: ManifestVersion}
	var tensors []*Tensor
	for i, f := range m.Files {
		if i == 0 && len(f.Header.Metadata) > 0 {
			mf.Metadata = f.Header.Metadata
		}
		for _, ti := range f.Header.Tensors {
			t, _ := f.Tensor(ti.Name)
			tensors = append(tensors, t)
		}
	}
	var specs []Spec
	sparse := map[string]sparseLayout{} // the sparse tensors' encodings and row offsets, from the counting pass
	for _, t := range tensors {
		pt := PackedTensor{Name: t.Name, DType: t.DType.String(), Shape: t.Shape, Encoding: EncodingDense}
		rows, cols, isMatrix := bitmapShape(t.Shape)
		best := t.NumBytes()
		if _, isFloat := elemOf(t.DType); isMatrix && isFloat && rows > 0 {
			offsets, err := rowOffsets(t)
			if err != nil {
				return nil, err
			}
			for _, enc := range []string{EncodingBitmap, EncodingGaps} {
				rowptr := offsets[enc]
				nnz := int64(binary.LittleEndian.Uint64(rowptr[len(rowptr)-8:]))
				if n := encodedBytes(enc, rows, cols, nnz, t.DType.Size()); n < best {
					best, pt.Encoding, pt.NNZ = n, enc, nnz
					sparse[t.Name] = sparseLayout{enc, rowptr}
				}
			}
		}
		mf.Tensors = append(mf.Tensors, pt)
		mf.DenseBytes += t.NumBytes()
		mf.PackedBytes += best
		switch pt.Encoding {
		case EncodingDense:
			specs = append(specs, Spec{t.Name, t.DType, t.Shape})
		case EncodingBitmap:
			specs = append(specs,
				Spec{t.Name + ".rowptr", I64, []int64{rows + 1}},
				Spec{t.Name + ".bitmap", U32, []int64{rows, int64(kernels.Chunks(int(cols)))}},
				Spec{t.Name + ".values", t.DType, []int64{pt.NNZ}})
		case EncodingGaps:
			specs = append(specs,
				Spec{t.Name + ".rowptr", I64, []int64{rows + 1}},
				Spec{t.Name + ".gaps", U8, []int64{pt.NNZ}},
				Spec{t.Name + ".values", t.DType, []int64{pt.NNZ}})
		}
	}
	sort.SliceStable(specs, func(i, j int) bool { return specRank(specs[i]) < specRank(specs[j]) })
	w, err := NewWriter(out, specs, WriterOptions{MaxShardSize: opt.MaxShardSize, Force: opt.Force, FiniteOnly: true, Layout: PackedLayout})
	if err != nil {
		return nil, err
	}
	defer w.Abort()
	byName := map[string]*Tensor{}
	for _, t := range tensors {
		byName[t.Name] = t
	}
	for _, s := range specs {
		if err := writePackedComponent(w, s, byName, sparse); err != nil {
			return nil, err
		}
	}
	if err := copySideFiles(w, in); err != nil {
		return nil, err
	}
	b, _ := json.MarshalIndent(mf, "", "  ")
	if err := w.AddFile(ManifestFile, append(b, '\n')); err != nil {
		return nil, err
	}
	return mf, w.Commit()
}

// specRank orders the packed components so each starts aligned: row
// offsets, bitmaps, then the rest by element size, widest first (so the
// gaps, bytes, come last).
func specRank(s Spec) int {
	switch {
	case strings.HasSuffix(s.Name, ".rowptr") && s.DType == I64:
		return 0
	case strings.HasSuffix(s.Name, ".bitmap") && s.DType == U32:
		return 1
	}
	return 10 - int(s.DType.Size())
}

// rowPieces calls fn with consecutive whole-row pieces of t's dense bytes.
func rowPieces(t *Tensor, fn func(piece []byte) error) error {
	_, cols, _ := bitmapShape(t.Shape)
	rowBytes := cols * t.DType.Size()
	step := max(1, packPiece/rowBytes) * rowBytes
	buf := make([]byte, min(step, t.NumBytes()))
	defer t.Advise(DontNeed)
	for off := int64(0); off < t.NumBytes(); off += step {
		piece := buf[:min(step, t.NumBytes()-off)]
		if err := t.ReadRangeBytes(piece, off); err != nil {
			return err
		}
		if err := t.CheckFiniteAt(piece, t.DType, off/t.DType.Size()); err != nil {
			return err
		}
		if err := fn(piece); err != nil {
			return err
		}
		if err := t.AdviseRange(DontNeed, off/t.DType.Size(), int64(len(piece))/t.DType.Size()); err != nil {
			return err
		}
	}
	return nil
}

// sparseLayout is a sparse tensor's encoding and row offsets.
type sparseLayout struct {
	encoding string
	rowptr   []byte
}

// rowOffsets counts, for each row of matrix t, its kept values and its
// gap-coded entries: the row offsets of both sparse encodings (rows+1
// little-endian int64, from 0 to the total), by encoding.
func rowOffsets(t *Tensor) (map[string][]byte, error) {
	rows, cols, _ := bitmapShape(t.Shape)
	e, _ := elemOf(t.DType)
	rowBytes := int(cols) * e.Size()
	kept := binary.LittleEndian.AppendUint64(make([]byte, 0, 8*(rows+1)), 0)
	entries := binary.LittleEndian.AppendUint64(make([]byte, 0, 8*(rows+1)), 0)
	var nk, ne int64
	err := rowPieces(t, func(p []byte) error {
		for r := 0; r < len(p); r += rowBytes {
			k, n := kernels.RowCounts(p[r:r+rowBytes], e)
			nk, ne = nk+int64(k), ne+int64(n)
			kept = binary.LittleEndian.AppendUint64(kept, uint64(nk))
			entries = binary.LittleEndian.AppendUint64(entries, uint64(ne))
		}
		return nil
	})
	return map[string][]byte{EncodingBitmap: kept, EncodingGaps: entries}, err
}

// writePackedComponent streams one spec of Pack's output from its source
// tensor (the row offsets from the counting pass).
func writePackedComponent(w *Writer, s Spec, byName map[string]*Tensor, sparse map[string]sparseLayout) error {
	if t, ok := byName[s.Name]; ok { // stored as it is
		return w.WriteTensorPieces(s.Name, func(emit func([]byte) error) error { return rowPiecesOrWhole(t, emit) })
	}
	i := strings.LastIndexByte(s.Name, '.')
	name, part := s.Name[:i], s.Name[i+1:]
	layout := sparse[name]
	if part == "rowptr" {
		return w.WriteTensor(s.Name, layout.rowptr)
	}
	t := byName[name]
	_, cols, _ := bitmapShape(t.Shape)
	e, _ := elemOf(t.DType)
	w32 := kernels.Chunks(int(cols))
	return w.WriteTensorPieces(s.Name, func(emit func([]byte) error) error {
		var words []uint32
		var index, vals []byte
		return rowPieces(t, func(p []byte) error {
			if layout.encoding == EncodingGaps {
				index, vals = kernels.PackGaps(index[:0], vals[:0], p, e, int(cols))
				if part == "values" {
					return emit(vals)
				}
				return emit(index)
			}
			rows := len(p) / (int(cols) * int(e.Size()))
			if cap(words) < rows*w32 {
				words = make([]uint32, rows*w32)
			}
			words = words[:rows*w32]
			vals = kernels.PackRows(words, vals[:0], p, e, int(cols))
			if part == "values" {
				return emit(vals)
			}
			return emit(unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(words))), 4*len(words)))
		})
	})
}

// rowPiecesOrWhole emits a dense tensor in pieces (whole rows for a
// matrix, the whole tensor otherwise), checked finite when it is float.
func rowPiecesOrWhole(t *Tensor, emit func([]byte) error) error {
	if _, _, ok := bitmapShape(t.Shape); ok && t.NumBytes() > 0 && t.DType.IsFloat() {
		return rowPieces(t, emit)
	}
	b := make([]byte, t.NumBytes())
	if err := t.ReadBytes(b); err != nil {
		return err
	}
	if t.DType.IsFloat() {
		if err := t.CheckFinite(b, t.DType); err != nil {
			return err
		}
	}
	return emit(b)
}

func copySideFiles(w *Writer, dir string) error {
	for _, name := range packSideFiles {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err := w.CopyFile(p); err != nil {
			return err
		}
	}
	return nil
}

// Unpack writes the Hugging Face folder out from the packed folder in:
// every tensor bit for bit as it was, in the source's order, with its
// metadata (a source of one file, e.g. any elsa-stream output up to the
// shard size, comes back byte for byte).
func Unpack(in, out string, opt PackOptions) error {
	mf, err := ReadManifest(in)
	if err != nil {
		return err
	}
	m, err := Open(in)
	if err != nil {
		return err
	}
	defer m.Close()
	var specs []Spec
	for _, pt := range mf.Tensors {
		t, _ := m.Tensor(pt.Name)
		specs = append(specs, Spec{t.Name, t.DType, t.Shape})
	}
	meta := map[string]string{}
	for k, v := range mf.Metadata {
		if k != "format" {
			meta[k] = v
		}
	}
	w, err := NewWriter(out, specs, WriterOptions{MaxShardSize: opt.MaxShardSize, Force: opt.Force, FiniteOnly: true, Metadata: meta})
	if err != nil {
		return err
	}
	defer w.Abort()
	for _, s := range specs {
		t, _ := m.Tensor(s.Name)
		if err := w.WriteTensorPieces(s.Name, func(emit func([]byte) error) error { return rowPiecesOrWhole(t, emit) }); err != nil {
			return err
		}
	}
	if err := copySideFiles(w, in); err != nil {
		return err
	}
	return w.Commit()
}
