package tokenizer

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// File names a model folder may carry its tokenizer in.
const (
	HFFile            = "tokenizer.json"
	SentencePieceFile = "tokenizer.model"
	Llama2CFile       = "tokenizer.bin"
	HFConfigFile      = "tokenizer_config.json"
)

// Load opens the tokenizer of a model folder whose model has vocabSize ids,
// trying tokenizer.json (HF), tokenizer.model (SentencePiece) and
// tokenizer.bin (llama2.c) in that order. A tokenizer with more ids than the
// model is refused.
func Load(dir string, vocabSize int) (Tokenizer, error) {
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
		if err != nil {
			return nil, err
		}
		if tok.VocabSize() > vocabSize {
			return nil, fmt.Errorf("%s: %d ids, but the model's vocabulary has %d", p, tok.VocabSize(), vocabSize)
		}
		return tok, nil
	}
	return nil, fmt.Errorf("%s: no tokenizer found (looked for %s, %s, %s)", dir, HFFile, SentencePieceFile, Llama2CFile)
}
