package tokenizer

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// File names a model folder may carry its tokenizer in, in the order Load
// tries them.
const (
	Llama2CFile       = "tokenizer.bin"
	SentencePieceFile = "tokenizer.model"
	HFFile            = "tokenizer.json"
)

// Load opens the tokenizer of a model folder with a vocabulary of vocabSize.
func Load(dir string, vocabSize int) (Tokenizer, error) {
	p := filepath.Join(dir, Llama2CFile)
	if _, err := os.Stat(p); err == nil {
		return LoadLlama2C(p, vocabSize)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	return nil, fmt.Errorf("%s: no tokenizer found (looked for %s)", dir, Llama2CFile)
}
