package lowmem

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Spill keeps transient buffers on disk between two phases of one step
// (an optimizer's gradients between a backward sweep and the next forward
// sweep): one plain file per name, no checksum and no journal, because a
// crash discards them with the step that wrote them (resume recomputes it).
type Spill struct{ dir string }

// NewSpill uses (and creates) dir.
func NewSpill(dir string) (*Spill, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("spill: %w", err)
	}
	return &Spill{dir: dir}, nil
}

func (s *Spill) path(name string) (string, error) {
	if name == "" || strings.ContainsAny(name, `/\`) {
		return "", fmt.Errorf("spill: bad name %q", name)
	}
	return filepath.Join(s.dir, name+".spill"), nil
}

// Put stores b under name, replacing what was there.
func (s *Spill) Put(name string, b []byte) error {
	p, err := s.path(name)
	if err != nil {
		return err
	}
	if err := os.WriteFile(p, b, 0o600); err != nil {
		return fmt.Errorf("spill: %w", err)
	}
	return nil
}

// Get reads name's bytes into buf (grown as needed) and returns them.
func (s *Spill) Get(name string, buf []byte) ([]byte, error) {
	p, err := s.path(name)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("spill: %w", err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("spill: %w", err)
	}
	n := int(info.Size())
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := f.ReadAt(buf, 0); err != nil {
		return nil, fmt.Errorf("spill %s: %w", p, err)
	}
	return buf, nil
}
