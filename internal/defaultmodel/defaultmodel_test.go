package defaultmodel

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/elsa-stream/elsa-stream/shard"
	"github.com/elsa-stream/elsa-stream/shard/llama2c"
)

// TestEmbeddedMatchesImport re-imports stories260K from the llama2.c files
// in testdata and requires the embedded folder to be identical.
func TestEmbeddedMatchesImport(t *testing.T) {
	out := filepath.Join(t.TempDir(), "m")
	if _, err := llama2c.Import("../../testdata/stories260K/stories260K.bin", "../../testdata/stories260K/tok512.bin", out, llama2c.Options{}); err != nil {
		t.Fatal(err)
	}
	emb, err := Files()
	if err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(out)
	for _, e := range entries {
		b, _ := os.ReadFile(filepath.Join(out, e.Name()))
		if string(emb[e.Name()]) != string(b) {
			t.Errorf("embedded %s differs from a fresh import; regenerate it (see stories260K/PROVENANCE.md)", e.Name())
		}
	}
}

func TestDirOpens(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	dir, err := Dir()
	if err != nil {
		t.Fatal(err)
	}
	m, err := shard.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if got := m.TotalParams(); got != 260032 {
		t.Fatalf("embedded model has %d parameters, want 260,032", got)
	}
	if again, err := Dir(); err != nil || again != dir {
		t.Fatalf("second Dir: %q %v", again, err)
	}
}
