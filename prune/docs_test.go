package prune

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestCommentsCiteTheRepository: comments point at docs/design.md, which
// ships with the code, not at files or issue letters outside it.
func TestCommentsCiteTheRepository(t *testing.T) {
	outside := regexp.MustCompile(`DESIGN\.md|DESIGN §|\bissue [A-P]\b`)
	filepath.WalkDir("..", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() && strings.HasPrefix(d.Name(), ".") && d.Name() != ".." {
			return filepath.SkipDir
		}
		if !strings.HasSuffix(p, ".go") && !strings.HasSuffix(p, ".sh") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(b), "\n") {
			if outside.MatchString(line) && !strings.Contains(line, "outside := regexp") {
				t.Errorf("%s:%d cites something outside the repository: %s", p, i+1, strings.TrimSpace(line))
			}
		}
		return nil
	})
	if _, err := os.Stat("../docs/design.md"); err != nil {
		t.Fatal(err)
	}
}
