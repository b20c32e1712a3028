package shard

import (
	"encoding/binary"
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/elsa-stream/elsa-stream/internal/budget"
)

// nonFiniteReference decodes every value and asks math: the independent
// definition NonFinite's lane test must match.
func nonFiniteReference(b []byte, d DType) int {
	n := len(b) / int(d.Size())
	dst := make([]float32, n)
	if DecodeFloat32(dst, b[:n*int(d.Size())], d, nil) != nil {
		return -1
	}
	for i, v := range dst {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return i
		}
	}
	return -1
}

func TestNonFinite(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, d := range []DType{F32, BF16, F16, F8_E5M2, F8_E4M3} {
		for trial := 0; trial < 300; trial++ {
			n := 1 + r.IntN(40)
			b := make([]byte, n*int(d.Size()))
			for i := range b {
				b[i] = byte(r.Uint32())
			}
			// Mostly finite: clear the top exponent bit of every value, then
			// sometimes plant one NaN or infinity.
			sz := int(d.Size())
			for i := 0; i < n; i++ {
				b[i*sz+sz-1] &^= 0x40
			}
			if trial%3 != 0 {
				k := r.IntN(n)
				switch d {
				case F32:
					binary.LittleEndian.PutUint32(b[4*k:], math.Float32bits(float32(math.Inf(1-2*r.IntN(2)))))
				case BF16:
					binary.LittleEndian.PutUint16(b[2*k:], 0x7fc1)
				case F16:
					binary.LittleEndian.PutUint16(b[2*k:], 0xfc00)
				case F8_E5M2:
					b[k] = 0x7d
				case F8_E4M3:
					b[k] = 0xff
				}
			}
			if got, want := NonFinite(b, d), nonFiniteReference(b, d); got != want {
				t.Fatalf("%s %x: NonFinite %d, reference %d", d, b, got, want)
			}
		}
	}
	if NonFinite([]byte{0xff, 0xff, 0xff, 0xff}, I32) != -1 {
		t.Fatal("an integer tensor has no non-finite values")
	}
}

func FuzzNonFinite(f *testing.F) {
	f.Add([]byte{0, 0, 0x80, 0x7f, 1, 2, 3, 4, 5, 6})
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, d := range []DType{F32, BF16, F16, F8_E5M2, F8_E4M3} {
			n := len(b) / int(d.Size()) * int(d.Size())
			if got, want := NonFinite(b[:n], d), nonFiniteReference(b[:n], d); got != want {
				t.Fatalf("%s %x: NonFinite %d, reference %d", d, b[:n], got, want)
			}
		}
	})
}

func TestWriterRefusesNonFinite(t *testing.T) {
	target := filepath.Join(t.TempDir(), "out")
	w, err := NewWriter(target, []Spec{{"w", BF16, []int64{4}}}, WriterOptions{FiniteOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteTensor("w", []byte{0, 0x3f, 0x80, 0x7f, 0, 0, 0, 0}); err == nil || !strings.Contains(err.Error(), "element 1 is +Inf") {
		t.Fatalf("wrote +Inf: %v", err)
	}
	if _, err := os.Stat(target); err == nil {
		t.Fatal("target created")
	}
}

// TestCommitNeverReplacesAnAppearedTarget: without Force, a target that
// appeared while the writer ran (another run, the user) is left alone -
// even an empty folder, which a plain rename would silently replace.
func TestCommitNeverReplacesAnAppearedTarget(t *testing.T) {
	for _, force := range []bool{false, true} {
		target := filepath.Join(t.TempDir(), "out")
		w, err := NewWriter(target, []Spec{{"w", F32, []int64{1}}}, WriterOptions{Force: force})
		if err != nil {
			t.Fatal(err)
		}
		w.WriteTensor("w", make([]byte, 4))
		os.Mkdir(target, 0o755) // appears during the run
		err = w.Commit()
		_, statErr := os.Stat(filepath.Join(target, SingleFile))
		if force && (err != nil || statErr != nil) {
			t.Fatalf("Force: %v, %v", err, statErr)
		}
		if !force && (err == nil || !strings.Contains(err.Error(), "appeared during the run") || statErr == nil) {
			t.Fatalf("replaced a target that appeared: %v", err)
		}
		if left, _ := filepath.Glob(filepath.Join(filepath.Dir(target), ".out.tmp-*")); len(left) > 0 {
			t.Fatalf("temporary folder left: %v", left)
		}
	}
}

func TestRemoveStaleTemps(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "out")
	for _, n := range []string{".out.tmp-1", ".out.tmp-2.old", ".outer.tmp-3", "out"} {
		os.Mkdir(filepath.Join(dir, n), 0o755)
	}
	removed, err := RemoveStaleTemps(target)
	if err != nil || len(removed) != 2 {
		t.Fatalf("removed %v, %v", removed, err)
	}
	for _, n := range []string{".outer.tmp-3", "out"} {
		if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
			t.Fatalf("%s removed", n)
		}
	}
}

// TestShrunkFileIsAnError: a mapped file truncated during a run used to
// crash the process with SIGBUS ("fatal error: fault"); now the read
// returns an error naming the tensor, whether the fstat check sees the
// truncation first or the fault happens during the copy.
func TestShrunkFileIsAnError(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "m")
	specs := []Spec{{"a", F32, []int64{4096}}, {"b", F32, []int64{4096}}}
	writeModel(t, dir, specs, 0, map[string][]byte{"a": make([]byte, 4*4096), "b": make([]byte, 4*4096)})
	path := filepath.Join(dir, SingleFile)
	f, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, _ := f.Tensor("b")
	if err := os.Truncate(path, 4096); err != nil {
		t.Fatal(err)
	}
	dst := make([]float32, 4096)
	if err := b.ReadFloat32(dst); err == nil || !strings.Contains(err.Error(), `tensor "b": the file shrank`) {
		t.Fatalf("fstat check: %v", err)
	}
	// The fault itself, as when the file shrinks between the check and the
	// copy: call the guarded copy past the check.
	raw := make([]byte, b.NumBytes())
	err = b.guardFault(func() { copy(raw, b.Bytes()) })
	if err == nil || !strings.Contains(err.Error(), "memory fault") {
		t.Fatalf("fault: %v", err)
	}
	if err := b.ReadBytes(raw); err == nil {
		t.Fatal("ReadBytes of a shrunk file succeeded")
	}
}

// TestFIFORefused: opening a FIFO blocks until a writer appears; the model
// files, index and config are refused instead.
func TestFIFORefused(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{SingleFile, ConfigFile} {
		if err := syscall.Mkfifo(filepath.Join(dir, name), 0o644); err != nil {
			t.Skip("mkfifo:", err)
		}
	}
	done := make(chan error, 2)
	go func() { _, err := OpenFile(filepath.Join(dir, SingleFile)); done <- err }()
	go func() { _, err := ReadConfig(filepath.Join(dir, ConfigFile)); done <- err }()
	for i := 0; i < 2; i++ {
		select {
		case err := <-done:
			if !strings.Contains(fmt_(err), "FIFO") {
				t.Fatalf("FIFO: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("blocked on a FIFO")
		}
	}
}

func fmt_(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func TestHostileConfigValues(t *testing.T) {
	base := `"architectures":["LlamaForCausalLM"],"hidden_size":8,"intermediate_size":16,"num_attention_heads":2,"vocab_size":32`
	for _, c := range []struct{ json, want string }{
		{`{` + base + `,"num_hidden_layers":1000000000}`, "num_hidden_layers is 1000000000, beyond"},
		{`{` + base + `,"num_hidden_layers":1,"intermediate_size":4611686018427387904}`, "intermediate_size"},
		{`{` + base + `,"num_hidden_layers":4000,"hidden_size":1048576,"num_attention_heads":1024}`, "parameters, beyond"},
		{`{` + base + `,"num_hidden_layers":1} {"x":1}`, "data after the JSON object"},
		{`{` + base + `,"num_hidden_layers":1}garbage`, "not a valid config.json"},
	} {
		_, err := ParseConfig("c.json", []byte(c.json))
		if err == nil || !strings.Contains(err.Error(), c.want) || !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want %q", c.json, err, c.want)
		}
	}
	win := func(s string) int {
		c, err := ParseConfig("c.json", []byte(`{`+base+`,"num_hidden_layers":1,"max_position_embeddings":512`+s+`}`))
		if err != nil {
			t.Fatal(err)
		}
		return c.Window()
	}
	if win(``) != 0 || win(`,"sliding_window":null`) != 0 || win(`,"sliding_window":128`) != 128 ||
		win(`,"sliding_window":128,"use_sliding_window":false`) != 0 || win(`,"sliding_window":4096`) != 0 {
		t.Fatal("sliding window")
	}
}

// TestLargeHeaderThroughLedger: parsing a header costs memory the budget
// must hold; a 95 MB header used to peak at 409 MiB under a 150M budget.
func TestLargeHeaderThroughLedger(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "m")
	w, err := NewWriter(dir, []Spec{{"w", F32, []int64{2}}}, WriterOptions{Metadata: map[string]string{"pad": strings.Repeat("x", 5<<20)}})
	if err != nil {
		t.Fatal(err)
	}
	w.WriteTensor("w", make([]byte, 8))
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	_, err = OpenTensorsWith(dir, Options{Ledger: budget.New(8 << 20)})
	if !errors.Is(err, budget.ErrOverBudget) || !strings.Contains(err.Error(), "header") {
		t.Fatalf("a 5 MiB header under an 8 MiB budget: %v", err)
	}
	l := budget.New(64 << 20)
	m, err := OpenTensorsWith(dir, Options{Ledger: l})
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	if l.Used() != 0 || l.Peak() < HeaderParseBytes(5<<20) {
		t.Fatalf("the parse must be held while parsing and released after: used %d, peak %d", l.Used(), l.Peak())
	}
}
