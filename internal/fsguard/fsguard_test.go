package fsguard

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestOverlap(t *testing.T) {
	dir := t.TempDir()
	model := filepath.Join(dir, "models", "m")
	os.MkdirAll(model, 0o755)
	link := filepath.Join(dir, "link")
	os.Symlink(filepath.Join(dir, "models"), link)
	for _, c := range []struct {
		a, b string
		want bool
	}{
		{model, model, true},
		{model + "/", model, true},
		{filepath.Join(model, "out"), model, true},        // inside, not yet existing
		{filepath.Join(dir, "models"), model, true},       // a parent
		{filepath.Join(link, "m"), model, true},           // through a symbolic link
		{filepath.Join(link, "m", "x", "y"), model, true}, // through a link, not existing
		{filepath.Join(dir, "models", "m2"), model, false},
		{filepath.Join(dir, "mo"), model, false},
	} {
		if got := Overlap(c.a, c.b); got != c.want {
			t.Errorf("Overlap(%s, %s) = %v", c.a, c.b, got)
		}
	}
	if Within(filepath.Join(dir, "models"), model) || !Within(model, filepath.Join(dir, "models")) {
		t.Error("Within is directional")
	}
}

func TestAcquire(t *testing.T) {
	p := filepath.Join(t.TempDir(), ".lock")
	a, err := Acquire(p, "the thing", true)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Acquire(p, "the thing", true)
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "pid ") || !strings.Contains(err.Error(), "the thing") {
		t.Fatalf("second lock: %v", err)
	}
	a.Release()
	if _, err := os.Stat(p); err == nil {
		t.Fatal("lock file not removed")
	}
	b, err := Acquire(p, "the thing", false)
	if err != nil {
		t.Fatal(err)
	}
	b.Release()
	if _, err := os.Stat(p); err != nil {
		t.Fatal("kept lock file removed")
	}
}

func TestOpenRegular(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Skip(err)
	}
	for p, want := range map[string]string{fifo: "FIFO", dir: "directory", "/dev/null": "character device"} {
		if _, err := ReadFile(p); !errors.Is(err, ErrNotRegular) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v", p, err)
		}
	}
	f := filepath.Join(dir, "f")
	os.WriteFile(f, []byte("x"), 0o644)
	if b, err := ReadFile(f); err != nil || string(b) != "x" {
		t.Fatal(b, err)
	}
}
