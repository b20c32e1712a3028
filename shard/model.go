package shard

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/elsa-stream/elsa-stream/internal/fsguard"
)

// File names of a Hugging Face model folder.
const (
	SingleFile = "model.safetensors"
	IndexFile  = "model.safetensors.index.json"
	ConfigFile = "config.json"
)

// Model is an opened Hugging Face model folder: its config and every tensor
// of its safetensors file(s), each file mapped read-only.
type Model struct {
	Dir    string
	Config *Config
	Files  []*File
	// Names lists every tensor name in sorted order.
	Names   []string
	tensors map[string]*Tensor
}

// Open opens a model folder: config.json plus model.safetensors, or the
// shards named by model.safetensors.index.json. Every tensor of every shard
// must be named by the index exactly once and every name must resolve.
func Open(dir string) (*Model, error) { return OpenWith(dir, Options{}) }

// OpenWith is Open with read options (NoMmap).
func OpenWith(dir string, opt Options) (*Model, error) {
	cfg, err := ReadConfig(filepath.Join(dir, ConfigFile))
	if err != nil {
		return nil, err
	}
	m, err := openTensors(dir, opt)
	if err != nil {
		return nil, err
	}
	m.Config = cfg
	return m, nil
}

// OpenTensors opens the safetensors file(s) of dir without reading config.json.
func OpenTensors(dir string) (*Model, error) { return openTensors(dir, Options{}) }

// OpenTensorsWith is OpenTensors with read options (NoMmap, Ledger).
func OpenTensorsWith(dir string, opt Options) (*Model, error) { return openTensors(dir, opt) }

func openTensors(dir string, opt Options) (*Model, error) {
	if _, err := os.Stat(filepath.Join(dir, ManifestFile)); err == nil {
		return openPacked(dir, opt)
	}
	return openLayout(dir, opt, HFLayout)
}

// openLayout opens the tensor files of dir named by layout.
func openLayout(dir string, opt Options, layout Layout) (*Model, error) {
	m := &Model{Dir: dir, tensors: map[string]*Tensor{}}
	indexPath := filepath.Join(dir, layout.Index)
	idx, err := ReadIndex(indexPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		f, err := OpenFileWith(filepath.Join(dir, layout.Single), opt)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("%s: no %s and no %s: %w", dir, layout.Single, layout.Index, fs.ErrNotExist)
			}
			return nil, err
		}
		m.Files = []*File{f}
		for i := range f.Header.Tensors {
			m.tensors[f.Header.Tensors[i].Name] = &Tensor{TensorInfo: f.Header.Tensors[i], File: f}
		}
	case err != nil:
		return nil, err
	default:
		if err := m.openShards(indexPath, idx, opt); err != nil {
			m.Close()
			return nil, err
		}
	}
	for name := range m.tensors {
		m.Names = append(m.Names, name)
	}
	sort.Strings(m.Names)
	return m, nil
}

func (m *Model) openShards(indexPath string, idx *Index, opt Options) error {
	opened := map[string]*File{}
	for _, shardName := range idx.Shards() {
		f, err := OpenFileWith(filepath.Join(m.Dir, shardName), opt)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return invalid(indexPath, "", "names shard %q, which does not exist", shardName)
			}
			return err
		}
		opened[shardName] = f
		m.Files = append(m.Files, f)
	}
	var problems []string
	for _, e := range idx.WeightMap {
		f := opened[e.File]
		t, ok := f.Tensor(e.Name)
		if !ok {
			problems = append(problems, fmt.Sprintf("tensor %q is mapped to %s, which does not hold it", e.Name, e.File))
			continue
		}
		m.tensors[e.Name] = t
	}
	for shardName, f := range opened {
		for _, t := range f.Header.Tensors {
			if idx.fileOf[t.Name] != shardName {
				problems = append(problems, fmt.Sprintf("tensor %q in %s is not mapped to that file by the index", t.Name, shardName))
			}
		}
	}
	sort.Strings(problems)
	if len(problems) > 0 {
		return invalid(indexPath, "", "%s", strings.Join(problems, "; "))
	}
	return nil
}

// Close unmaps every file.
func (m *Model) Close() error {
	var first error
	for _, f := range m.Files {
		if err := f.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Tensor returns a tensor by name.
func (m *Model) Tensor(name string) (*Tensor, bool) {
	t, ok := m.tensors[name]
	return t, ok
}

// TotalBytes is the sum of all tensor byte sizes.
func (m *Model) TotalBytes() int64 {
	var n int64
	for _, t := range m.tensors {
		n += t.NumBytes()
	}
	return n
}

// TotalParams is the sum of all tensor element counts.
func (m *Model) TotalParams() int64 {
	var n int64
	for _, t := range m.tensors {
		n += t.NumElements()
	}
	return n
}

// Index is a parsed model.safetensors.index.json.
type Index struct {
	TotalSize int64
	// WeightMap in file order.
	WeightMap []IndexEntry
	fileOf    map[string]string
}

// IndexEntry maps one tensor to the shard holding it.
type IndexEntry struct{ Name, File string }

// Shards lists the distinct shard files in first-use order.
func (x *Index) Shards() []string {
	var out []string
	seen := map[string]bool{}
	for _, e := range x.WeightMap {
		if !seen[e.File] {
			seen[e.File] = true
			out = append(out, e.File)
		}
	}
	return out
}

// ReadIndex reads and validates a sharded-checkpoint index.
func ReadIndex(path string) (*Index, error) {
	b, err := fsguard.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseIndex(path, b)
}

// ParseIndex parses index JSON. It refuses a tensor listed twice and shard
// paths that are absolute or leave the model folder.
func ParseIndex(path string, b []byte) (*Index, error) {
	x := &Index{fileOf: map[string]string{}}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	sawMap := false
	seenTop := map[string]bool{}
	err := strictObject(dec, func(key string) error {
		if seenTop[key] {
			return invalid(path, "", "key %q given twice", key)
		}
		seenTop[key] = true
		switch key {
		case "weight_map":
			sawMap = true
			return strictObject(dec, func(name string) error {
				var file string
				if err := dec.Decode(&file); err != nil {
					return invalid(path, name, "weight_map value must be a file name")
				}
				if _, dup := x.fileOf[name]; dup {
					return invalid(path, name, "listed twice in weight_map")
				}
				if err := checkShardPath(file); err != nil {
					return invalid(path, name, "shard path %q: %v", file, err)
				}
				file = filepath.ToSlash(filepath.Clean(file))
				x.fileOf[name] = file
				x.WeightMap = append(x.WeightMap, IndexEntry{Name: name, File: file})
				return nil
			})
		case "metadata":
			var md map[string]any
			if err := dec.Decode(&md); err != nil {
				return invalid(path, "", "metadata: %v", err)
			}
			if v, ok := md["total_size"]; ok {
				n, ok := v.(json.Number)
				if !ok {
					return invalid(path, "", "metadata.total_size must be a number")
				}
				ts, err := n.Int64()
				if err != nil || ts < 0 {
					return invalid(path, "", "metadata.total_size %s is not a non-negative integer", n)
				}
				x.TotalSize = ts
			}
			return nil
		default:
			var skip json.RawMessage
			return dec.Decode(&skip)
		}
	})
	if err != nil {
		var fe *FormatError
		if errors.As(err, &fe) {
			return nil, err
		}
		return nil, invalid(path, "", "not valid JSON: %v", err)
	}
	if !sawMap {
		return nil, invalid(path, "", "has no weight_map")
	}
	return x, nil
}

// checkShardPath refuses shard paths that could read outside the model folder.
func checkShardPath(p string) error {
	switch {
	case p == "":
		return errors.New("empty")
	case filepath.IsAbs(p) || strings.HasPrefix(p, "/") || strings.HasPrefix(p, `\`):
		return errors.New("absolute paths are refused")
	case strings.ContainsRune(p, 0):
		return errors.New("contains a NUL byte")
	}
	clean := filepath.Clean(filepath.FromSlash(p))
	if clean == ".." || strings.HasPrefix(clean, ".."+string(filepath.Separator)) || strings.Contains(p, `\`) {
		return errors.New("leaves the model folder")
	}
	if clean == "." {
		return errors.New("names the model folder itself")
	}
	return nil
}
