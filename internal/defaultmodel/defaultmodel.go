// Package defaultmodel embeds the default model (stories260K imported from
// llama2.c, 260,032 parameters) and a validation excerpt, so elsa-stream runs
// with no files at all.
package defaultmodel

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

//go:embed stories260K
var modelFS embed.FS

// ValidExcerpt is the first 100 TinyStories validation stories in the
// stories format (dense stories260K perplexity 3.4998).
//
//go:embed data/valid_first100.txt
var ValidExcerpt []byte

// TrainCalib is TinyStories train-split text in the stories format (1,097
// stories), the default calibration data. It never overlaps ValidExcerpt.
//
//go:embed data/train_calib.txt
var TrainCalib []byte

// Name is the embedded model's name.
const Name = "stories260K"

// Dir materializes the embedded model folder under the user cache directory
// (or the system temp dir) and returns its path. The folder name carries a
// hash of the contents, and it is written to a temporary name and renamed,
// so concurrent runs and stale copies are safe.
func Dir() (string, error) {
	h := sha256.New()
	files, err := fs.Glob(modelFS, Name+"/*")
	if err != nil {
		return "", err
	}
	for _, f := range files {
		b, _ := modelFS.ReadFile(f)
		h.Write([]byte(f))
		h.Write(b)
	}
	base, err := os.UserCacheDir()
	if err != nil {
		base = os.TempDir()
	}
	root := filepath.Join(base, "elsa-stream")
	dir := filepath.Join(root, Name+"-"+hex.EncodeToString(h.Sum(nil))[:12])
	if _, err := os.Stat(filepath.Join(dir, "config.json")); err == nil {
		return dir, nil
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", fmt.Errorf("default model: %w", err)
	}
	tmp, err := os.MkdirTemp(root, ".tmp-"+Name)
	if err != nil {
		return "", fmt.Errorf("default model: %w", err)
	}
	defer os.RemoveAll(tmp)
	for _, f := range files {
		b, _ := modelFS.ReadFile(f)
		if err := os.WriteFile(filepath.Join(tmp, filepath.Base(f)), b, 0o644); err != nil {
			return "", fmt.Errorf("default model: %w", err)
		}
	}
	if err := os.Rename(tmp, dir); err != nil {
		if _, statErr := os.Stat(filepath.Join(dir, "config.json")); statErr == nil {
			return dir, nil // another process won the race
		}
		return "", fmt.Errorf("default model: %w", err)
	}
	return dir, nil
}

// Files returns the embedded folder's files by base name (for tests).
func Files() (map[string][]byte, error) {
	files, err := fs.Glob(modelFS, Name+"/*")
	if err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	for _, f := range files {
		b, err := modelFS.ReadFile(f)
		if err != nil {
			return nil, err
		}
		out[filepath.Base(f)] = b
	}
	return out, nil
}
