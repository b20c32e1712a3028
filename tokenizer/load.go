package tokenizer

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// File names a model folder may carry its tokenizer in.
const (
	HFFile            = "tokenizer.json"
	SentencePieceFile = "tokenizer.model"
	Llama2CFile       = "tokenizer.bin"
	HFConfigFile      = "tokenizer_config.json"
)

// Load opens the tokenizer of a model folder whose model has vocabSize ids
// (0: unknown), trying tokenizer.json (HF), tokenizer.model
// (SentencePiece) and tokenizer.bin (llama2.c) in that order; a file that
// is refused (an unsupported component, say) falls back to the next, and
// note hears why (nil: silently). A tokenizer with more ids than the model
// is refused.
func Load(dir string, vocabSize int, note func(string)) (Tokenizer, error) {
	var refused []string
	for _, name := range []string{HFFile, SentencePieceFile, Llama2CFile} {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
			continue
		} else if err != nil {
			return nil, err
		}
		var tok Tokenizer
		var err error
		switch name {
		case HFFile:
			tok, err = LoadHFJSON(p)
		case SentencePieceFile:
			tok, err = LoadSentencePiece(p)
		default:
			tok, err = LoadLlama2C(p, vocabSize)
		}
		if err == nil && vocabSize > 0 && tok.VocabSize() > vocabSize {
			err = fmt.Errorf("%s: %d ids, but the model's vocabulary has %d", p, tok.VocabSize(), vocabSize)
		}
		if err != nil {
			refused = append(refused, err.Error())
			continue
		}
		if len(refused) > 0 && note != nil {
			note(fmt.Sprintf("using %s: %s", p, strings.Join(refused, "; ")))
		}
		return tok, nil
	}
	if len(refused) > 0 {
		return nil, errors.New(strings.Join(refused, "; "))
	}
	return nil, fmt.Errorf("%s: no tokenizer found (looked for %s, %s, %s)", dir, HFFile, SentencePieceFile, Llama2CFile)
}

// LoadPath opens a tokenizer without a model: path is a tokenizer file
// (tokenizer.json, with the tokenizer_config.json beside it; tokenizer.model;
// tokenizer.bin) or a folder holding them, tried in Load's order.
func LoadPath(path string, note func(string)) (Tokenizer, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.IsDir() {
		return Load(path, 0, note)
	}
	switch {
	case strings.HasSuffix(path, ".model"):
		return LoadSentencePiece(path)
	case strings.HasSuffix(path, ".bin"):
		return LoadLlama2C(path, 0)
	case strings.HasSuffix(path, ".json"):
		return LoadHFJSON(path)
	}
	return nil, fmt.Errorf("%s: not a tokenizer file (want %s, %s, %s or a folder holding one)", path, HFFile, SentencePieceFile, Llama2CFile)
}
