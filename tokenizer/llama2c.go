// Package tokenizer turns text into token ids for the models elsa-stream
// reads: llama2.c tokenizer.bin files, SentencePiece tokenizer.model files and
// Hugging Face tokenizer.json files, behind one Tokenizer interface.
package tokenizer

import (
	"encoding/binary"
	"fmt"
	"math"
	"strings"

	"github.com/elsa-stream/elsa-stream/internal/fsguard"
)

// Tokenizer encodes text to token ids.
type Tokenizer interface {
	// Encode returns the ids of text, without BOS or EOS.
	Encode(text string) []int
	// Specials are the ids the model's tokenizer puts before and after a
	// text when it adds special tokens (transformers' tokenizer(text)):
	// BOS for LLaMA-2 and Gemma, nothing for Qwen.
	Specials() (prefix, suffix []int)
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
	b, err := fsguard.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseLlama2C(path, b, vocabSize)
}

// ParseLlama2C parses tokenizer.bin bytes (see LoadLlama2C). name is used in errors.
func ParseLlama2C(name string, b []byte, vocabSize int) (*BPE, error) {
	if len(b) < 4 {
		return nil, fmt.Errorf("%s: %d bytes, too short for a llama2.c tokenizer", name, len(b))
	}
	t := &BPE{MaxLen: int(int32(binary.LittleEndian.Uint32(b))), ids: make(map[string]int, max(vocabSize, 0))}
	if t.MaxLen <= 0 {
		return nil, fmt.Errorf("%s: max_token_length %d must be positive", name, t.MaxLen)
	}
	off := 4
	// vocabSize <= 0 (no model at hand): as many pieces as the file holds.
	for i := 0; i < vocabSize || vocabSize <= 0 && off < len(b); i++ {
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

// Specials: llama2.c prepends BOS.
func (t *BPE) Specials() (prefix, suffix []int) { return []int{1}, nil }

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
	return mergeSymbols(append(ids, t.preMerge(text)...), t.scoreRule)
}

// scoreRule merges two pieces when their concatenation is a piece, with the
// merged piece's score as priority.
func (t *BPE) scoreRule(l, r int) (int, float64, bool) {
	id, ok := t.ids[t.Pieces[l]+t.Pieces[r]]
	if !ok {
		return 0, 0, false
	}
	return id, float64(t.Scores[id]), true
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
