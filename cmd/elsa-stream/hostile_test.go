package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/elsa-stream/elsa-stream/internal/fsguard"
	"github.com/elsa-stream/elsa-stream/shard"
)

// The tests of this file reproduce what a hostile user did to the command
// (the hostile-input review): each failed, panicked, hung or lost data before
// the fixes.

const calibText = "../../testdata/tinystories-train/tinystories_train_more.txt"

// importModel imports stories260K into a fresh folder.
func importModel(t *testing.T) string {
	t.Helper()
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	in := filepath.Join(t.TempDir(), "in")
	if code, _, e := runCLI(t, "import", "llama2c", "--model", "../../testdata/stories260K/stories260K.bin",
		"--tokenizer", "../../testdata/stories260K/tok512.bin", "--out", in); code != 0 {
		t.Fatal(e)
	}
	return in
}

// treeDigest hashes every file below dir (names and bytes).
func treeDigest(t *testing.T, dir string) string {
	t.Helper()
	h := sha256.New()
	var names []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			names = append(names, p)
		}
		return nil
	})
	sort.Strings(names)
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			t.Fatal(err)
		}
		h.Write([]byte(n))
		h.Write(b)
	}
	return string(h.Sum(nil))
}

func TestOutputNeverOverlapsInputs(t *testing.T) {
	in := importModel(t)
	parent := filepath.Dir(in)
	bystander := filepath.Join(parent, "notes.txt")
	os.WriteFile(bystander, []byte("keep me"), 0o644)
	before := treeDigest(t, parent)
	cases := [][]string{
		{"--out", in, "--force"},                       // the model itself
		{"--out", parent, "--force"},                   // a parent of the model
		{"--out", filepath.Join(in, "sub"), "--force"}, // inside the model
		{"--out", filepath.Join(parent, "o"), "--work", filepath.Join(parent, "o", "w"), "--force"}, // work inside out
		{"--out", filepath.Join(parent, "o"), "--work", in},                                         // work = model
		{"--out", filepath.Join(parent, "o"), "--calib", filepath.Join(parent, "o", "c.txt"), "--calib-format", "text"},
	}
	for _, c := range cases {
		args := append([]string{"--model", in, "--method", "magnitude"}, c...)
		code, _, stderr := runCLI(t, args...)
		if code != 2 || !strings.Contains(stderr, "overlap") && !strings.Contains(stderr, "lies inside") {
			t.Errorf("%v: exit %d, %s", c, code, stderr)
		}
	}
	if treeDigest(t, parent) != before {
		t.Fatal("a refused run changed the files beside or inside the model")
	}
}

func TestLockedWorkAndOutput(t *testing.T) {
	in := importModel(t)
	dir := t.TempDir()
	out, work := filepath.Join(dir, "out"), filepath.Join(dir, "work")
	os.MkdirAll(work, 0o755)
	l, err := fsguard.Acquire(filepath.Join(work, ".lock"), "the work folder", false)
	if err != nil {
		t.Fatal(err)
	}
	code, _, stderr := runCLI(t, "--model", in, "--method", "magnitude", "--out", out, "--work", work)
	l.Release()
	if code != 1 || !strings.Contains(stderr, "in use by another run") || !strings.Contains(stderr, "pid ") {
		t.Fatalf("work folder held by another run: exit %d, %s", code, stderr)
	}
	l, err = fsguard.Acquire(filepath.Join(dir, ".out.lock"), "the output", true)
	if err != nil {
		t.Fatal(err)
	}
	code, _, stderr = runCLI(t, "--model", in, "--method", "magnitude", "--out", out, "--work", work)
	l.Release()
	if code != 1 || !strings.Contains(stderr, "in use by another run") {
		t.Fatalf("output held by another run: exit %d, %s", code, stderr)
	}
	if _, err := os.Stat(out); err == nil {
		t.Fatal("a refused run wrote the output")
	}
	// Unlocked, the run succeeds and removes its lock file beside the output.
	if code, _, stderr := runCLI(t, "--model", in, "--method", "magnitude", "--out", out, "--work", work); code != 0 {
		t.Fatal(stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, ".out.lock")); err == nil {
		t.Fatal("lock file left beside the output")
	}
}

func TestStaleTempsRemoved(t *testing.T) {
	in := importModel(t)
	dir := t.TempDir()
	out, work := filepath.Join(dir, "out"), filepath.Join(dir, "out.work")
	stale := []string{filepath.Join(dir, ".out.tmp-123"), filepath.Join(dir, ".out.tmp-9.old"), filepath.Join(work, "checkpoints-7")}
	for _, p := range stale {
		os.MkdirAll(p, 0o755)
	}
	keep := filepath.Join(dir, ".other.tmp-1")
	os.MkdirAll(keep, 0o755)
	code, _, stderr := runCLI(t, "--model", in, "--method", "magnitude", "--out", out)
	if code != 0 {
		t.Fatal(stderr)
	}
	for _, p := range stale {
		if _, err := os.Stat(p); err == nil || !strings.Contains(stderr, p) {
			t.Errorf("%s: not removed or not reported: %s", p, stderr)
		}
	}
	if _, err := os.Stat(keep); err != nil {
		t.Fatal("removed a temporary folder of another target")
	}
}

// writeTokens writes ids as 2-byte little-endian tokens.
func writeTokens(t *testing.T, ids []int) string {
	t.Helper()
	b := make([]byte, 2*len(ids))
	for i, id := range ids {
		binary.LittleEndian.PutUint16(b[2*i:], uint16(id))
	}
	p := filepath.Join(t.TempDir(), "ids.bin")
	os.WriteFile(p, b, 0o644)
	return p
}

func TestTokenIDsOutsideVocabulary(t *testing.T) {
	in := importModel(t)
	ids := make([]int, 4000)
	for i := range ids {
		ids[i] = i % 500
	}
	ids[3000] = 600 // stories260K has 512 ids
	bad := writeTokens(t, ids)
	dir := t.TempDir()
	for _, args := range [][]string{
		{"--method", "wanda", "--calib", bad, "--calib-format", "tokens", "--nsamples", "8", "--seqlen", "500"},
		{"--method", "magnitude", "--eval", bad, "--eval-format", "tokens"},
	} {
		out := filepath.Join(dir, "out")
		code, _, stderr := runCLI(t, append([]string{"--model", in, "--out", out}, args...)...)
		if code != 1 || !strings.Contains(stderr, "token 600 at position 3000 is outside the model's vocabulary") {
			t.Errorf("%v: exit %d, %s", args, code, stderr)
		}
		if _, err := os.Stat(out); err == nil {
			t.Errorf("%v: output written although the data is invalid", args)
		}
		if left, _ := filepath.Glob(filepath.Join(dir, ".out.tmp-*")); len(left) > 0 {
			t.Errorf("%v: temporary folder left: %v", args, left)
		}
	}
}

// poison sets element i of tensor name in the model folder dir to v
// (the imported model is float32).
func poison(t *testing.T, dir, name string, i int, v float32) {
	t.Helper()
	m, err := shard.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	tt, _ := m.Tensor(name)
	off := tt.File.Header.DataStart + tt.Begin + int64(4*i)
	path := tt.File.Path
	m.Close()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], math.Float32bits(v))
	if _, err := f.WriteAt(b[:], off); err != nil {
		t.Fatal(err)
	}
}

func TestNonFiniteWeightsRefused(t *testing.T) {
	in := importModel(t)
	poison(t, in, "model.layers.1.self_attn.k_proj.weight", 17, float32(math.NaN()))
	for _, m := range []string{"magnitude", "wanda", "sparsegpt"} {
		out := filepath.Join(t.TempDir(), "out")
		code, _, stderr := runCLI(t, "--model", in, "--method", m, "--out", out, "--calib", calibText, "--calib-format", "text", "--nsamples", "4", "--seqlen", "64")
		if code != 1 || !strings.Contains(stderr, `"model.layers.1.self_attn.k_proj.weight": element 17 (of 2048) is NaN`) {
			t.Errorf("%s: exit %d, %s", m, code, stderr)
		}
		if _, err := os.Stat(out); err == nil {
			t.Errorf("%s wrote an output from a model with NaN weights", m)
		}
	}
	code, _, stderr := runCLI(t, "eval", "--model", in, "--max-stories", "5")
	if code != 1 || !strings.Contains(stderr, "is NaN") {
		t.Errorf("eval: exit %d, %s", code, stderr)
	}
}

func TestNumericFlagsChecked(t *testing.T) {
	for _, args := range [][]string{
		{"--sparsity", "NaN"}, {"--sparsity", "-0.5"}, {"--sparsity", "Inf"}, {"--clip", "NaN"}, {"--lr", "Inf"},
		{"--lr", "0"}, {"--lambda", "NaN"}, {"--lambda-final", "-1"}, {"--owl-lambda", "NaN", "--allocation", "owl"}, {"--owl-m", "-1", "--allocation", "owl"}, {"--owl-m", "2"},
		{"--mem-budget", "1000T"}, {"--max-shard-size", "0"}, {"--steps", "0"}, {"--micro-batch", "-1"},
	} {
		code, _, stderr := runCLI(t, append(args, "--out", filepath.Join(t.TempDir(), "o"))...)
		if code != 2 || !strings.Contains(stderr, strings.TrimPrefix(args[0], "--")) || strings.Contains(stderr, "<nil>") {
			t.Errorf("%v: exit %d, %s", args, code, stderr)
		}
	}
	alloc := filepath.Join(t.TempDir(), "alloc.txt")
	os.WriteFile(alloc, []byte("model.layers.0: NaN\n"), 0o644)
	if code, _, stderr := runCLI(t, "--method", "magnitude", "--allocation", alloc, "--out", filepath.Join(t.TempDir(), "o")); code == 0 || !strings.Contains(stderr, "0 <= sparsity < 1") {
		t.Errorf("NaN in an allocation file: exit %d, %s", code, stderr)
	}
}

func TestElsaDivergenceStops(t *testing.T) {
	in := importModel(t)
	dir := t.TempDir()
	out, work := filepath.Join(dir, "out"), filepath.Join(dir, "work")
	code, _, stderr := runCLI(t, "--model", in, "--out", out, "--work", work, "--calib", calibText, "--calib-format", "text",
		"--method", "elsa", "--lr", "1e30", "--steps", "4", "--batch", "1", "--seqlen", "32")
	if code != 1 || !strings.Contains(stderr, "training diverged") || !strings.Contains(stderr, "after the update of step 0") {
		t.Fatalf("exit %d, %s", code, stderr)
	}
	if _, err := os.Stat(out); err == nil {
		t.Fatal("a diverged run wrote a model")
	}
	f, err := os.Open(filepath.Join(work, "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var last map[string]any
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		last = nil
		if err := json.Unmarshal(sc.Bytes(), &last); err != nil {
			t.Fatalf("metrics line %q: %v", sc.Text(), err)
		}
	}
	if last == nil || last["step"] != 1.0 || last["error"] == nil {
		t.Fatalf("the diverged step's metrics line is missing: %v", last)
	}
}

func TestNMMustDivideColumns(t *testing.T) {
	in := importModel(t)
	for _, p := range []string{"1:1000", "2:5", "4:8"} { // stories260K: 64 and 172 columns
		code, _, stderr := runCLI(t, "--model", in, "--method", "magnitude", "--pattern", p, "--out", filepath.Join(t.TempDir(), "o"))
		if code != 2 || !strings.Contains(stderr, "not a multiple of") {
			t.Errorf("%s: exit %d, %s", p, code, stderr)
		}
	}
}

// TestFIFOsRefused: a FIFO where a regular file is expected blocked the
// process forever; now it is refused at once.
func TestFIFOsRefused(t *testing.T) {
	in := importModel(t)
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Skip("mkfifo:", err)
	}
	fake := filepath.Join(dir, "model")
	os.MkdirAll(fake, 0o755)
	cfg, _ := os.ReadFile(filepath.Join(in, shard.ConfigFile))
	os.WriteFile(filepath.Join(fake, shard.ConfigFile), cfg, 0o644)
	syscall.Mkfifo(filepath.Join(fake, shard.SingleFile), 0o644)
	for _, args := range [][]string{
		{"--model", in, "--method", "wanda", "--calib", fifo, "--calib-format", "text"},
		{"--model", fake, "--method", "magnitude"},
		{"eval", "--model", in, "--data", fifo},
	} {
		done := make(chan string, 1)
		go func() {
			a := args
			if a[0] != "eval" {
				a = append(a, "--out", filepath.Join(t.TempDir(), "o"))
			}
			code, _, stderr := runCLI(t, a...)
			if code != 1 || !strings.Contains(stderr, "FIFO") {
				stderr = "unexpected: " + stderr
			}
			done <- stderr
		}()
		select {
		case msg := <-done:
			if strings.HasPrefix(msg, "unexpected") {
				t.Errorf("%v: %s", args, msg)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("%v: still blocked on the FIFO after 20 s", args)
		}
	}
}

func TestSeqLenWithinContext(t *testing.T) {
	in := importModel(t)
	if code, _, stderr := runCLI(t, "eval", "--model", in, "--seqlen", "1024"); code != 2 || !strings.Contains(stderr, "context") {
		t.Errorf("eval: exit %d, %s", code, stderr)
	}
	if code, _, stderr := runCLI(t, "--model", in, "--method", "wanda", "--seqlen", "1024", "--calib", calibText, "--out", filepath.Join(t.TempDir(), "o")); code != 2 || !strings.Contains(stderr, "context") {
		t.Errorf("prune: exit %d, %s", code, stderr)
	}
	// A sliding window shorter than the context is honoured (it used to be
	// ignored): stories260K, trained with global attention, gets worse
	// when each query sees only the last 16 keys.
	ppl := func() float64 {
		code, out, stderr := runCLI(t, "eval", "--model", in, "--max-stories", "3", "--json")
		var r struct{ PPL float64 }
		if code != 0 || json.Unmarshal([]byte(out), &r) != nil {
			t.Fatalf("eval: exit %d, %s", code, stderr)
		}
		return r.PPL
	}
	global := ppl()
	cfgPath := filepath.Join(in, shard.ConfigFile)
	var cfg map[string]any
	b, _ := os.ReadFile(cfgPath)
	json.Unmarshal(b, &cfg)
	cfg["sliding_window"] = 16
	b, _ = json.Marshal(cfg)
	os.WriteFile(cfgPath, b, 0o644)
	if local := ppl(); !(local > global*1.05) {
		t.Errorf("a 16-token sliding window must change the perplexity: %v vs global %v", local, global)
	}
}

func TestHostileConfigs(t *testing.T) {
	in := importModel(t)
	cfgPath := filepath.Join(in, shard.ConfigFile)
	orig, _ := os.ReadFile(cfgPath)
	edit := func(k string, v any) {
		var cfg map[string]any
		json.Unmarshal(orig, &cfg)
		cfg[k] = v
		b, _ := json.Marshal(cfg)
		os.WriteFile(cfgPath, b, 0o644)
	}
	edit("num_hidden_layers", 1e9)
	if code, _, stderr := runCLI(t, "eval", "--model", in, "--mem-budget", "2G"); code != 1 || !strings.Contains(stderr, "num_hidden_layers") {
		t.Errorf("a billion layers: exit %d, %s", code, stderr)
	}
	edit("num_hidden_layers", 6)
	if code, _, stderr := runCLI(t, "eval", "--model", in); code != 1 || !strings.Contains(stderr, "holds tensors of 5 layers") {
		t.Errorf("6 layers configured, 5 stored: exit %d, %s", code, stderr)
	}
	edit("intermediate_size", math.Pow(2, 62))
	if code, _, stderr := runCLI(t, "plan", "--config", cfgPath, "--mem-budget", "32G"); code != 1 || !strings.Contains(stderr, "intermediate_size") {
		t.Errorf("plan with intermediate_size 2^62: exit %d, %s", code, stderr)
	}
	os.WriteFile(cfgPath, append(append([]byte{}, orig...), []byte(`{"hidden_size": 1}`)...), 0o644)
	if code, _, stderr := runCLI(t, "eval", "--model", in); code != 1 || !strings.Contains(stderr, "data after the JSON object") {
		t.Errorf("trailing data in config.json: exit %d, %s", code, stderr)
	}
}

// TestMicroBatchThroughBudget: a user micro-batch the budget cannot hold
// peaked at 5x the plan's memory; it is refused naming the largest that fits.
func TestMicroBatchThroughBudget(t *testing.T) {
	in := importModel(t)
	code, _, stderr := runCLI(t, "--model", in, "--method", "wanda", "--calib", calibText, "--calib-format", "text",
		"--nsamples", "128", "--seqlen", "512", "--micro-batch", "128", "--mem-budget", "150M", "--out", filepath.Join(t.TempDir(), "o"))
	if code != 2 || !strings.Contains(stderr, "micro-batch 128 does not fit") || !strings.Contains(stderr, "largest that fits is") {
		t.Fatalf("exit %d, %s", code, stderr)
	}
}

// TestDataThroughBudget: a 100 MB token file as --calib under 150M peaked
// at 510.8 MiB. A plain token file is now mapped and read a window at a
// time, so it prunes under 150M; the text a data file becomes is reserved
// in the ledger first, and a text file the budget cannot hold is refused
// naming its size.
func TestDataThroughBudget(t *testing.T) {
	in := importModel(t)
	big := filepath.Join(t.TempDir(), "big.bin")
	f, _ := os.Create(big)
	f.Truncate(100 << 20) // id 0 everywhere, sparse on disk
	f.Close()
	code, _, stderr := runCLI(t, "--model", in, "--method", "wanda", "--calib", big, "--calib-format", "tokens", "--mem-budget", "150M", "--out", filepath.Join(t.TempDir(), "o"))
	if code != 0 {
		t.Errorf("a mapped 100 MB token file under 150M: exit %d, %s", code, stderr)
	}
	text := filepath.Join(t.TempDir(), "big.txt")
	f, _ = os.Create(text)
	f.Truncate(100 << 20)
	f.Close()
	for _, args := range [][]string{
		{"--model", in, "--method", "wanda", "--calib", text, "--mem-budget", "150M", "--out", filepath.Join(t.TempDir(), "o")},
		{"eval", "--model", in, "--data", text, "--format", "text", "--mem-budget", "150M"},
	} {
		code, _, stderr := runCLI(t, args...)
		if code != 1 || !strings.Contains(stderr, "100.0 MiB of data needs about") {
			t.Errorf("%v: exit %d, %s", args[:2], code, stderr)
		}
	}
}
