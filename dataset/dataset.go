// Package dataset turns evaluation and calibration files into token streams
// and windows: the TinyStories "stories" protocol, the WikiText-2/C4 "text"
// protocol, C4-style JSON lines and raw token-id files (.gz and .zst files
// are decompressed on the fly).
package dataset

import (
	"bufio"
	"bytes"
	"compress/gzip"
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

// Load reads path (see ReadFile) into one token stream. A plain token
// file (the tokens format) is mapped and read in place.
func Load(path string, tok tokenizer.Tokenizer, opt Options) (*IDs, error) {
	switch opt.Format {
	case JSONL: // streamed: the documents, not the file, in memory
		r, err := Open(path)
		if err != nil {
			return nil, err
		}
		defer r.Close()
		ids, err := jsonlIDs(path, r, tok, opt)
		if err != nil {
			return nil, err
		}
		return ids, ids.checkVocab(path, opt.Vocab)
	case Tokens:
		width, err := tokenWidth(opt.TokenBytes)
		if err != nil {
			return nil, err
		}
		ids, err := mapTokens(path, width)
		if err != nil || ids == nil {
			break // not mappable: read below
		}
		if err := ids.checkVocab(path, vocabOf(tok, opt)); err != nil {
			ids.Close()
			return nil, err
		}
		return ids, nil
	}
	b, err := ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, b, tok, opt)
}

// compressed reports whether path is read through a decompressor.
func compressed(path string) bool {
	return strings.HasSuffix(path, ".gz") || strings.HasSuffix(path, ".zst")
}

// vocabOf is the vocabulary ids must be below: the model's, else the
// tokenizer's (0: unknown).
func vocabOf(tok tokenizer.Tokenizer, opt Options) int {
	if opt.Vocab > 0 {
		return opt.Vocab
	}
	if tok != nil {
		return tok.VocabSize()
	}
	return 0
}

// Parse turns file bytes into one token stream (name is used in errors).
// With opt.Vocab set, an id outside the vocabulary is an error naming its
// position, whichever format produced it. A tokens-format stream is b
// itself (not copied).
func Parse(name string, b []byte, tok tokenizer.Tokenizer, opt Options) (*IDs, error) {
	ids, err := parse(name, b, tok, opt)
	if err != nil {
		return nil, err
	}
	vocab := opt.Vocab // the tokenizer's own ids are below its vocabulary; a token file's may not be
	if opt.Format == Tokens {
		vocab = vocabOf(tok, opt)
	}
	return ids, ids.checkVocab(name, vocab)
}

// jsonlIDs encodes JSON-lines documents as tokenizer(doc) each (the first
// opt.MaxStories, 0: all).
func jsonlIDs(name string, r io.Reader, tok tokenizer.Tokenizer, opt Options) (*IDs, error) {
	ids := newIDs(vocabOf(tok, opt), 0)
	n := 0
	errStop := fmt.Errorf("enough")
	err := Documents(name, r, func(doc string) error {
		if opt.MaxStories > 0 && n == opt.MaxStories {
			return errStop
		}
		n++
		ids.append(Special(tok, doc)...)
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

func parse(name string, b []byte, tok tokenizer.Tokenizer, opt Options) (*IDs, error) {
	switch opt.Format {
	case Stories:
		docs := SplitStories(string(b))
		if opt.MaxStories > 0 && len(docs) > opt.MaxStories {
			docs = docs[:opt.MaxStories]
		}
		if len(docs) == 0 {
			return nil, fmt.Errorf("%s: no stories found", name)
		}
		ids := newIDs(vocabOf(tok, opt), 0)
		for _, d := range docs {
			ids.append(story(tok, d)...)
		}
		return ids, nil
	case Text:
		ids := newIDs(vocabOf(tok, opt), 0)
		ids.append(Special(tok, string(b))...)
		return ids, nil
	case Tokens:
		width, err := tokenWidth(opt.TokenBytes)
		if err != nil {
			return nil, err
		}
		if len(b)%width != 0 {
			return nil, fmt.Errorf("%s: %d bytes is not a multiple of the %d-byte token width", name, len(b), width)
		}
		return &IDs{width: width, b: b}, nil
	case JSONL:
		return jsonlIDs(name, bytes.NewReader(b), tok, opt)
	}
	return nil, fmt.Errorf("unknown data format %q", opt.Format)
}

// tokenWidth validates --token-bytes (0: 2).
func tokenWidth(width int) (int, error) {
	if width == 0 {
		width = 2
	}
	if width != 2 && width != 4 {
		return 0, fmt.Errorf("token width %d bytes: want 2 or 4", width)
	}
	return width, nil
}

// Window is one evaluation window of a stream: inputs [Start, Start+Len)
// predict the tokens one position later (IDs.Window).
type Window struct {
	Start, Len int
}

// EvalWindows cuts a stream into non-overlapping windows of at most seqlen
// inputs: window k feeds ids[k*seqlen : k*seqlen+seqlen] and predicts the
// same positions shifted by one, so every token after the first is
// predicted exactly once (len(ids)-1 predictions in all; the last window
// may be shorter).
func EvalWindows(ids *IDs, seqlen int) []Window {
	var ws []Window
	n := ids.Len()
	for s := 0; s+1 < n; s += seqlen {
		ws = append(ws, Window{Start: s, Len: min(s+seqlen, n-1) - s})
	}
	return ws
}

// CalibWindows draws n windows of seqlen+1 tokens from a token stream with
// a seeded generator, as the SparseGPT and Wanda reference code does (a
// uniformly random start per window, windows may overlap). It returns the
// inputs and the next-token targets, each n·seqlen long.
func CalibWindows(ids *IDs, seqlen, n int, seed uint64) (inputs, targets []int, err error) {
	if ids.Len() < seqlen+1 {
		return nil, nil, fmt.Errorf("calibration data has %d tokens, fewer than one window of %d", ids.Len(), seqlen+1)
	}
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	for k := 0; k < n; k++ {
		in, tg := ids.Window(Window{Start: r.IntN(ids.Len() - seqlen), Len: seqlen})
		inputs = append(inputs, in...)
		targets = append(targets, tg...)
	}
	return inputs, targets, nil
}

// HeldBytes bounds what loading a data file of size bytes holds in
// memory. A token file is its own compact stream: mapped, only a window's
// pages at a time (mappedTokens); read (standard input, compressed), its
// bytes. Text: the bytes, a string copy and at most one id per byte
// (byte-level and byte-fallback tokenizers emit at most one per byte, plus
// BOS per document) as the tokenizer's []int of a document (all of it for
// the text format) and 4 bytes each in the stream.
func HeldBytes(size int64, f Format, mapped bool) int64 {
	switch {
	case f == Tokens && mapped:
		return mappedTokens
	case f == Tokens:
		return size
	case f == Text:
		return 2*size + 12*(size+1)
	}
	return 2*size + 4*(size+1) + 8*min(size+1, maxDocument)
}

// mappedTokens is what a mapped token file keeps resident: the pages of
// the windows being read (Slice drops them after).
const mappedTokens = 1 << 20

// maxDocument bounds the bytes of one document the tokenizer holds as
// ids at once (stories and JSON lines are encoded a document at a time).
const maxDocument = 64 << 20

// Reserve holds HeldBytes of the data file path (standard input: the
// largest input the budget allows, which ReadFile then enforces) in the
// ledger, or refuses naming the file's size and the budget. The caller
// releases the reservation when it no longer holds the stream.
func Reserve(l *budget.Ledger, path string, f Format) (*budget.Reservation, error) {
	if l == nil || fsguard.IsStdin(path) {
		return nil, nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	size := fi.Size()
	if compressed(path) {
		size *= 4 // compressed text: count its typical expansion
	}
	held := HeldBytes(size, f, !compressed(path))
	r, err := l.Reserve("data "+path, held)
	if err != nil {
		return nil, fmt.Errorf("%s: %s of data needs about %s in memory as token ids: %w", path, budget.Format(fi.Size()), budget.Format(held), err)
	}
	return r, nil
}
