// Package tokenizer turns text into token ids for the models elsa-stream
// reads: llama2.c tokenizer.bin files, SentencePiece tokenizer.model files and
// Hugging Face tokenizer.json files, behind one Tokenizer interface.
package tokenizer

import (
	"container/heap"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"strings"
)

// Tokenizer encodes text to token ids.
type Tokenizer interface {
	// Encode returns the ids of text, without BOS or EOS.
	Encode(text string) []int
	// BOS is the beginning-of-sequence id (-1 when the vocabulary has none).
	BOS() int
	// VocabSize is the number of ids.
	VocabSize() int
}

// BPE is a llama2.c tokenizer.bin: pieces with scores, merged greedily by the
// score of the merged piece (SentencePiece BPE semantics), with byte
// fallback pieces <0x00>..<0xFF> at ids 3..258 and a dummy-prefix space.
type BPE struct {
	Pieces       []string
	Scores       []float32
	MaxLen       int
	ids          map[string]int
	byteFallback [256]int
}

// LoadLlama2C reads a llama2.c tokenizer.bin with vocabSize entries:
// int32 max_token_length, then per piece float32 score, int32 length, bytes.
func LoadLlama2C(path string, vocabSize int) (*BPE, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseLlama2C(path, b, vocabSize)
}

// ParseLlama2C parses tokenizer.bin bytes (see LoadLlama2C). name is used in errors.
func ParseLlama2C(name string, b []byte, vocabSize int) (*BPE, error) {
	if vocabSize <= 0 {
		return nil, fmt.Errorf("%s: vocabulary size %d must be positive", name, vocabSize)
	}
	if len(b) < 4 {
		return nil, fmt.Errorf("%s: %d bytes, too short for a llama2.c tokenizer", name, len(b))
	}
	t := &BPE{MaxLen: int(int32(binary.LittleEndian.Uint32(b))), ids: make(map[string]int, vocabSize)}
	if t.MaxLen <= 0 {
		return nil, fmt.Errorf("%s: max_token_length %d must be positive", name, t.MaxLen)
	}
	off := 4
	for i := 0; i < vocabSize; i++ {
		if off+8 > len(b) {
			return nil, fmt.Errorf("%s: truncated at piece %d of %d (offset %d of %d bytes)", name, i, vocabSize, off, len(b))
		}
		score := math.Float32frombits(binary.LittleEndian.Uint32(b[off:]))
		n := int(int32(binary.LittleEndian.Uint32(b[off+4:])))
		off += 8
		if n < 0 || off+n > len(b) {
			return nil, fmt.Errorf("%s: piece %d has length %d past the end of the file", name, i, n)
		}
		p := string(b[off : off+n])
		off += n
		t.Pieces = append(t.Pieces, p)
		t.Scores = append(t.Scores, score)
		if _, dup := t.ids[p]; !dup {
			t.ids[p] = i
		}
	}
	if off != len(b) {
		return nil, fmt.Errorf("%s: %d trailing bytes after %d pieces (wrong vocabulary size?)", name, len(b)-off, vocabSize)
	}
	for c := range t.byteFallback {
		t.byteFallback[c] = -1
		if id, ok := t.ids[fmt.Sprintf("<0x%02X>", c)]; ok {
			t.byteFallback[c] = id
		}
	}
	return t, nil
}

// BOS is id 1 in llama2.c vocabularies.
func (t *BPE) BOS() int { return 1 }

// VocabSize is the number of pieces.
func (t *BPE) VocabSize() int { return len(t.Pieces) }

// Encode follows llama2.c's encode(): a dummy-prefix " " token for
// non-empty text, one token per UTF-8 code point (or one byte-fallback token
// per byte when the code point is not a piece), then repeated merging of the
// adjacent pair whose concatenation is a piece with the highest score
// (leftmost on ties). A heap keeps this O(n log n) while merging in exactly
// the order of llama2.c's O(n^2) scan.
func (t *BPE) Encode(text string) []int {
	var ids []int
	if text == "" {
		return ids
	}
	if id, ok := t.ids[" "]; ok {
		ids = append(ids, id)
	}
	return t.merge(append(ids, t.preMerge(text)...))
}

// preMerge maps text to one id per UTF-8 code point, or one byte-fallback
// id per byte when the code point is not a piece.
func (t *BPE) preMerge(text string) []int {
	var ids []int
	// Code point grouping exactly as llama2.c: a non-continuation byte starts
	// a new group; a group ends when the next byte is not a continuation byte
	// or it holds 4 bytes.
	var buf []byte
	for i := 0; i < len(text); i++ {
		c := text[i]
		if c&0xC0 != 0x80 {
			buf = buf[:0]
		}
		buf = append(buf, c)
		if i+1 < len(text) && text[i+1]&0xC0 == 0x80 && len(buf) < 4 {
			continue
		}
		if id, ok := t.ids[string(buf)]; ok {
			ids = append(ids, id)
		} else {
			for _, b := range buf {
				ids = append(ids, t.byteID(b))
			}
		}
		buf = buf[:0]
	}
	return ids
}

func (t *BPE) byteID(b byte) int {
	if id := t.byteFallback[b]; id >= 0 {
		return id
	}
	return int(b) + 3 // llama2.c's convention when pieces are unnamed
}

// symbol is a node of the doubly linked list of current tokens.
type symbol struct {
	id         int
	prev, next int
	alive      bool
}

type candidate struct {
	left, right int // symbol indices
	id          int // merged piece
	score       float32
	lid, rid    int // ids at push time, to detect stale entries
}

type candHeap []candidate

func (h candHeap) Len() int { return len(h) }
func (h candHeap) Less(i, j int) bool {
	if h[i].score != h[j].score {
		return h[i].score > h[j].score
	}
	return h[i].left < h[j].left
}
func (h candHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *candHeap) Push(x any)   { *h = append(*h, x.(candidate)) }
func (h *candHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

func (t *BPE) merge(ids []int) []int {
	syms := make([]symbol, len(ids))
	for i, id := range ids {
		syms[i] = symbol{id: id, prev: i - 1, next: i + 1, alive: true}
	}
	if len(syms) > 0 {
		syms[len(syms)-1].next = -1
	}
	h := &candHeap{}
	push := func(l int) {
		r := syms[l].next
		if l < 0 || r < 0 {
			return
		}
		s := t.Pieces[syms[l].id] + t.Pieces[syms[r].id]
		if id, ok := t.ids[s]; ok {
			heap.Push(h, candidate{left: l, right: r, id: id, score: t.Scores[id], lid: syms[l].id, rid: syms[r].id})
		}
	}
	for i := range syms {
		push(i)
	}
	// Ordering by (score desc, left index asc) reproduces llama2.c's scan:
	// symbol indices keep the left-to-right order of the text.
	for h.Len() > 0 {
		c := heap.Pop(h).(candidate)
		l, r := &syms[c.left], &syms[c.right]
		if !l.alive || !r.alive || l.next != c.right || l.id != c.lid || r.id != c.rid {
			continue
		}
		l.id = c.id
		r.alive = false
		l.next = r.next
		if r.next >= 0 {
			syms[r.next].prev = c.left
		}
		if l.prev >= 0 {
			push(l.prev)
		}
		push(c.left)
	}
	out := ids[:0]
	for i := 0; i >= 0 && i < len(syms); i = syms[i].next {
		out = append(out, syms[i].id)
	}
	return out
}

// Decode renders ids as text as llama2.c does: byte pieces <0xHH> become the
// byte, and the space after BOS is dropped.
func (t *BPE) Decode(ids []int) string {
	var sb strings.Builder
	prev := -1
	for _, id := range ids {
		if id < 0 || id >= len(t.Pieces) {
			continue
		}
		p := t.Pieces[id]
		if prev == t.BOS() && strings.HasPrefix(p, " ") {
			p = p[1:]
		}
		var b byte
		if n, _ := fmt.Sscanf(p, "<0x%02X>", &b); n == 1 && len(p) == 6 {
			sb.WriteByte(b)
		} else {
			sb.WriteString(p)
		}
		prev = id
	}
	return sb.String()
}
