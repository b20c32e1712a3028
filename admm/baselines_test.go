package admm

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"sort"
	"testing"
)

// TestBaselinesMatchReference runs magnitude, Wanda and SparseGPT on the
// first 32 rows of stories260K's layer-0 gate projection with the inputs of
// testdata/golden/baselines.json and compares with the independent numpy
// implementation in scripts/check_baselines.py: the same masks and the same
// updated weights.
func TestBaselinesMatchReference(t *testing.T) {
	b, err := os.ReadFile("../testdata/golden/baselines.json")
	if err != nil {
		t.Fatal(err)
	}
	var g struct {
		Rows, Cols int
		W, X       []float64
		Results    map[string][]float64
	}
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatal(err)
	}
	rows, cols := g.Rows, g.Cols
	n := len(g.X) / cols
	colSq := make([]float64, cols)
	h := make([]float64, cols*cols)
	for tk := 0; tk < n; tk++ {
		x := g.X[tk*cols : (tk+1)*cols]
		for i := range x {
			colSq[i] += x[i] * x[i]
			for j := range x {
				h[i*cols+j] += x[i] * x[j] / float64(n)
			}
		}
	}
	w := func() []float32 {
		out := make([]float32, len(g.W))
		for i, v := range g.W {
			out[i] = float32(v)
		}
		return out
	}
	nm := Pattern{2, 4}
	run := map[string]func(w []float32) error{
		"magnitude_50": func(w []float32) error { Magnitude(w, rows, cols, 0.5, Unstructured); return nil },
		"wanda_50":     func(w []float32) error { Wanda(w, rows, cols, colSq, 0.5, Unstructured); return nil },
		"wanda_2:4":    func(w []float32) error { Wanda(w, rows, cols, colSq, 0.5, nm); return nil },
		"sparsegpt_50": func(w []float32) error { return SparseGPT(w, rows, cols, h, 0.5, Unstructured, SparseGPTOptions{}) },
		"sparsegpt_70": func(w []float32) error {
			return SparseGPT(w, rows, cols, h, 0.7, Unstructured, SparseGPTOptions{BlockSize: 16})
		},
		"sparsegpt_2:4": func(w []float32) error { return SparseGPT(w, rows, cols, h, 0.5, nm, SparseGPTOptions{}) },
	}
	for name, want := range g.Results {
		got := w()
		if err := run[name](got); err != nil {
			t.Fatal(err)
		}
		zeros := 0
		for i := range got {
			if (got[i] == 0) != (want[i] == 0) {
				t.Fatalf("%s: mask differs at %d: got %g, reference %g", name, i, got[i], want[i])
			}
			if math.Abs(float64(got[i])-want[i]) > 1e-5*(math.Abs(want[i])+1e-3) {
				t.Fatalf("%s: weight %d = %g, reference %g", name, i, got[i], want[i])
			}
			if got[i] == 0 {
				zeros++
			}
		}
		t.Logf("%s: masks and weights match the reference (%d of %d zero)", name, zeros, len(got))
	}
}

func TestMasksExact(t *testing.T) {
	score := make([]float32, 6*8)
	for i := range score {
		score[i] = float32((i * 37) % 11)
	}
	if c := countTrue(MaskTensor(score, 6, 8, 0.9)); c != PruneCount(48, 0.9) {
		t.Fatalf("unstructured: %d pruned", c)
	}
	m := MaskRows(score, 6, 8, 0, Pattern{2, 4})
	for r := 0; r < 6; r++ {
		for g := 0; g < 8; g += 4 {
			if c := countTrue(m[r*8+g : r*8+g+4]); c != 2 {
				t.Fatalf("2:4 group (%d,%d) prunes %d", r, g, c)
			}
		}
	}
	if _, err := ParsePattern("4:2"); err == nil {
		t.Fatal("4:2 accepted")
	}
}

func countTrue(b []bool) int {
	n := 0
	for _, v := range b {
		if v {
			n++
		}
	}
	return n
}

func TestParseAllocation(t *testing.T) {
	f, err := ParseAllocation("# per layer\nmodel.layers.1: 0.8\nmodel.layers.1.mlp.down_proj: 0.95\n\n", 0.5)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]float64{
		"model.layers.1.self_attn.q_proj.weight": 0.8,
		"model.layers.1.mlp.down_proj.weight":    0.95,
		"model.layers.10.mlp.up_proj.weight":     0.5, // "model.layers.1" is not a prefix of layer 10
		"model.layers.0.mlp.up_proj.weight":      0.5,
	} {
		if got := f(name); got != want {
			t.Errorf("%s: %g, want %g", name, got, want)
		}
	}
	for _, bad := range []string{"model.layers.1 0.8", "x: 1.0", "x: -0.1", ": 0.5"} {
		if _, err := ParseAllocation(bad, 0.5); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

// TestMaskTensorSelection: the O(n) selection prunes exactly the entries a
// stable sort by score would (lowest first, ties by position), on random
// scores with heavy ties, and on continuous ones of both signs with −0 and +0.
func TestMaskTensorSelection(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for trial := 0; trial < 200; trial++ {
		n := 1 + r.IntN(300)
		score := make([]float32, n)
		levels := 1 + r.IntN(8)
		for i := range score {
			score[i] = float32(r.IntN(levels)) * 0.5
			if trial%2 == 1 { // continuous, both signs, both zeros
				score[i] = float32(r.NormFloat64() * math.Pow(10, float64(r.IntN(20)-10)))
				if r.IntN(10) == 0 {
					score[i] = float32(math.Copysign(0, float64(r.IntN(2)-1)))
				}
			}
		}
		s := r.Float64()
		idx := make([]int, n)
		for i := range idx {
			idx[i] = i
		}
		sort.SliceStable(idx, func(a, b int) bool { return score[idx[a]] < score[idx[b]] })
		want := make([]bool, n)
		for _, i := range idx[:PruneCount(n, s)] {
			want[i] = true
		}
		got := MaskTensor(score, 1, n, s)
		if !slices.Equal(got, want) {
			t.Fatalf("n=%d s=%.3f levels=%d: selection differs from the stable sort", n, s, levels)
		}
	}
}
