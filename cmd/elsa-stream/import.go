package main

import (
	"context"
	"fmt"
	"io"

	"github.com/elsa-stream/elsa-stream/shard/llama2c"
)

func runImport(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "llama2c" {
		return usagef("usage: elsa-stream import llama2c --model M.bin --tokenizer T.bin --out DIR [--force]")
	}
	fs := newFlags("import llama2c", stderr)
	model := fs.String("model", "", "llama2.c checkpoint (legacy v0 or version-1 \"ak42\")")
	tok := fs.String("tokenizer", "", "llama2.c tokenizer.bin")
	out := fs.String("out", "", "output Hugging Face folder")
	force := fs.Bool("force", false, "replace an existing output folder")
	if _, err := parseFlags(fs, args[1:], 0); err != nil {
		return err
	}
	if *model == "" || *tok == "" || *out == "" {
		return usagef("--model, --tokenizer and --out are required")
	}
	p, err := llama2c.Import(*model, *tok, *out, llama2c.Options{Force: *force})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "imported %s (v%d: dim %d, %d layers, %d heads, %d kv heads, vocab %d) into %s\n",
		*model, p.Version, p.Dim, p.NLayers, p.NHeads, p.NKVHeads, p.VocabSize, *out)
	return nil
}
