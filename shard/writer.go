package shard

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/elsa-stream/elsa-stream/internal/fsguard"
)

// ErrExists refuses a target folder that exists (or appeared) when the
// writer may not replace it (WriterOptions.Force).
var ErrExists = errors.New("already exists")

// DefaultMaxShardSize is HF's default shard limit (5 GB, decimal as HF uses).
const DefaultMaxShardSize = 5_000_000_000

// Spec declares one tensor to write: its name, dtype and shape. The writer
// needs every spec up front because a safetensors header precedes the data.
type Spec struct {
	Name  string
	DType DType
	Shape []int64
}

func (s Spec) numBytes() int64 {
	n := s.DType.Size()
	for _, d := range s.Shape {
		n *= d
	}
	return n
}

// WriterOptions configure a Writer.
type WriterOptions struct {
	// MaxShardSize bounds the data bytes of one shard (0: DefaultMaxShardSize).
	// A tensor larger than the limit gets a shard of its own, as HF does.
	MaxShardSize int64
	// Metadata is written into every shard's __metadata__ beside "format": "pt".
	Metadata map[string]string
	// Force replaces an existing target folder.
	Force bool
	// FiniteOnly refuses a float tensor holding a NaN or an infinity: the
	// last line of defence of a pruning run, whatever produced the values.
	FiniteOnly bool
	// Layout names the files (zero: HFLayout).
	Layout Layout
}

// Layout names the tensor files of a checkpoint folder: the one file of an
// unsharded checkpoint, the shards (a format with the shard number and the
// count) and their index.
type Layout struct{ Single, Shard, Index string }

// HFLayout is a Hugging Face folder's; PackedLayout the packed sparse
// form's, whose files no loader of HF folders picks up.
var (
	HFLayout     = Layout{SingleFile, "model-%05d-of-%05d.safetensors", IndexFile}
	PackedLayout = Layout{"sparse.elsa", "sparse-%05d-of-%05d.elsa", "sparse.index.json"}
)

// Writer streams tensors, one at a time and in Spec order, into a new
// Hugging Face model folder. Everything goes to a temporary folder beside the
// target; Commit fsyncs and renames it into place, so the target is either
// absent/unchanged or complete. Any error (or Abort) removes the temporary
// folder.
type Writer struct {
	target string
	tmp    string
	opts   WriterOptions
	shards []shardPlan
	next   int // index into the flattened spec order
	cur    *os.File
	curIdx int
	err    error
	done   bool
}

type shardPlan struct {
	name  string
	specs []Spec
	size  int64
}

// NewWriter plans the shards for specs and creates the temporary folder.
// The target must not exist unless opts.Force is set.
func NewWriter(target string, specs []Spec, opts WriterOptions) (*Writer, error) {
	if opts.MaxShardSize == 0 {
		opts.MaxShardSize = DefaultMaxShardSize
	}
	if opts.Layout == (Layout{}) {
		opts.Layout = HFLayout
	}
	if opts.MaxShardSize < 0 {
		return nil, fmt.Errorf("shard: max shard size %d must be positive", opts.MaxShardSize)
	}
	seen := map[string]bool{}
	for _, s := range specs {
		if s.Name == "" || s.Name == "__metadata__" {
			return nil, fmt.Errorf("shard: invalid tensor name %q", s.Name)
		}
		if seen[s.Name] {
			return nil, fmt.Errorf("shard: tensor %q given twice", s.Name)
		}
		seen[s.Name] = true
		for _, d := range s.Shape {
			if d < 0 {
				return nil, fmt.Errorf("shard: tensor %q: negative dimension in %v", s.Name, s.Shape)
			}
		}
	}
	if _, err := os.Stat(target); err == nil && !opts.Force {
		return nil, fmt.Errorf("%s %w", target, ErrExists)
	}
	parent := filepath.Dir(filepath.Clean(target))
	tmp, err := os.MkdirTemp(parent, tempPrefix(target))
	if err != nil {
		return nil, fmt.Errorf("create temporary output folder: %w", err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil { // MkdirTemp makes 0700; a model folder is shared
		os.RemoveAll(tmp)
		return nil, err
	}
	w := &Writer{target: target, tmp: tmp, opts: opts, curIdx: -1}
	w.plan(specs)
	return w, nil
}

func (w *Writer) plan(specs []Spec) {
	var cur shardPlan
	for _, s := range specs {
		n := s.numBytes()
		if len(cur.specs) > 0 && cur.size+n > w.opts.MaxShardSize {
			w.shards = append(w.shards, cur)
			cur = shardPlan{}
		}
		cur.specs = append(cur.specs, s)
		cur.size += n
	}
	if len(cur.specs) > 0 || len(w.shards) == 0 {
		w.shards = append(w.shards, cur)
	}
	if len(w.shards) == 1 {
		w.shards[0].name = w.opts.Layout.Single
		return
	}
	for i := range w.shards {
		w.shards[i].name = fmt.Sprintf(w.opts.Layout.Shard, i+1, len(w.shards))
	}
}

// tempPrefix starts the name of every temporary folder a Writer makes
// beside target (and of the ".old" copy Commit moves aside).
func tempPrefix(target string) string { return "." + filepath.Base(filepath.Clean(target)) + ".tmp-" }

// RemoveStaleTemps deletes the temporary folders that writers for target
// left behind when their process died (kill -9, power loss) and returns
// their paths. Call it only while holding the lock on target: then no
// live writer owns them.
func RemoveStaleTemps(target string) ([]string, error) {
	return fsguard.RemoveStale(filepath.Dir(filepath.Clean(target)), tempPrefix(target))
}

// TempDir is the temporary folder being written (for extra files).
func (w *Writer) TempDir() string { return w.tmp }

// ShardCount is the number of shards planned.
func (w *Writer) ShardCount() int { return len(w.shards) }

// fail records the first error and removes the temporary folder.
func (w *Writer) fail(err error) error {
	if w.err == nil {
		w.err = err
	}
	w.Abort()
	return w.err
}

// WriteTensor writes the next tensor in spec order; name must match it and
// data must hold exactly its bytes (little-endian).
func (w *Writer) WriteTensor(name string, data []byte) error {
	return w.WriteTensorPieces(name, func(emit func([]byte) error) error { return emit(data) })
}

// WriteTensorPieces writes the next tensor in spec order from consecutive
// pieces of its bytes, so that it need never be whole in memory: write
// calls emit with each piece in order (whole elements, any sizes; each is
// written before emit returns), and the pieces must add up to exactly the
// tensor's bytes.
func (w *Writer) WriteTensorPieces(name string, write func(emit func([]byte) error) error) error {
	if w.err != nil {
		return w.err
	}
	if w.done {
		return errors.New("shard: WriteTensor after Commit or Abort")
	}
	si, ti := w.position()
	if si < 0 {
		return w.fail(fmt.Errorf("shard: tensor %q written but all planned tensors are already written", name))
	}
	spec := w.shards[si].specs[ti]
	if spec.Name != name {
		return w.fail(fmt.Errorf("shard: tensor %q written where %q was planned", name, spec.Name))
	}
	if si != w.curIdx {
		if err := w.openShard(si); err != nil {
			return w.fail(err)
		}
	}
	var done int64 // bytes of the tensor written
	size := spec.DType.Size()
	tooMany := func(n int64) error {
		return fmt.Errorf("shard: tensor %q: %d bytes given, shape %v x %s needs %d", name, n, spec.Shape, spec.DType, spec.numBytes())
	}
	emit := func(data []byte) error {
		n := int64(len(data))
		if done+n > spec.numBytes() {
			return tooMany(done + n)
		}
		if n%size != 0 {
			return fmt.Errorf("shard: tensor %q: a piece of %d bytes is not whole %s elements", name, n, spec.DType)
		}
		if i := NonFinite(data, spec.DType); w.opts.FiniteOnly && i >= 0 {
			return fmt.Errorf("shard: tensor %q: element %d is %s; refusing to write non-finite weights", name, done/size+int64(i), describeValue(data, spec.DType, i))
		}
		if _, err := w.cur.Write(data); err != nil {
			return fmt.Errorf("write %s: %w", w.cur.Name(), err)
		}
		done += n
		return nil
	}
	if err := write(emit); err != nil {
		return w.fail(err)
	}
	if done != spec.numBytes() {
		return w.fail(tooMany(done))
	}
	w.next++
	if ti == len(w.shards[si].specs)-1 {
		if err := w.closeShard(); err != nil {
			return w.fail(err)
		}
	}
	return nil
}

func (w *Writer) position() (int, int) {
	k := w.next
	for si, s := range w.shards {
		if k < len(s.specs) {
			return si, k
		}
		k -= len(s.specs)
	}
	return -1, -1
}

func (w *Writer) openShard(si int) error {
	if w.cur != nil {
		if err := w.closeShard(); err != nil {
			return err
		}
	}
	f, err := os.OpenFile(filepath.Join(w.tmp, w.shards[si].name), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	w.cur, w.curIdx = f, si
	hdr := EncodeHeader(w.shards[si].specs, w.metadata())
	if _, err := f.Write(hdr); err != nil {
		return fmt.Errorf("write %s: %w", f.Name(), err)
	}
	return nil
}

func (w *Writer) closeShard() error {
	f := w.cur
	w.cur = nil
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("fsync %s: %w", f.Name(), err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", f.Name(), err)
	}
	return nil
}

func (w *Writer) metadata() map[string]string {
	md := map[string]string{"format": "pt"}
	for k, v := range w.opts.Metadata {
		md[k] = v
	}
	return md
}

// EncodeHeader renders the 8-byte length plus the JSON header for specs laid
// out back to back in the given order, padded with spaces to a multiple of 8
// so that every tensor of a file starts 8-byte aligned when sizes allow.
func EncodeHeader(specs []Spec, metadata map[string]string) []byte {
	var b strings.Builder
	b.WriteByte('{')
	if len(metadata) > 0 {
		md, _ := json.Marshal(metadata) // map[string]string cannot fail; keys sorted
		b.WriteString(`"__metadata__":`)
		b.Write(md)
	}
	var off int64
	for i, s := range specs {
		if i > 0 || len(metadata) > 0 {
			b.WriteByte(',')
		}
		name, _ := json.Marshal(s.Name)
		b.Write(name)
		b.WriteString(`:{"dtype":"`)
		b.WriteString(s.DType.String())
		b.WriteString(`","shape":[`)
		for j, d := range s.Shape {
			if j > 0 {
				b.WriteByte(',')
			}
			b.WriteString(strconv.FormatInt(d, 10))
		}
		n := s.numBytes()
		fmt.Fprintf(&b, `],"data_offsets":[%d,%d]}`, off, off+n)
		off += n
	}
	b.WriteByte('}')
	for b.Len()%8 != 0 {
		b.WriteByte(' ')
	}
	out := binary.LittleEndian.AppendUint64(make([]byte, 0, 8+b.Len()), uint64(b.Len()))
	return append(out, b.String()...)
}

// AddFile writes an extra file (config, tokenizer) into the output folder.
func (w *Writer) AddFile(name string, data []byte) error {
	if w.err != nil {
		return w.err
	}
	if err := checkShardPath(name); err != nil || strings.ContainsAny(name, `/\`) {
		return w.fail(fmt.Errorf("shard: extra file name %q must be a plain file name", name))
	}
	if err := writeFileSync(filepath.Join(w.tmp, name), data); err != nil {
		return w.fail(err)
	}
	return nil
}

// CopyFile copies src verbatim into the output folder under its base name.
func (w *Writer) CopyFile(src string) error {
	data, err := fsguard.ReadFile(src)
	if err != nil {
		return w.fail(err)
	}
	return w.AddFile(filepath.Base(src), data)
}

func writeFileSync(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("fsync %s: %w", path, err)
	}
	return f.Close()
}

// Commit checks that every planned tensor was written, writes the index
// (when sharded), fsyncs and renames the temporary folder onto the target.
func (w *Writer) Commit() error {
	if w.err != nil {
		return w.err
	}
	if w.done {
		return errors.New("shard: Commit after Commit or Abort")
	}
	if si, ti := w.position(); si >= 0 {
		return w.fail(fmt.Errorf("shard: commit with tensor %q not written", w.shards[si].specs[ti].Name))
	}
	if len(w.shards) == 1 && len(w.shards[0].specs) == 0 {
		if err := w.openShard(0); err != nil { // an empty model still gets a valid file
			return w.fail(err)
		}
		if err := w.closeShard(); err != nil {
			return w.fail(err)
		}
	}
	if len(w.shards) > 1 {
		if err := w.AddFile(w.opts.Layout.Index, w.indexJSON()); err != nil {
			return err
		}
	}
	if err := syncDir(w.tmp); err != nil {
		return w.fail(err)
	}
	if !w.opts.Force {
		// The target did not exist when the run started; if it appeared
		// since (another run, the user), it is not ours to replace.
		if err := renameNoReplace(w.tmp, w.target); err != nil {
			if errors.Is(err, os.ErrExist) {
				return w.fail(fmt.Errorf("%s appeared during the run and was left as it is: %w", w.target, ErrExists))
			}
			return w.fail(fmt.Errorf("rename %s to %s: %w", w.tmp, w.target, err))
		}
		w.done = true
		return syncDir(filepath.Dir(filepath.Clean(w.target)))
	}
	var old string
	if _, err := os.Lstat(w.target); err == nil {
		old = w.tmp + ".old"
		if err := os.Rename(w.target, old); err != nil {
			return w.fail(fmt.Errorf("move existing %s aside: %w", w.target, err))
		}
	}
	if err := os.Rename(w.tmp, w.target); err != nil {
		if old != "" {
			os.Rename(old, w.target)
		}
		return w.fail(fmt.Errorf("rename %s to %s: %w", w.tmp, w.target, err))
	}
	w.done = true
	if old != "" {
		os.RemoveAll(old)
	}
	return syncDir(filepath.Dir(filepath.Clean(w.target)))
}

func (w *Writer) indexJSON() []byte {
	type index struct {
		Metadata  map[string]int64  `json:"metadata"`
		WeightMap map[string]string `json:"weight_map"`
	}
	x := index{Metadata: map[string]int64{"total_size": 0}, WeightMap: map[string]string{}}
	for _, s := range w.shards {
		for _, sp := range s.specs {
			x.Metadata["total_size"] += sp.numBytes()
			x.WeightMap[sp.Name] = s.name
		}
	}
	b, _ := json.MarshalIndent(x, "", "  ")
	return append(b, '\n')
}

// Abort removes the temporary folder; the target is left as it was.
func (w *Writer) Abort() {
	if w.done {
		return
	}
	w.done = true
	if w.cur != nil {
		w.cur.Close()
		w.cur = nil
	}
	os.RemoveAll(w.tmp)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}

// renameChecked is renameNoReplace where the kernel cannot refuse to
// replace: a check, then a rename (a target created between the two is
// still replaced; the locks held by a run make that unlikely).
func renameChecked(oldpath, newpath string) error {
	if _, err := os.Lstat(newpath); err == nil {
		return &os.LinkError{Op: "rename", Old: oldpath, New: newpath, Err: os.ErrExist}
	}
	return os.Rename(oldpath, newpath)
}
