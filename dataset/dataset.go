// Package dataset turns evaluation and calibration files into token streams
// and windows: the TinyStories "stories" protocol, the WikiText-2/C4 "text"
// protocol, C4-style JSON lines and raw token-id files (.gz and .zst files
// are decompressed on the fly).
package dataset

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strings"

	"github.com/klauspost/compress/zstd"

	"github.com/elsa-stream/elsa-stream/internal/budget"
	"github.com/elsa-stream/elsa-stream/internal/fsguard"
	"github.com/elsa-stream/elsa-stream/tokenizer"
)

// Format names how a data file is read.
type Format string

// The formats eval and prune accept.
const (
	// Stories: documents separated by lines "<|endoftext|>"; each document is
	// stripped and encoded as the model's BOS (nothing when it has none) +
	// encode(doc); documents are concatenated.
	Stories Format = "stories"
	// Text: the whole file is encoded once as tokenizer(text) does (the
	// tokenizer's special tokens around it: BOS first for LLaMA-2), as the
	// WikiText-2 / C4 perplexity protocol does.
	Text Format = "text"
	// Tokens: little-endian token ids, 2 or 4 bytes each.
	Tokens Format = "tokens"
	// JSONL: one document per line, a JSON object with a "text" field (the
	// layout of C4's files) or a bare JSON string; each document is encoded
	// as tokenizer(text) does and documents are concatenated.
	JSONL Format = "jsonl"
)

// ParseFormat validates a --format value.
func ParseFormat(s string) (Format, error) {
	switch f := Format(s); f {
	case Stories, Text, Tokens, JSONL:
		return f, nil
	}
	return "", fmt.Errorf("unknown data format %q (want stories, text, jsonl or tokens)", s)
}

// Special is tokenizer(text) as transformers runs it (add_special_tokens):
// the tokenizer's specials (BOS for LLaMA-2, nothing for Qwen) around
// Encode(text).
func Special(tok tokenizer.Tokenizer, text string) []int {
	prefix, suffix := tok.Specials()
	ids := append(append([]int(nil), prefix...), tok.Encode(text)...)
	return append(ids, suffix...)
}

// story is one document of the stories protocol: the model's BOS (nothing
// when it has none) + encode(doc).
func story(tok tokenizer.Tokenizer, doc string) []int {
	var ids []int
	if bos := tok.BOS(); bos >= 0 {
		ids = append(ids, bos)
	}
	return append(ids, tok.Encode(doc)...)
}

// EndOfText separates documents in the stories format.
const EndOfText = "<|endoftext|>"

// SplitStories splits text on lines equal to "<|endoftext|>", strips each
// document and drops empty ones.
func SplitStories(text string) []string {
	var docs []string
	var cur strings.Builder
	flush := func() {
		if d := strings.TrimSpace(cur.String()); d != "" {
			docs = append(docs, d)
		}
		cur.Reset()
	}
	for _, line := range strings.SplitAfter(text, "\n") {
		if strings.TrimRight(line, "\r\n") == EndOfText {
			flush()
			continue
		}
		cur.WriteString(line)
	}
	flush()
	return docs
}

// Options select how much of a file is read.
type Options struct {
	Format Format
	// MaxStories limits the stories and jsonl formats to their first N
	// documents (0: all).
	MaxStories int
	// TokenBytes is 2 or 4 for the tokens format (0: 2).
	TokenBytes int
	// Vocab, when positive, is the model's vocabulary: every id of the
	// stream must be below it (the embedding has no row for another).
	Vocab int
}

// ReadFile reads a data file: a regular file, or standard input when path
// is "-" or /dev/stdin. A FIFO or device named otherwise is refused rather
// than read forever.
func ReadFile(path string) ([]byte, error) {
	r, err := Open(path)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return b, nil
}

// Open opens a data file for reading as ReadFile reads it, decompressing
// a .gz (gzip) or .zst (zstd) file as it is read.
func Open(path string) (io.ReadCloser, error) {
	var f io.ReadCloser = io.NopCloser(os.Stdin)
	if !fsguard.IsStdin(path) {
		rf, err := fsguard.OpenRegular(path)
		if err != nil {
			return nil, err
		}
		f = rf
	}
	switch {
	case strings.HasSuffix(path, ".gz"):
		z, err := gzip.NewReader(f)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return readCloser{z, f}, nil
	case strings.HasSuffix(path, ".zst"):
		z, err := zstd.NewReader(f, zstd.WithDecoderConcurrency(1))
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return readCloser{z.IOReadCloser(), f}, nil
	}
	return f, nil
}

// readCloser closes a decompressor and the file under it.
type readCloser struct {
	io.ReadCloser
	file io.Closer
}

func (r readCloser) Close() error {
	r.ReadCloser.Close()
	return r.file.Close()
}

// Documents calls fn with each document of JSON-lines data r (name for
// errors): the "text" field of an object per line, or a bare string;
// blank lines are skipped.
func Documents(name string, r io.Reader, fn func(doc string) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 1<<20), 1<<30)
	for line := 1; sc.Scan(); line++ {
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		var doc string
		if b[0] == '"' {
			if err := json.Unmarshal(b, &doc); err != nil {
				return fmt.Errorf("%s:%d: %v", name, line, err)
			}
		} else {
			var obj struct {
				Text *string `json:"text"`
			}
			if err := json.Unmarshal(b, &obj); err != nil || obj.Text == nil {
				return fmt.Errorf("%s:%d: want a JSON object with a \"text\" field, or a JSON string", name, line)
			}
			doc = *obj.Text
		}
		if err := fn(doc); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// Load reads path (see ReadFile) into one token stream.
func Load(path string, tok tokenizer.Tokenizer, opt Options) ([]int, error) {
	if opt.Format == JSONL { // streamed: the documents, not the file, in memory
		r, err := Open(path)
		if err != nil {
			return nil, err
		}
		defer r.Close()
		ids, err := jsonlIDs(path, r, tok, opt.MaxStories)
		if err != nil {
			return nil, err
		}
		return checkVocab(path, ids, opt.Vocab)
	}
	b, err := ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, b, tok, opt)
}

// Parse turns file bytes into one token stream (name is used in errors).
// With opt.Vocab set, an id outside the vocabulary is an error naming its
// position, whichever format produced it.
func Parse(name string, b []byte, tok tokenizer.Tokenizer, opt Options) ([]int, error) {
	ids, err := parse(name, b, tok, opt)
	if err != nil {
		return nil, err
	}
	return checkVocab(name, ids, opt.Vocab)
}

func checkVocab(name string, ids []int, vocab int) ([]int, error) {
	if vocab > 0 {
		for i, id := range ids {
			if id < 0 || id >= vocab {
				return nil, fmt.Errorf("%s: token %d at position %d is outside the model's vocabulary (%d ids)", name, id, i, vocab)
			}
		}
	}
	return ids, nil
}

// jsonlIDs encodes JSON-lines documents as tokenizer(doc) each (the first
// limit, 0: all).
func jsonlIDs(name string, r io.Reader, tok tokenizer.Tokenizer, limit int) ([]int, error) {
	var ids []int
	n := 0
	errStop := fmt.Errorf("enough")
	err := Documents(name, r, func(doc string) error {
		if limit > 0 && n == limit {
			return errStop
		}
		n++
		ids = append(ids, Special(tok, doc)...)
		return nil
	})
	if err != nil && err != errStop {
		return nil, err
	}
	if n == 0 {
		return nil, fmt.Errorf("%s: no documents found", name)
	}
	return ids, nil
}

func parse(name string, b []byte, tok tokenizer.Tokenizer, opt Options) ([]int, error) {
	switch opt.Format {
	case Stories:
		docs := SplitStories(string(b))
		if opt.MaxStories > 0 && len(docs) > opt.MaxStories {
			docs = docs[:opt.MaxStories]
		}
		if len(docs) == 0 {
			return nil, fmt.Errorf("%s: no stories found", name)
		}
		var ids []int
		for _, d := range docs {
			ids = append(ids, story(tok, d)...)
		}
		return ids, nil
	case Text:
		return Special(tok, string(b)), nil
	case Tokens:
		return parseTokens(name, b, opt.TokenBytes, tok)
	case JSONL:
		return jsonlIDs(name, bytes.NewReader(b), tok, opt.MaxStories)
	}
	return nil, fmt.Errorf("unknown data format %q", opt.Format)
}

func parseTokens(name string, b []byte, width int, tok tokenizer.Tokenizer) ([]int, error) {
	if width == 0 {
		width = 2
	}
	if width != 2 && width != 4 {
		return nil, fmt.Errorf("token width %d bytes: want 2 or 4", width)
	}
	if len(b)%width != 0 {
		return nil, fmt.Errorf("%s: %d bytes is not a multiple of the %d-byte token width", name, len(b), width)
	}
	ids := make([]int, len(b)/width)
	for i := range ids {
		if width == 2 {
			ids[i] = int(binary.LittleEndian.Uint16(b[2*i:]))
		} else {
			ids[i] = int(binary.LittleEndian.Uint32(b[4*i:]))
		}
		if tok != nil && ids[i] >= tok.VocabSize() {
			return nil, fmt.Errorf("%s: token %d at position %d is outside the vocabulary (%d ids)", name, ids[i], i, tok.VocabSize())
		}
	}
	return ids, nil
}

// Window is one evaluation window: Input predicts Target position by
// position (Target[i] is the token after Input[i]).
type Window struct {
	Input, Target []int
}

// EvalWindows cuts a stream into non-overlapping windows of at most seqlen
// inputs: window k feeds ids[k*seqlen : k*seqlen+seqlen] and predicts the
// same positions shifted by one, so every token after the first is
// predicted exactly once (len(ids)-1 predictions in all; the last window
// may be shorter).
func EvalWindows(ids []int, seqlen int) []Window {
	var ws []Window
	for s := 0; s+1 < len(ids); s += seqlen {
		e := min(s+seqlen, len(ids)-1)
		ws = append(ws, Window{Input: ids[s:e], Target: ids[s+1 : e+1]})
	}
	return ws
}

// CalibWindows draws n windows of seqlen+1 tokens from a token stream with
// a seeded generator, as the SparseGPT and Wanda reference code does (a
// uniformly random start per window, windows may overlap). It returns the
// inputs and the next-token targets, each n·seqlen long.
func CalibWindows(ids []int, seqlen, n int, seed uint64) (inputs, targets []int, err error) {
	if len(ids) < seqlen+1 {
		return nil, nil, fmt.Errorf("calibration data has %d tokens, fewer than one window of %d", len(ids), seqlen+1)
	}
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	for k := 0; k < n; k++ {
		s := r.IntN(len(ids) - seqlen)
		inputs = append(inputs, ids[s:s+seqlen]...)
		targets = append(targets, ids[s+1:s+seqlen+1]...)
	}
	return inputs, targets, nil
}

// HeldBytes bounds what loading a data file of size bytes holds in
// memory: the bytes themselves and 8 bytes per token id, with at most one
// token per byte for text (byte-level and byte-fallback tokenizers emit at
// most one per byte, plus BOS per document) and exactly size/width for
// token files.
func HeldBytes(size int64, f Format, width int) int64 {
	if f == Tokens {
		if width == 0 {
			width = 2
		}
		return size + 8*(size/int64(width))
	}
	return size + 8*(size+1)
}

// Reserve holds HeldBytes of the data file path (standard input: the
// largest input the budget allows, which ReadFile then enforces) in the
// ledger, or refuses naming the file's size and the budget. The caller
// releases the reservation when it no longer holds the stream.
func Reserve(l *budget.Ledger, path string, f Format, width int) (*budget.Reservation, error) {
	if l == nil || fsguard.IsStdin(path) {
		return nil, nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	size := fi.Size()
	if strings.HasSuffix(path, ".gz") || strings.HasSuffix(path, ".zst") {
		size *= 4 // compressed text: count its typical expansion
	}
	r, err := l.Reserve("data "+path, HeldBytes(size, f, width))
	if err != nil {
		return nil, fmt.Errorf("%s: %s of data needs about %s in memory as token ids: %w", path, budget.Format(fi.Size()), budget.Format(HeldBytes(size, f, width)), err)
	}
	return r, nil
}
