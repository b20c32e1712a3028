package lowmem

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/klauspost/compress/zstd"

	"github.com/elsa-stream/elsa-stream/internal/budget"
)

// The state store keeps each block's optimizer state in one file per step
// generation: the state after step s lives in gen-(s mod 2)/, so writing
// step s+1 never touches the files of step s. A journal names the last
// step whose every block was written and fsynced; a run killed at any
// moment resumes from that step, and files of an unfinished step are
// simply overwritten.
//
// File layout: magic "ELSASTAT", version uint32, step int64, chunk count
// uint32, then per chunk: header length uint32, JSON header {name, codec, n,
// zstd, raw, stored}, payload, CRC-32C (Castagnoli) of header and payload.
// Every chunk is checked on read; a flipped byte anywhere is an error
// naming the file and the chunk.

const (
	fileMagic   = "ELSASTAT"
	fileVersion = 1
	journalName = "journal.json"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrCorrupt is wrapped by every checksum or format failure.
var ErrCorrupt = errors.New("corrupt state")

// Chunk is one named state tensor (e.g. "q_proj.m") encoded by Codec.
type Chunk struct {
	Name  string
	Codec string
	N     int // values encoded
	Data  []byte
	// Compress asks the store to try zstd on Data; it keeps the compressed
	// form only when it saves at least 5% (bitmaps and sparse values do,
	// quantized dense state does not: docs/design.md, Files).
	Compress bool
}

type chunkHeader struct {
	Name   string `json:"name"`
	Codec  string `json:"codec"`
	N      int    `json:"n"`
	Zstd   bool   `json:"zstd"`
	Raw    int    `json:"raw"`
	Stored int    `json:"stored"`
}

// Journal is the store's commit record.
type Journal struct {
	// Step is the last step whose state is complete on disk (-1: none).
	Step int `json:"step"`
	// Run identifies the configuration that wrote the store, so a resume
	// with different settings is refused.
	Run string `json:"run"`
}

// Store is a state directory.
type Store struct {
	dir     string
	ledger  *budget.Ledger
	journal Journal
	enc     *zstd.Encoder
	dec     *zstd.Decoder
	// create is os.Create, replaceable in tests to simulate a full disk.
	create func(string) (writeSyncer, error)
	// written holds the blocks written for the step being built.
	written map[string]bool
	// inflight is the block write still running (nil: none): WriteBlock
	// returns once the file's bytes are built, and the write, fsync and
	// rename run beside the caller's next read and update, one at a time.
	inflight *blockWrite
}

// blockWrite is one WriteBlock's file write running in the background.
type blockWrite struct {
	block, path string
	done        chan struct{}
	err         error
}

type writeSyncer interface {
	io.Writer
	Sync() error
	Close() error
	Name() string
}

// Open opens (or creates) the store in dir for the run identified by run.
// An existing store written by another run is refused with what to do.
func Open(dir, run string, ledger *budget.Ledger) (*Store, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("state store: %w", err)
	}
	s := &Store{dir: dir, ledger: ledger, journal: Journal{Step: -1, Run: run},
		create: func(p string) (writeSyncer, error) { return os.Create(p) }}
	var err error
	if s.enc, err = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1)); err != nil {
		return nil, err
	}
	if s.dec, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1)); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(dir, journalName))
	switch {
	case errors.Is(err, os.ErrNotExist):
		return s, nil
	case err != nil:
		return nil, fmt.Errorf("state store: %w", err)
	}
	var j struct {
		Journal
		CRC uint32 `json:"crc"`
	}
	if err := json.Unmarshal(b, &j); err != nil || j.CRC != journalCRC(j.Journal) {
		return nil, fmt.Errorf("%w: %s is damaged; the state cannot be trusted: delete %s to start over", ErrCorrupt, filepath.Join(dir, journalName), dir)
	}
	if j.Run != run {
		return nil, &RunMismatchError{Dir: dir, Stored: j.Run, Current: run}
	}
	s.journal = j.Journal
	return s, nil
}

// RunMismatchError refuses a store written by a run with another identity:
// the caller, which knows what the identity encodes, can name what changed.
type RunMismatchError struct{ Dir, Stored, Current string }

func (e *RunMismatchError) Error() string {
	return fmt.Sprintf("state store %s was written by another run (%q, this run is %q): use a new work folder, or delete it to start over", e.Dir, e.Stored, e.Current)
}

func journalCRC(j Journal) uint32 {
	return crc32.Checksum([]byte(fmt.Sprintf("%d\x00%s", j.Step, j.Run)), castagnoli)
}

// LastStep is the last committed step (-1 when none).
func (s *Store) LastStep() int { return s.journal.Step }

func (s *Store) path(step int, block string) string {
	return filepath.Join(s.dir, fmt.Sprintf("gen-%d", step%2), block+".state")
}

// WriteBlock stores block's state as of step (a temp file, fsync, rename).
// On any error nothing is left behind and earlier steps are intact.
//
// The file is written in the background: WriteBlock returns once its bytes
// are built (chunks may then be reused), after waiting for the previous
// write. A write's error is returned by the next WriteBlock, by a ReadBlock
// of the same block, or by Flush and Commit, which wait for it.
func (s *Store) WriteBlock(step int, block string, chunks []Chunk) error {
	if step < 0 || step > s.journal.Step+1 {
		return fmt.Errorf("state store: writing step %d after committed step %d", step, s.journal.Step)
	}
	if strings.ContainsAny(block, `/\`) || block == "" {
		return fmt.Errorf("state store: bad block name %q", block)
	}
	final := s.path(step, block)
	if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
		return fmt.Errorf("state store: %w", err)
	}
	// The file image: at most the raw chunks plus their headers (256 bytes
	// each is ample: names, codec, sizes), held until written.
	image := int64(256 * (len(chunks) + 1))
	for _, c := range chunks {
		image += int64(len(c.Data))
	}
	release := func() {}
	if s.ledger != nil {
		r, err := s.ledger.Reserve("state I/O buffer (write)", image)
		if err != nil {
			return err
		}
		release = r.Release
	}
	var buf bytes.Buffer
	// One allocation for the image (growing it by doubling cleared and
	// copied each block's bytes several times: 40% of a write's CPU).
	buf.Grow(int(image))
	buf.WriteString(fileMagic)
	binary.Write(&buf, binary.LittleEndian, uint32(fileVersion))
	binary.Write(&buf, binary.LittleEndian, int64(step))
	binary.Write(&buf, binary.LittleEndian, uint32(len(chunks)))
	for _, c := range chunks {
		payload := c.Data
		h := chunkHeader{Name: c.Name, Codec: c.Codec, N: c.N, Raw: len(c.Data)}
		if c.Compress {
			if z := s.enc.EncodeAll(c.Data, nil); len(z) < len(c.Data)*95/100 {
				payload, h.Zstd = z, true
			}
		}
		h.Stored = len(payload)
		hb, _ := json.Marshal(h)
		start := buf.Len()
		binary.Write(&buf, binary.LittleEndian, uint32(len(hb)))
		buf.Write(hb)
		buf.Write(payload)
		binary.Write(&buf, binary.LittleEndian, crc32.Checksum(buf.Bytes()[start:], castagnoli))
	}
	if err := s.Flush(); err != nil {
		release()
		return err
	}
	w := &blockWrite{block: block, path: final, done: make(chan struct{})}
	s.inflight = w
	committed, create := s.journal.Step, s.create
	go func() {
		defer close(w.done)
		defer release()
		if err := writeFile(create, final, buf.Bytes()); err != nil {
			w.err = fmt.Errorf("state store: writing %s: %w (step %d not committed; step %d is intact)", final, err, step, committed)
		}
	}()
	return nil
}

// writeFile writes b to path through a temp file made by create: write,
// fsync, rename. On error the temp file is removed and path is untouched.
func writeFile(create func(string) (writeSyncer, error), path string, b []byte) error {
	tmp := path + ".tmp"
	f, err := create(tmp)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// Flush waits for the block write in flight, if any, and returns its error.
func (s *Store) Flush() error {
	w := s.inflight
	if w == nil {
		return nil
	}
	<-w.done
	s.inflight = nil
	if w.err != nil {
		return w.err
	}
	if s.written == nil {
		s.written = map[string]bool{}
	}
	s.written[w.block] = true
	return nil
}

// ReadBlock returns block's chunks as of step, decompressed, every
// checksum verified. The step must be committed.
func (s *Store) ReadBlock(step int, block string) (map[string]Chunk, error) {
	if step > s.journal.Step && step != s.journal.Step+1 {
		return nil, fmt.Errorf("state store: step %d is not committed (last %d)", step, s.journal.Step)
	}
	p := s.path(step, block)
	if s.inflight != nil && s.inflight.path == p {
		if err := s.Flush(); err != nil {
			return nil, err
		}
	}
	if s.ledger != nil {
		if info, err := os.Stat(p); err == nil {
			r, err := s.ledger.Reserve("state I/O buffer", 2*info.Size()) // file + decompressed chunks
			if err != nil {
				return nil, err
			}
			defer r.Release()
		}
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("state store: %w", err)
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s; delete the work dir to start over, or restore it from a backup", ErrCorrupt, p, fmt.Sprintf(format, args...))
	}
	if len(b) < 24 || string(b[:8]) != fileMagic {
		return nil, bad("not a state file (bad magic)")
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != fileVersion {
		return nil, bad("format version %d, want %d", v, fileVersion)
	}
	if got := int64(binary.LittleEndian.Uint64(b[12:])); got != int64(step) {
		return nil, bad("holds step %d, want %d", got, step)
	}
	count := int(binary.LittleEndian.Uint32(b[20:]))
	out := map[string]Chunk{}
	off := 24
	for i := 0; i < count; i++ {
		if off+4 > len(b) {
			return nil, bad("truncated at chunk %d", i)
		}
		hl := int(binary.LittleEndian.Uint32(b[off:]))
		if hl <= 0 || off+4+hl > len(b) {
			return nil, bad("chunk %d: header length %d out of range", i, hl)
		}
		var h chunkHeader
		if err := json.Unmarshal(b[off+4:off+4+hl], &h); err != nil {
			return nil, bad("chunk %d: header: %v", i, err)
		}
		end := off + 4 + hl + h.Stored
		if h.Stored < 0 || end+4 > len(b) {
			return nil, bad("chunk %d (%s): payload runs past the end", i, h.Name)
		}
		if crc := binary.LittleEndian.Uint32(b[end:]); crc != crc32.Checksum(b[off:end], castagnoli) {
			return nil, bad("chunk %d (%s): checksum mismatch", i, h.Name)
		}
		data := b[off+4+hl : end]
		if h.Zstd {
			if data, err = s.dec.DecodeAll(data, make([]byte, 0, h.Raw)); err != nil || len(data) != h.Raw {
				return nil, bad("chunk %d (%s): zstd: %v", i, h.Name, err)
			}
		}
		out[h.Name] = Chunk{Name: h.Name, Codec: h.Codec, N: h.N, Data: data}
		off = end + 4
	}
	if off != len(b) {
		return nil, bad("%d trailing bytes", len(b)-off)
	}
	return out, nil
}

// Commit records that every block of step is on disk (journal written to a
// temp file, fsynced, renamed; the directory fsynced).
func (s *Store) Commit(step int) error {
	if step != s.journal.Step+1 {
		return fmt.Errorf("state store: committing step %d after step %d", step, s.journal.Step)
	}
	if err := s.Flush(); err != nil {
		return err
	}
	// Every block of the previous step must have been rewritten.
	prev, err := s.Blocks()
	if err != nil {
		return fmt.Errorf("state store: %w", err)
	}
	for _, b := range prev {
		if !s.written[b] {
			return fmt.Errorf("state store: committing step %d without block %s", step, b)
		}
	}
	for _, d := range []string{filepath.Join(s.dir, fmt.Sprintf("gen-%d", step%2))} {
		if err := syncDir(d); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	j := Journal{Step: step, Run: s.journal.Run}
	b, _ := json.Marshal(struct {
		Journal
		CRC uint32 `json:"crc"`
	}{j, journalCRC(j)})
	if err := writeFile(s.create, filepath.Join(s.dir, journalName), b); err != nil {
		return fmt.Errorf("state store: committing step %d: %w (step %d is still the last complete one)", step, err, s.journal.Step)
	}
	s.journal = j
	s.written = nil
	return syncDir(s.dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// BytesOnDisk sums the state files of the last committed step.
func (s *Store) BytesOnDisk() (int64, error) {
	if s.journal.Step < 0 {
		return 0, nil
	}
	entries, err := os.ReadDir(filepath.Join(s.dir, fmt.Sprintf("gen-%d", s.journal.Step%2)))
	if err != nil {
		return 0, err
	}
	var n int64
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".state") {
			info, err := e.Info()
			if err != nil {
				return 0, err
			}
			n += info.Size()
		}
	}
	return n, nil
}

// Blocks lists the block names of the last committed step.
func (s *Store) Blocks() ([]string, error) {
	if s.journal.Step < 0 {
		return nil, nil
	}
	entries, err := os.ReadDir(filepath.Join(s.dir, fmt.Sprintf("gen-%d", s.journal.Step%2)))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if n, ok := strings.CutSuffix(e.Name(), ".state"); ok {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out, nil
}
