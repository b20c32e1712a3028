package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"strings"

	"github.com/elsa-stream/elsa-stream/internal/budget"
	"github.com/elsa-stream/elsa-stream/stream"
	"github.com/elsa-stream/elsa-stream/tokenizer"
)

func runGenerate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("generate", stderr)
	modelDir := fs.String("model", "", "model folder: Hugging Face or packed (default: the embedded stories260K)")
	prompt := fs.String("prompt", "", "prompt text (encoded with the model's tokenizer, its BOS first when it has one)")
	promptIDs := fs.String("prompt-ids", "", "prompt as token ids, e.g. 1,403,9 (no tokenizer needed)")
	maxTokens := fs.Int("max-tokens", 128, "most tokens to generate")
	temperature := fs.Float64("temperature", 0, "sampling temperature (0: greedy)")
	topP := fs.Float64("top-p", 1, "nucleus sampling: the smallest set of tokens whose probability reaches P")
	seed := fs.Uint64("seed", 0, "sampling seed")
	asJSON := fs.Bool("json", false, "print one JSON object: ids, text, prefill and decode tokens/s")
	var mem memBudgetFlag
	fs.Var(&mem, "mem-budget", "memory budget: 32G, 512M, 1.5GiB, ... (default 80% of available memory)")
	noMmap := fs.Bool("no-mmap", false, "read weights with pread instead of mmap (network filesystems)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: elsa-stream generate [--model DIR] (--prompt TEXT | --prompt-ids 1,2,3) [--max-tokens N] [--temperature 0] [--top-p P] [--seed S] [--json]")
		fs.PrintDefaults()
	}
	if _, err := parseFlags(fs, args, 0); err != nil {
		return err
	}
	if (*prompt == "") == (*promptIDs == "") {
		return usagef("give exactly one of --prompt and --prompt-ids")
	}
	if *maxTokens < 0 || *temperature < 0 || *topP <= 0 || *topP > 1 {
		return usagef("--max-tokens and --temperature must not be negative, --top-p must be in (0, 1]")
	}
	src, dir, _, err := openModel(*modelDir, mem, *noMmap)
	if err != nil {
		return err
	}
	defer src.Close()
	var tok tokenizer.Tokenizer
	var ids []int
	skip := 0
	if *promptIDs != "" {
		for _, f := range strings.Split(*promptIDs, ",") {
			id, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || id < 0 || id >= src.Cfg.Vocab {
				return usagef("--prompt-ids: %q is not a token id in [0, %d)", f, src.Cfg.Vocab)
			}
			ids = append(ids, id)
		}
	} else {
		if tok, err = tokenizer.Load(dir, src.Cfg.Vocab, func(s string) { fmt.Fprintln(stderr, "elsa-stream: "+s) }); err != nil {
			return err
		}
		if bos := tok.BOS(); bos >= 0 {
			ids = append(ids, bos)
			skip = 1 // not printed
		}
		ids = append(ids, tok.Encode(*prompt)...)
	}
	dec, err := stream.NewDecoder(src, 0)
	if err != nil {
		return err
	}
	defer dec.Close()
	eos := eosIDs(src.Model.Config.EOSTokenID)
	decoder, _ := tok.(interface{ Decode([]int) string })
	// Text is printed as it comes: the decoding of all tokens so far, less
	// what was printed (a token alone can decode differently, e.g.
	// SentencePiece's leading space).
	all := append([]int(nil), ids...)
	printed := 0
	if !*asJSON && decoder != nil {
		head := decoder.Decode(all[skip:])
		fmt.Fprint(stdout, head)
		printed = len(head)
	}
	emit := func(id int) {
		if *asJSON || decoder == nil {
			return
		}
		all = append(all, id)
		if s := decoder.Decode(all[skip:]); len(s) > printed {
			fmt.Fprint(stdout, s[printed:])
			printed = len(s)
		}
	}
	g, err := dec.Generate(ctx, ids, *maxTokens, stream.Sampling{Temperature: *temperature, TopP: *topP, Rand: rand.New(rand.NewPCG(*seed, 0x9e3779b97f4a7c15))},
		func(id int) bool { return eos[id] }, emit)
	if err != nil {
		return err
	}
	text := ""
	if decoder != nil {
		text = decoder.Decode(g.Tokens)
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(map[string]any{"model": dir, "prompt_ids": g.Prompt, "ids": g.Tokens, "text": text,
			"prefill_tokens_per_second": g.PrefillTokensPerSecond(), "decode_tokens_per_second": g.DecodeTokensPerSecond(),
			"weight_bytes_per_token": dec.WeightBytes, "packed_matrices": dec.Packed, "matrices": dec.Matrices})
	}
	if decoder == nil {
		fmt.Fprintln(stdout, strings.Trim(fmt.Sprint(g.Tokens), "[]"))
	} else {
		fmt.Fprintln(stdout)
	}
	fmt.Fprintf(stderr, "prefill %d tokens at %.1f tokens/s, decoded %d at %.1f tokens/s (%s of weights per token, %d of %d matrices packed)\n",
		len(g.Prompt), g.PrefillTokensPerSecond(), len(g.Tokens), g.DecodeTokensPerSecond(), budget.Format(dec.WeightBytes), dec.Packed, dec.Matrices)
	return nil
}

// eosIDs reads config.json's eos_token_id: a number or a list of them.
func eosIDs(v any) map[int]bool {
	out := map[int]bool{}
	switch x := v.(type) {
	case float64:
		out[int(x)] = true
	case []any:
		for _, e := range x {
			if f, ok := e.(float64); ok {
				out[int(f)] = true
			}
		}
	}
	return out
}
