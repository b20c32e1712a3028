package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/elsa-stream/elsa-stream/dataset"
	"github.com/elsa-stream/elsa-stream/internal/fsguard"
	"github.com/elsa-stream/elsa-stream/shard"
	"github.com/elsa-stream/elsa-stream/tokenizer"
)

func runTokenize(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("tokenize", stderr)
	modelDir := fs.String("model", "", "model folder whose tokenizer to use")
	tokPath := fs.String("tokenizer", "", "a tokenizer file (tokenizer.json, tokenizer.model, tokenizer.bin) or a folder of them")
	data := fs.String("data", "", "input: a file (.gz and .zst decompressed), or - for standard input")
	format := fs.String("format", "text", "input format: text (one document), stories or jsonl")
	out := fs.String("out", "", "output file: little-endian ids (the tokens format), or JSON lines with --per-document")
	tokenBytes := fs.Int("token-bytes", 0, "bytes per id, 2 or 4 (default: 2 when the vocabulary fits)")
	perDoc := fs.Bool("per-document", false, "write one JSON array of ids per document (each as tokenizer(text) encodes it)")
	threads := fs.Int("threads", 0, "encoding threads (default: every core)")
	force := fs.Bool("force", false, "replace an existing output file")
	asJSON := fs.Bool("json", false, "print count, width and seconds as one JSON object")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: elsa-stream tokenize (--model DIR | --tokenizer PATH) --data FILE [--format text|stories|jsonl] --out FILE\n"+
			"       [--token-bytes 2|4] [--per-document] [--threads N] [--force] [--json]")
		fs.PrintDefaults()
	}
	if _, err := parseFlags(fs, args, 0); err != nil {
		return err
	}
	if (*modelDir == "") == (*tokPath == "") {
		return usagef("give exactly one of --model and --tokenizer")
	}
	if *data == "" || *out == "" {
		return usagef("--data and --out are required")
	}
	f, err := dataset.ParseFormat(*format)
	if err != nil || f == dataset.Tokens {
		return usagef("--format %q: want text, stories or jsonl", *format)
	}
	if *tokenBytes != 0 && *tokenBytes != 2 && *tokenBytes != 4 {
		return usagef("--token-bytes must be 2 or 4")
	}
	if *threads < 0 {
		return usagef("--threads must not be negative")
	}
	if fsguard.Overlap(*out, *data) {
		return usagef("--out %s would overwrite --data %s", *out, *data)
	}
	note := func(s string) { fmt.Fprintln(stderr, "elsa-stream: "+s) }
	var tok tokenizer.Tokenizer
	if *modelDir != "" {
		cfg, err := shard.ReadConfig(*modelDir + "/" + shard.ConfigFile)
		if err != nil {
			return err
		}
		tok, err = tokenizer.Load(*modelDir, cfg.VocabSize, note)
		if err != nil {
			return err
		}
	} else if tok, err = tokenizer.LoadPath(*tokPath, note); err != nil {
		return err
	}
	in, err := dataset.Open(*data)
	if err != nil {
		return err
	}
	defer in.Close()
	w, err := fsguard.CreateAtomic(*out, *force)
	if err != nil {
		return fmt.Errorf("%v (use --force to replace it)", err)
	}
	defer w.Abort()
	st, err := dataset.Tokenize(ctx, *data, in, tok, dataset.TokenizeOptions{Format: f, TokenBytes: *tokenBytes, PerDocument: *perDoc, Threads: *threads}, w)
	if err != nil {
		return err
	}
	if err := w.Commit(); err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(map[string]any{"out": *out, "documents": st.Documents, "tokens": st.Tokens,
			"token_bytes": st.Width, "per_document": *perDoc, "seconds": st.Seconds, "tokens_per_second": float64(st.Tokens) / max(st.Seconds, 1e-9)})
	}
	what := fmt.Sprintf("%d-byte ids", st.Width)
	if *perDoc {
		what = "JSON lines"
	}
	fmt.Fprintf(stdout, "%s: %s tokens of %s documents as %s in %.2fs (%.0f tokens/s)\n", *out, commas(st.Tokens), commas(st.Documents), what, st.Seconds, float64(st.Tokens)/max(st.Seconds, 1e-9))
	return nil
}
