package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/elsa-stream/elsa-stream/dataset"
	"github.com/elsa-stream/elsa-stream/internal/budget"
	"github.com/elsa-stream/elsa-stream/internal/defaultmodel"
	"github.com/elsa-stream/elsa-stream/stream"
	"github.com/elsa-stream/elsa-stream/tokenizer"
)

func runEval(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("eval", stderr)
	modelDir := fs.String("model", "", "Hugging Face model folder (default: the embedded stories260K)")
	data := fs.String("data", "", "evaluation file (default: the embedded first 100 TinyStories validation stories)")
	format := fs.String("format", "stories", "data format: stories, text, jsonl or tokens (.gz and .zst files are decompressed)")
	seqlen := fs.Int("seqlen", 0, "window length in tokens (default: the model's context)")
	maxStories := fs.Int("max-stories", 0, "stories format: evaluate only the first N stories (0: all)")
	tokenBytes := fs.Int("token-bytes", 2, "tokens format: bytes per id (2 or 4)")
	asJSON := fs.Bool("json", false, "print one JSON object")
	var mem memBudgetFlag
	fs.Var(&mem, "mem-budget", "memory budget: 32G, 512M, 1.5GiB, ... (default 80% of available memory)")
	noMmap := fs.Bool("no-mmap", false, "read weights with pread instead of mmap (network filesystems)")
	compute := computeFlag(fs, "GEMM precision")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: elsa-stream eval [--model DIR] [--data FILE] [--format stories|text|jsonl|tokens] [--seqlen N] [--max-stories N] [--compute fp32|bf16] [--json]")
		fs.PrintDefaults()
	}
	if _, err := parseFlags(fs, args, 0); err != nil {
		return err
	}
	f, err := dataset.ParseFormat(*format)
	if err != nil {
		return usagef("--format: %v", err)
	}
	if *seqlen < 0 || *maxStories < 0 {
		return usagef("--seqlen and --max-stories must not be negative")
	}
	if *tokenBytes != 2 && *tokenBytes != 4 {
		return usagef("--token-bytes must be 2 or 4")
	}
	src, dir, ledger, err := openModel(*modelDir, mem, *noMmap)
	if err != nil {
		return err
	}
	defer src.Close()
	var tok tokenizer.Tokenizer
	if f != dataset.Tokens {
		if tok, err = tokenizer.Load(dir, src.Cfg.Vocab, func(s string) { fmt.Fprintln(stderr, "elsa-stream: "+s) }); err != nil {
			return err
		}
	}
	T := *seqlen
	if T == 0 {
		T = src.Cfg.MaxPositions
	}
	if err := src.Cfg.CheckSeqLen(T); err != nil {
		return usagef("--seqlen: %v", err)
	}
	opt := dataset.Options{Format: f, MaxStories: *maxStories, TokenBytes: *tokenBytes, Vocab: src.Cfg.Vocab}
	var ids *dataset.IDs
	dataName := *data
	if dataName == "" {
		dataName = "embedded:valid_first100.txt"
		ids, err = dataset.Parse(dataName, defaultmodel.ValidExcerpt, tok, opt)
	} else {
		held, rerr := dataset.Reserve(ledger, dataName, f)
		if rerr != nil {
			return rerr
		}
		defer held.Release()
		ids, err = dataset.Load(dataName, tok, opt)
	}
	if err != nil {
		return err
	}
	defer ids.Close()
	windows := dataset.EvalWindows(ids, T)
	if len(windows) == 0 {
		return fmt.Errorf("%s: fewer than 2 tokens, nothing to evaluate", dataName)
	}
	res, err := src.Sweeper().EvaluateWithin(ctx, ids, windows, T, *compute)
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(map[string]any{
			"model": dir, "data": dataName, "format": f, "seqlen": T, "windows": len(windows), "compute": compute.String(), "kernels": compute.Backend(),
			"ppl": res.PPL(), "loss": res.Loss(), "tokens": res.Tokens, "seconds": res.Seconds,
			"tokens_per_second": res.TokensPerSecond(), "mem_budget": ledger.Limit(), "ledger_peak": ledger.Peak(),
		})
	}
	fmt.Fprintf(stdout, "model   %s\ndata    %s (%s, %d windows of <= %d tokens)\nppl     %.4f\nloss    %.6f nats/token over %d predicted tokens\ntime    %.2fs (%.0f tokens/s, %s GEMMs on %s)\n",
		dir, dataName, f, len(windows), T, res.PPL(), res.Loss(), res.Tokens, res.Seconds, res.TokensPerSecond(), compute, compute.Backend())
	return nil
}

// openModel opens the model folder of --model (default: the embedded
// stories260K) under the --mem-budget ledger, as eval and generate do.
func openModel(modelDir string, mem memBudgetFlag, noMmap bool) (*stream.Source, string, *budget.Ledger, error) {
	if mem.bytes > 0 {
		if err := budget.CheckRunnable(mem.bytes); err != nil {
			return nil, "", nil, usagef("--mem-budget: %v", err)
		}
	}
	dir := modelDir
	if dir == "" {
		var err error
		if dir, err = defaultmodel.Dir(); err != nil {
			return nil, "", nil, err
		}
	}
	ledger := budget.New(mem.value())
	src, err := stream.OpenWith(dir, stream.Options{NoMmap: noMmap, Ledger: ledger})
	if err != nil {
		return nil, "", nil, err
	}
	return src, dir, ledger, nil
}
