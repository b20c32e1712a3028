package dataset

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"sync"
	"time"

	"github.com/elsa-stream/elsa-stream/tokenizer"
)

// TokenizeOptions say how Tokenize reads and writes.
type TokenizeOptions struct {
	// Format of the input: Text (one document), Stories or JSONL.
	Format Format
	// TokenBytes is the width of each id written, 2 or 4 (0: 2 when the
	// vocabulary fits in 16 bits, else 4).
	TokenBytes int
	// PerDocument writes JSON lines, one array of ids per document, each
	// encoded as tokenizer(text) (special tokens added), instead of the
	// id stream.
	PerDocument bool
	// Threads encode documents in parallel (0: every core); the output
	// does not depend on it.
	Threads int
}

// TokenizeStats is what Tokenize did.
type TokenizeStats struct {
	Documents int64   `json:"documents"`
	Tokens    int64   `json:"tokens"`
	Width     int     `json:"token_bytes,omitempty"`
	Seconds   float64 `json:"seconds"`
}

// Tokenize encodes the data r (name for errors) and writes the token
// stream the tokens format reads - the same ids the format itself gives
// eval and prune, little-endian, TokenBytes each - or, with PerDocument,
// one JSON array of ids per document.
func Tokenize(ctx context.Context, name string, r io.Reader, tok tokenizer.Tokenizer, opt TokenizeOptions, w io.Writer) (TokenizeStats, error) {
	start := time.Now()
	st := TokenizeStats{Width: opt.TokenBytes}
	if opt.PerDocument {
		st.Width = 0
	} else if st.Width == 0 {
		st.Width = 2
		if tok.VocabSize() > 1<<16 {
			st.Width = 4
		}
	}
	if !opt.PerDocument && st.Width != 2 && st.Width != 4 {
		return st, fmt.Errorf("token width %d bytes: want 2 or 4", st.Width)
	}
	if !opt.PerDocument && st.Width == 2 && tok.VocabSize() > 1<<16 {
		return st, fmt.Errorf("a vocabulary of %d ids does not fit 2-byte tokens: use 4", tok.VocabSize())
	}
	threads := opt.Threads
	if threads <= 0 {
		threads = runtime.GOMAXPROCS(0)
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	encode := func(doc string) []int {
		if opt.Format == Stories && !opt.PerDocument { // the stories protocol
			return story(tok, doc)
		}
		return Special(tok, doc)
	}
	var buf []byte
	emit := func(ids []int) error {
		st.Documents++
		st.Tokens += int64(len(ids))
		buf = buf[:0]
		if opt.PerDocument {
			b, _ := json.Marshal(ids)
			buf = append(append(buf, b...), '\n')
		} else {
			for _, id := range ids {
				if st.Width == 2 {
					buf = binary.LittleEndian.AppendUint16(buf, uint16(id))
				} else {
					buf = binary.LittleEndian.AppendUint32(buf, uint32(id))
				}
			}
		}
		_, err := bw.Write(buf)
		return err
	}
	// Documents go in batches through the workers and out in order.
	var batch []string
	var size int
	flush := func() error {
		if err := ctx.Err(); err != nil {
			return err
		}
		out := make([][]int, len(batch))
		var wg sync.WaitGroup
		next := make(chan int, len(batch))
		for i := range batch {
			next <- i
		}
		close(next)
		for k := 0; k < min(threads, len(batch)); k++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range next {
					out[i] = encode(batch[i])
				}
			}()
		}
		wg.Wait()
		for _, ids := range out {
			if err := emit(ids); err != nil {
				return err
			}
		}
		batch, size = batch[:0], 0
		return nil
	}
	add := func(doc string) error {
		batch = append(batch, doc)
		if size += len(doc); size >= 4<<20 {
			return flush()
		}
		return nil
	}
	var err error
	switch opt.Format {
	case JSONL:
		err = Documents(name, r, add)
	case Stories, Text:
		var b []byte
		if b, err = io.ReadAll(r); err != nil {
			return st, fmt.Errorf("%s: %w", name, err)
		}
		if opt.Format == Text {
			err = add(string(b))
		} else {
			for _, d := range SplitStories(string(b)) {
				if err = add(d); err != nil {
					break
				}
			}
		}
	default:
		return st, fmt.Errorf("tokenize reads text, stories or jsonl data, not %q", opt.Format)
	}
	if err == nil {
		err = flush()
	}
	if err == nil {
		err = bw.Flush()
	}
	st.Seconds = time.Since(start).Seconds()
	return st, err
}
