package kernels

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestDefaultBuildHasNoCgo: the default build (no tags) must compile no cgo
// file even where a C compiler exists, so `go test ./...` works on a
// machine without the optional C libraries (OpenBLAS, MPI).
func TestDefaultBuildHasNoCgo(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command:", err)
	}
	cmd := exec.Command(gobin, "list", "-f", "{{.ImportPath}} {{.CgoFiles}}", "github.com/elsa-stream/elsa-stream/...")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if !strings.HasSuffix(line, " []") {
			t.Errorf("compiled with cgo by default: %s (put it behind an explicit build tag)", line)
		}
	}
}
