package dataset

import (
	"encoding/binary"
	"fmt"
	"os"

	mmap "github.com/edsrzf/mmap-go"

	"github.com/elsa-stream/elsa-stream/internal/fsguard"
	"github.com/elsa-stream/elsa-stream/shard"
)

// IDs is a token stream held compactly: little-endian ids of 2 bytes each
// when the vocabulary fits in 16 bits, else 4 (8 as []int would take), or
// a token file of the same layout mapped read-only and read in place.
// Windows are read out of it as needed (Slice); a mapped stream drops the
// pages it has read, so a token file of any size costs the budget only the
// pages of the windows at hand.
type IDs struct {
	width int
	b     []byte
	m     mmap.MMap // b's mapping (nil: b is in memory)
	// A Sub of another stream is its ids [off, off+n) of the same b (so
	// that page arithmetic stays that of the mapping); Close leaves the
	// mapping to the stream it came from.
	off, n int
	view   bool
}

// widthFor is the id width for a vocabulary of vocab ids (0: unknown).
func widthFor(vocab int) int {
	if vocab > 0 && vocab <= 1<<16 {
		return 2
	}
	return 4
}

// newIDs returns an empty stream for ids below vocab with room for n.
func newIDs(vocab, n int) *IDs {
	w := widthFor(vocab)
	return &IDs{width: w, b: make([]byte, 0, n*w)}
}

// Compact holds ids compactly: 2 bytes each when all are below 65536.
func Compact(ids []int) *IDs {
	top := 0
	for _, id := range ids {
		top = max(top, id+1)
	}
	s := newIDs(top, len(ids))
	s.append(ids...)
	return s
}

// append adds ids at the end of an in-memory stream, widening it to 4
// bytes per id if one does not fit in 2.
func (s *IDs) append(ids ...int) {
	for _, id := range ids {
		if s.width == 2 && id >= 1<<16 {
			wide := &IDs{width: 4, b: make([]byte, 0, 2*cap(s.b))}
			for i := range s.Len() {
				wide.append(s.At(i))
			}
			*s = *wide
		}
		if s.width == 2 {
			s.b = binary.LittleEndian.AppendUint16(s.b, uint16(id))
		} else {
			s.b = binary.LittleEndian.AppendUint32(s.b, uint32(id))
		}
	}
}

// mapTokens maps a token file of width-byte ids (the tokens format) and
// returns it as a stream, or nil when it cannot be mapped (standard input,
// a compressed file, an empty one): the caller reads it instead.
func mapTokens(path string, width int) (*IDs, error) {
	if fsguard.IsStdin(path) || compressed(path) {
		return nil, nil
	}
	f, err := fsguard.OpenRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Size() == 0 {
		return nil, nil
	}
	if fi.Size()%int64(width) != 0 {
		return nil, fmt.Errorf("%s: %d bytes is not a multiple of the %d-byte token width", path, fi.Size(), width)
	}
	m, err := mmap.Map(f, mmap.RDONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("%s: mmap: %w", path, err)
	}
	return &IDs{width: width, b: m, m: m}, nil
}

// checkVocab refuses an id outside the vocabulary (vocab ids; 0: no
// check), naming its position; a mapped stream is read a block at a time,
// dropping each block's pages.
func (s *IDs) checkVocab(name string, vocab int) error {
	if vocab <= 0 {
		return nil
	}
	const block = 1 << 20
	for lo := 0; lo < s.Len(); lo += block {
		hi := min(s.Len(), lo+block)
		for i := lo; i < hi; i++ {
			if id := s.At(i); id >= vocab {
				return fmt.Errorf("%s: token %d at position %d is outside the model's vocabulary (%d ids)", name, id, i, vocab)
			}
		}
		if s.m != nil {
			shard.AdviseMapped(s.b, int64(lo*s.width), int64(hi*s.width), shard.DontNeed)
		}
	}
	return nil
}

// Window returns window w's inputs and targets (w.Len each).
func (s *IDs) Window(w Window) (input, target []int) {
	ids := s.Slice(make([]int, 0, w.Len+1), w.Start, w.Start+w.Len+1)
	return ids[:w.Len], ids[1:]
}

// Len is the number of ids.
func (s *IDs) Len() int {
	if s.view {
		return s.n
	}
	return len(s.b) / s.width
}

// At is id i.
func (s *IDs) At(i int) int {
	i += s.off
	if s.width == 2 {
		return int(binary.LittleEndian.Uint16(s.b[2*i:]))
	}
	return int(binary.LittleEndian.Uint32(s.b[4*i:]))
}

// Slice appends ids [lo, hi) to dst; a mapped stream then drops the pages
// it read, from the one holding lo up to the one holding hi (exclusive):
// a window is smaller than a page, so dropping only the pages wholly
// inside it would keep a sequential pass's every page (a 2 GB file would
// become 2 GB of RSS). A page read again is faulted in again.
func (s *IDs) Slice(dst []int, lo, hi int) []int {
	for i := lo; i < hi; i++ {
		dst = append(dst, s.At(i))
	}
	if s.m != nil { // a hint: failure only costs memory
		page := int64(os.Getpagesize())
		lo, hi := s.off+lo, s.off+hi
		shard.AdviseMapped(s.b, int64(lo*s.width)/page*page, int64(hi*s.width), shard.DontNeed)
	}
	return dst
}

// Sub is ids [lo, hi) of s, sharing its memory (close s, not the view).
func (s *IDs) Sub(lo, hi int) *IDs {
	if lo < 0 || hi > s.Len() || lo > hi {
		panic(fmt.Sprintf("dataset: Sub [%d, %d) of %d ids", lo, hi, s.Len()))
	}
	return &IDs{width: s.width, b: s.b, m: s.m, off: s.off + lo, n: hi - lo, view: true}
}

// Ints returns every id as an []int (for small streams and tests).
func (s *IDs) Ints() []int { return s.Slice(make([]int, 0, s.Len()), 0, s.Len()) }

// Mapped reports whether the stream is a mapped file.
func (s *IDs) Mapped() bool { return s.m != nil }

// Close unmaps a mapped stream (an in-memory one needs nothing).
func (s *IDs) Close() error {
	if s.m == nil || s.view {
		return nil
	}
	m := s.m
	s.m, s.b = nil, nil
	return m.Unmap()
}
