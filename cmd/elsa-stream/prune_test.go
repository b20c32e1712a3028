package main

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/elsa-stream/elsa-stream/admm"
	"github.com/elsa-stream/elsa-stream/shard"
	"github.com/elsa-stream/elsa-stream/stream"
)

// checkPruned reads an output folder back: every pruned tensor has exactly
// the requested zeros (per tensor, or per N:M group), every other tensor is
// bit-identical to the input (unless trainedDense: Elsa trains embeddings
// and norms), the folder carries config, tokenizer and sparsity.json and no
// sparsity_config, and eval loads it.
func checkPruned(t *testing.T, in, out string, s float64, p admm.Pattern, trainedDense bool) {
	t.Helper()
	src, err := shard.Open(in)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := shard.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if len(dst.Names) != len(src.Names) {
		t.Fatalf("%d tensors out, %d in", len(dst.Names), len(src.Names))
	}
	for _, name := range src.Names {
		a, _ := src.Tensor(name)
		b, ok := dst.Tensor(name)
		if !ok || a.DType != b.DType || len(a.Shape) != len(b.Shape) {
			t.Fatalf("%s: missing or changed", name)
		}
		linear := strings.Contains(name, "_proj.weight")
		if !linear {
			if string(a.Bytes()) != string(b.Bytes()) && !trainedDense {
				t.Fatalf("%s: not bit-identical to the input", name)
			}
			continue
		}
		w := make([]float32, b.NumElements())
		b.ReadFloat32(w)
		rows, cols := int(b.Shape[0]), int(b.Shape[1])
		if p.IsNM() {
			for r := 0; r < rows; r++ {
				for g := 0; g+p.M <= cols; g += p.M {
					z := 0
					for _, v := range w[r*cols+g : r*cols+g+p.M] {
						if v == 0 {
							z++
						}
					}
					if z != p.M-p.N {
						t.Fatalf("%s row %d group %d: %d zeros, want %d", name, r, g, z, p.M-p.N)
					}
				}
			}
			continue
		}
		z := 0
		for _, v := range w {
			if v == 0 {
				z++
			}
		}
		if want := admm.PruneCount(len(w), s); z != want {
			t.Fatalf("%s: %d zeros, want exactly %d", name, z, want)
		}
	}
	cfg, _ := os.ReadFile(filepath.Join(out, shard.ConfigFile))
	orig, _ := os.ReadFile(filepath.Join(in, shard.ConfigFile))
	if string(cfg) != string(orig) || strings.Contains(string(cfg), "sparsity_config") {
		t.Fatal("config.json must be copied verbatim, without sparsity_config")
	}
	for _, f := range []string{"sparsity.json", "tokenizer.json", "tokenizer.model"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Fatalf("%s missing: %v", f, err)
		}
	}
	if _, err := stream.Open(out); err != nil {
		t.Fatalf("eval cannot load the output: %v", err)
	}
}

func TestPruneOutputs(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	in := filepath.Join(t.TempDir(), "in")
	if code, _, e := runCLI(t, "import", "llama2c", "--model", "../../testdata/stories260K/stories260K.bin",
		"--tokenizer", "../../testdata/stories260K/tok512.bin", "--out", in); code != 0 {
		t.Fatal(e)
	}
	cases := []struct {
		args []string
		s    float64
		p    admm.Pattern
	}{
		{[]string{"--method", "magnitude", "--sparsity", "0.9"}, 0.9, admm.Unstructured},
		{[]string{"--method", "wanda", "--sparsity", "0.7", "--nsamples", "4", "--seqlen", "64"}, 0.7, admm.Unstructured},
		{[]string{"--method", "sparsegpt", "--pattern", "2:4", "--nsamples", "4", "--seqlen", "64"}, 0.5, admm.Pattern{N: 2, M: 4}},
		{[]string{"--method", "elsa-l", "--sparsity", "0.8", "--steps", "3", "--batch", "2", "--seqlen", "64", "--streamed",
			"--init", "wanda", "--nsamples", "4"}, 0.8, admm.Unstructured},
		{[]string{"--method", "elsa", "--pattern", "2:4", "--steps", "2", "--batch", "1", "--seqlen", "32", "--train-dense=false"}, 0.5, admm.Pattern{N: 2, M: 4}},
	}
	for _, c := range cases {
		out := filepath.Join(t.TempDir(), "out")
		args := append([]string{"--model", in, "--out", out, "--calib", "../../testdata/tinystories-train/tinystories_train_more.txt",
			"--calib-format", "text", "--json"}, c.args...)
		code, stdout, stderr := runCLI(t, args...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", c.args, code, stderr)
		}
		var res map[string]any
		if err := json.Unmarshal([]byte(stdout), &res); err != nil {
			t.Fatalf("%v: --json output: %v", c.args, err)
		}
		checkPruned(t, in, out, c.s, c.p, slices.Contains(c.args, "elsa-l"))
		// A second run without --force refuses to overwrite.
		if code, _, stderr := runCLI(t, args...); code != 1 || !strings.Contains(stderr, "already exists") {
			t.Fatalf("overwrite: exit %d %s", code, stderr)
		}
	}
	// SparseGPT output is stored rounded to the input dtype and still exact zeros: checked above.
}

func TestPruneRefusals(t *testing.T) {
	f := "../../testdata/tinystories-valid-1000/tinystories_valid_first1000.txt"
	if code, _, stderr := runCLI(t, "--calib", f, "--eval", f); code != 2 || !strings.Contains(stderr, "are the same") {
		t.Fatalf("same calibration and evaluation file: exit %d %s", code, stderr)
	}
	for _, args := range [][]string{{"--method", "obs"}, {"--sparsity", "1"}, {"--pattern", "3:2"}, {"--mem-budget", "x"}} {
		if code, _, _ := runCLI(t, args...); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
	for _, args := range [][]string{{"--method", "elsa", "--projection", "random"}, {"--method", "elsa", "--init", "obs"},
		{"--method", "elsa-l", "--state", "m=fp4"}, {"--method", "elsa", "--state", "m=dyn8"}, {"--method", "sparsegpt", "--resume"}} {
		if code, _, stderr := runCLI(t, append(args, "--steps", "1")...); code != 2 {
			t.Errorf("%v: exit %d, want 2: %s", args, code, stderr)
		}
	}
}

// TestPruneOWL: OWL gives layers different sparsities whose mean is the
// target, and each tensor gets exactly its layer's count.
func TestPruneOWL(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	out := filepath.Join(t.TempDir(), "out")
	code, _, stderr := runCLI(t, "--method", "wanda", "--sparsity", "0.7", "--allocation", "owl", "--nsamples", "8", "--seqlen", "128", "--out", out, "--json")
	if code != 0 {
		t.Fatal(stderr)
	}
	b, _ := os.ReadFile(filepath.Join(out, "sparsity.json"))
	var sj struct {
		Tensors []admm.TensorStats `json:"tensors"`
	}
	if err := json.Unmarshal(b, &sj); err != nil {
		t.Fatal(err)
	}
	layers := map[float64]bool{}
	var sum float64
	var n int
	for _, ts := range sj.Tensors {
		if ts.Target == 0 {
			continue
		}
		layers[ts.Target] = true
		if want := int64(admm.PruneCount(int(ts.Params), ts.Target)); ts.Zeros != want {
			t.Fatalf("%s: %d zeros, want %d", ts.Name, ts.Zeros, want)
		}
		if strings.HasSuffix(ts.Name, "q_proj.weight") {
			sum += ts.Target
			n++
		}
	}
	if len(layers) < 2 || math.Abs(sum/float64(n)-0.7) > 1e-9 {
		t.Fatalf("OWL sparsities %v, mean %g", layers, sum/float64(n))
	}
}

// TestPruneNewArchitectures prunes random Qwen3 (per-head q/k norms,
// head_dim ≠ hidden/heads), Gemma-2 (sandwich (1 + w) norms, GeGLU,
// soft-capping, sliding windows, tied embeddings) and Gemma-3 (q/k norms,
// local/global RoPE bases) checkpoints end to end with
// every method: exact zero counts per pruned tensor, every norm left dense,
// and the output loads for eval.
func TestPruneNewArchitectures(t *testing.T) {
	for _, m := range []struct {
		dir           string
		vocab, layers int
	}{{"../../testdata/golden/qwen3-tiny", 96, 2}, {"../../testdata/golden/gemma2-tiny", 80, 3}, {"../../testdata/golden/gemma3-tiny", 80, 3}} {
		ids := make([]int, 3000)
		for i := range ids {
			ids[i] = (i*7 + i/13) % m.vocab
		}
		calib := writeTokens(t, ids)
		for _, args := range [][]string{
			{"--method", "magnitude"}, {"--method", "wanda"}, {"--method", "sparsegpt", "--pattern", "2:4"},
			{"--method", "elsa", "--steps", "3", "--batch", "2"}, {"--method", "elsa-l", "--steps", "3", "--batch", "2", "--streamed"},
		} {
			out := filepath.Join(t.TempDir(), "out")
			code, _, stderr := runCLI(t, append([]string{"--model", m.dir, "--out", out, "--calib", calib,
				"--calib-format", "tokens", "--nsamples", "4", "--seqlen", "32", "--sparsity", "0.7"}, args...)...)
			if code != 0 {
				t.Fatalf("%s %v: exit %d: %s", m.dir, args, code, stderr)
			}
			b, _ := os.ReadFile(filepath.Join(out, "sparsity.json"))
			var sj struct {
				Tensors []admm.TensorStats `json:"tensors"`
			}
			if err := json.Unmarshal(b, &sj); err != nil {
				t.Fatal(err)
			}
			pruned := 0
			for _, ts := range sj.Tensors {
				if ts.Target > 0 {
					pruned++
					want := int64(admm.PruneCount(int(ts.Params), ts.Target))
					if slices.Contains(args, "2:4") {
						want = ts.Params / 2
					}
					if strings.Contains(ts.Name, "norm") || ts.Zeros != want {
						t.Fatalf("%s %v %s: %d zeros, want %d", m.dir, args, ts.Name, ts.Zeros, want)
					}
				}
			}
			if pruned != 7*m.layers {
				t.Fatalf("%s %v: %d pruned tensors, want %d", m.dir, args, pruned, 7*m.layers)
			}
			if code, _, stderr := runCLI(t, "eval", "--model", out, "--data", calib, "--format", "tokens"); code != 0 {
				t.Fatalf("%s %v: eval of the output: %s", m.dir, args, stderr)
			}
		}
	}
}
