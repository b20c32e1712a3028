package lowmem

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// blockState is deterministic content for (step, block), so a reader can
// check it got exactly the state of the step the journal names.
func blockState(step int, block string) []Chunk {
	r := rand.New(rand.NewPCG(uint64(step), uint64(len(block))+uint64(block[len(block)-1])))
	z := make([]float32, 3000)
	for i := range z {
		if r.Float64() < 0.1 {
			z[i] = float32(r.NormFloat64())
		}
	}
	m := stateLike(3000, uint64(step))
	return []Chunk{
		{Name: "z", Codec: "sparse(fp16)", N: len(z), Data: Sparse{Values: FP16{}}.Encode(nil, z), Compress: true},
		{Name: "m", Codec: "dyn8-signed", N: len(m), Data: Dynamic{Signed: true, Bits: 8}.Encode(nil, m)},
		{Name: "tag", Codec: "raw", Data: []byte(fmt.Sprintf("step %d block %s", step, block))},
	}
}

var blocks = []string{"layer-000", "layer-001", "layer-002", "head"}

func writeStep(t testing.TB, s *Store, step int) {
	for _, b := range blocks {
		if err := s.WriteBlock(step, b, blockState(step, b)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Commit(step); err != nil {
		t.Fatal(err)
	}
}

func checkStep(t *testing.T, s *Store, step int) {
	t.Helper()
	for _, b := range blocks {
		got, err := s.ReadBlock(step, b)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range blockState(step, b) {
			if !bytes.Equal(got[c.Name].Data, c.Data) {
				t.Fatalf("step %d block %s chunk %s differs", step, b, c.Name)
			}
		}
	}
}

func TestStoreRoundTripAndResume(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, "run-a", nil)
	if err != nil {
		t.Fatal(err)
	}
	for step := 0; step < 3; step++ {
		writeStep(t, s, step)
	}
	checkStep(t, s, 2)
	// Reopen: the journal says step 2.
	s2, err := Open(dir, "run-a", nil)
	if err != nil || s2.LastStep() != 2 {
		t.Fatalf("reopen: %v, step %d", err, s2.LastStep())
	}
	checkStep(t, s2, 2)
	if _, err := Open(dir, "run-b", nil); err == nil || !strings.Contains(err.Error(), "another run") {
		t.Fatalf("another run's store: %v", err)
	}
	n, _ := s2.BytesOnDisk()
	if n == 0 {
		t.Fatal("no bytes on disk")
	}
}

// TestCorruptByteDetected flips one byte at many positions of a state file
// and of the journal: every read fails with ErrCorrupt naming the file.
func TestCorruptByteDetected(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(dir, "r", nil)
	writeStep(t, s, 0)
	p := s.path(0, "layer-001")
	orig, _ := os.ReadFile(p)
	for _, pos := range []int{0, 9, 13, 21, 26, 40, len(orig) / 2, len(orig) - 5, len(orig) - 1} {
		b := append([]byte(nil), orig...)
		b[pos] ^= 0x40
		os.WriteFile(p, b, 0o644)
		_, err := s.ReadBlock(0, "layer-001")
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), p) {
			t.Fatalf("flipped byte %d of %d: error %v", pos, len(orig), err)
		}
	}
	os.WriteFile(p, orig, 0o644)
	j := filepath.Join(dir, journalName)
	jb, _ := os.ReadFile(j)
	jb[len(jb)/2] ^= 0x01
	os.WriteFile(j, jb, 0o644)
	if _, err := Open(dir, "r", nil); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), j) {
		t.Fatalf("corrupt journal: %v", err)
	}
}

// fullDisk fails writes after limit bytes with ENOSPC.
type fullDisk struct {
	*os.File
	left int
}

func (f *fullDisk) Write(b []byte) (int, error) {
	if len(b) > f.left {
		n, _ := f.File.Write(b[:f.left])
		f.left = 0
		return n, &os.PathError{Op: "write", Path: f.Name(), Err: syscall.ENOSPC}
	}
	f.left -= len(b)
	return f.File.Write(b)
}

func TestDiskFull(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(dir, "r", nil)
	writeStep(t, s, 0)
	s.create = func(p string) (writeSyncer, error) {
		f, err := os.Create(p)
		return &fullDisk{File: f, left: 100}, err
	}
	// The write runs in the background: its error comes with the next call
	// that waits for it.
	if err := s.WriteBlock(1, "layer-000", blockState(1, "layer-000")); err != nil {
		t.Fatalf("WriteBlock returned %v before the write ran", err)
	}
	err := s.Flush()
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "step 0 is intact") {
		t.Fatalf("disk full: %v", err)
	}
	if err := s.Commit(1); err == nil || !strings.Contains(err.Error(), "without block") {
		t.Fatalf("commit with a block missing: %v", err)
	}
	for _, b := range blocks[1:] {
		s.create = func(p string) (writeSyncer, error) {
			f, err := os.Create(p)
			return &fullDisk{File: f, left: 1 << 30}, err
		}
		if err := s.WriteBlock(1, b, blockState(1, b)); err != nil {
			t.Fatal(err)
		}
	}
	s.create = func(p string) (writeSyncer, error) {
		f, err := os.Create(p)
		return &fullDisk{File: f, left: 0}, err
	}
	s.written["layer-000"] = true // pretend it was written: the journal write itself must fail cleanly
	if err := s.Commit(1); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("journal on a full disk: %v", err)
	}
	matches, _ := filepath.Glob(filepath.Join(dir, "*", "*.tmp"))
	jt, _ := filepath.Glob(filepath.Join(dir, "*.tmp"))
	if len(matches)+len(jt) != 0 || s.LastStep() != 0 {
		t.Fatalf("left temp files %v %v, last step %d", matches, jt, s.LastStep())
	}
	s2, _ := Open(dir, "r", nil)
	checkStep(t, s2, 0)
}

// TestKillDuringWrites runs a writer subprocess that commits steps in a loop,
// kills it with SIGKILL at random moments, and checks that the store then
// holds exactly the journal's step and that a resumed writer continues.
func TestKillDuringWrites(t *testing.T) {
	if os.Getenv("ELSA_STORE_WRITER") != "" {
		return
	}
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(1, 2))
	kills := 5
	if testing.Short() {
		kills = 2
	}
	last := -1
	for k := 0; k < kills; k++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestStoreWriterProcess$")
		cmd.Env = append(os.Environ(), "ELSA_STORE_WRITER="+dir)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(50+r.IntN(250)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		s, err := Open(dir, "kill-test", nil)
		if err != nil {
			t.Fatalf("after kill %d: %v", k, err)
		}
		if s.LastStep() < last {
			t.Fatalf("journal went back from %d to %d", last, s.LastStep())
		}
		last = s.LastStep()
		if last >= 0 {
			checkStep(t, s, last)
		}
		t.Logf("kill %d: resumed at step %d", k, last)
	}
	if last < 0 {
		t.Fatal("the writer never committed a step")
	}
}

// TestStoreWriterProcess is the subprocess of TestKillDuringWrites.
func TestStoreWriterProcess(t *testing.T) {
	dir := os.Getenv("ELSA_STORE_WRITER")
	if dir == "" {
		t.Skip("helper process")
	}
	s, err := Open(dir, "kill-test", nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
	for step := s.LastStep() + 1; ; step++ {
		writeStep(t, s, step)
		os.Stdout.WriteString(strconv.Itoa(step) + "\n")
	}
}

// TestSpill: what is put is got back, replaced by a later put; a missing
// name and a path-like name are errors.
func TestSpill(t *testing.T) {
	s, err := NewSpill(filepath.Join(t.TempDir(), "g"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put("a.w", []byte("first")); err != nil {
		t.Fatal(err)
	}
	if err := s.Put("a.w", []byte("2nd")); err != nil {
		t.Fatal(err)
	}
	b, err := s.Get("a.w", make([]byte, 0, 1))
	if err != nil || string(b) != "2nd" {
		t.Fatalf("got %q, %v", b, err)
	}
	if _, err := s.Get("missing", nil); err == nil {
		t.Fatal("missing name read")
	}
	if err := s.Put("../x", nil); err == nil {
		t.Fatal("path-like name accepted")
	}
}
