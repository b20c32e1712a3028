package stream

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/elsa-stream/elsa-stream/model"
	"github.com/elsa-stream/elsa-stream/shard/llama2c"
)

// golden is testdata/golden/stories260K.json, written by
// scripts/golden_stories260k.py: an independent float64 PyTorch
// implementation that reads the llama2.c checkpoint directly.
type golden struct {
	InputIDs     []int              `json:"input_ids"`
	Targets      []int              `json:"targets"`
	Loss         float64            `json:"loss"`
	LogitsRow0   []float64          `json:"logits_row0"`
	LogitsLast   []float64          `json:"logits_last"`
	LogitsSum    float64            `json:"logits_sum"`
	LogitsAbsSum float64            `json:"logits_abs_sum"`
	GradNorms    map[string]float64 `json:"grad_norms"`
}

// TestGoldenStories260K compares logits, loss and gradient norms with the
// reference on the real model.
func TestGoldenStories260K(t *testing.T) {
	s := openDefault(t)
	defer s.Close()
	checkGolden(t, s, "../testdata/golden/stories260K.json")
}

// TestGoldenRandomV1 does the same on a random version-1 ("ak42")
// checkpoint with other shapes (dim 48, 3 layers, 6 heads, 2 kv heads,
// hidden 100, vocab 300) and an untied lm_head, imported by our importer:
// nothing is special-cased for stories260K.
func TestGoldenRandomV1(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "m")
	if _, err := llama2c.Import("../testdata/golden/random_v1.bin", "../testdata/golden/random_v1_tok.bin", dir, llama2c.Options{}); err != nil {
		t.Fatal(err)
	}
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Cfg.TiedEmbeddings || s.Cfg.Hidden != 48 || s.Cfg.KVHeads != 2 {
		t.Fatalf("unexpected config %+v", s.Cfg)
	}
	checkGolden(t, s, "../testdata/golden/random_v1.json")
}

func checkGolden(t *testing.T, s *Source, path string) {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var g golden
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatal(err)
	}
	w, err := s.LoadAll()
	if err != nil {
		t.Fatal(err)
	}
	c := s.Cfg
	T := len(g.InputIDs)
	rope := model.NewRope(c, T)

	// Logits: run the blocks, then the head's projection row by row.
	x := make([]float32, T*c.Hidden)
	c.Embed(x, g.InputIDs, w.Head.Embed)
	var ws model.Workspace
	for l, blk := range w.Blocks {
		c.ForLayer(l).Forward(blk, rope, x, 1, T, &ws)
	}
	logits := c.Logits(&w.Head, x)
	var sum, abs float64
	for _, v := range logits {
		sum += float64(v)
		abs += math.Abs(float64(v))
	}
	V := c.Vocab
	maxDiff := 0.0
	for j := 0; j < V; j++ {
		maxDiff = max(maxDiff, math.Abs(float64(logits[j])-g.LogitsRow0[j]), math.Abs(float64(logits[(T-1)*V+j])-g.LogitsLast[j]))
	}
	if maxDiff > 2e-4 || math.Abs(abs-g.LogitsAbsSum) > 1e-5*g.LogitsAbsSum || math.Abs(sum-g.LogitsSum) > 1e-5*g.LogitsAbsSum {
		t.Fatalf("logits differ from the reference: max |diff| %.3g, sum %.6g vs %.6g, abs sum %.6g vs %.6g", maxDiff, sum, g.LogitsSum, abs, g.LogitsAbsSum)
	}

	t.Logf("logits: max |diff| vs reference %.3g", maxDiff)

	// Loss and gradient norms of the mean cross-entropy.
	grads := c.NewWeights()
	nll, n := c.Loss(w, rope, g.InputIDs, g.Targets, 1, T, grads, 1/float32(T))
	if loss := nll / float64(n); math.Abs(loss-g.Loss) > 1e-5 {
		t.Fatalf("loss %.7f, reference %.7f", loss, g.Loss)
	}
	norm := func(v []float32) float64 {
		var s float64
		for _, x := range v {
			s += float64(x) * float64(x)
		}
		return math.Sqrt(s)
	}
	got := map[string]float64{EmbedTensor: norm(grads.Head.Embed), NormTensor: norm(grads.Head.Norm)}
	if !c.TiedEmbeddings {
		got[LMHeadTensor] = norm(grads.Head.LMHead)
	}
	for l, blk := range grads.Blocks {
		for _, p := range c.BlockParams() {
			got[LayerTensor(l, p.Suffix)] = norm(*p.Get(blk))
		}
	}
	if len(got) != len(g.GradNorms) {
		t.Fatalf("%d gradient tensors, reference has %d", len(got), len(g.GradNorms))
	}
	worst := 0.0
	for name, want := range g.GradNorms {
		worst = max(worst, math.Abs(got[name]-want)/want)
		if math.Abs(got[name]-want) > 1e-4*want+1e-7 {
			t.Errorf("%s: gradient norm %.7g, reference %.7g", name, got[name], want)
		}
	}
	t.Logf("gradient norms: worst relative difference %.3g over %d tensors", worst, len(got))
}

// TestGoldenQwen3 does the same on a random tiny Qwen3ForCausalLM
// (scripts/golden_qwen3.py, written from transformers' modeling_qwen3):
// per-head q/k norms before RoPE, head_dim 16 ≠ hidden 48 / 4 heads, GQA,
// rope_theta 1e6, an untied lm_head.
func TestGoldenQwen3(t *testing.T) {
	s, err := Open("../testdata/golden/qwen3-tiny")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !s.Cfg.QKNorm || s.Cfg.HeadDim != 16 || s.Cfg.QKVBias || s.Cfg.TiedEmbeddings {
		t.Fatalf("unexpected config %+v", s.Cfg)
	}
	checkGolden(t, s, "../testdata/golden/qwen3_tiny.json")
}

// TestGoldenGemma2 does the same on a random tiny Gemma2ForCausalLM
// (scripts/golden_gemma.py, written from transformers' modeling_gemma2):
// (1 + w) and sandwich norms, GeGLU, query_pre_attn_scalar, active
// attention and final soft-capping, a sliding window (6) shorter than the
// sequence (16) on layers 0 and 2, head_dim 12 ≠ 32/4, tied embeddings.
func TestGoldenGemma2(t *testing.T) {
	s, err := Open("../testdata/golden/gemma2-tiny")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c := s.Cfg
	if !c.SandwichNorms || c.SlidingWindow != 6 || !c.SlidingLayers[0] || c.SlidingLayers[1] || !c.TiedEmbeddings || c.AttnSoftcap != 1.5 {
		t.Fatalf("unexpected config %+v", c)
	}
	checkGolden(t, s, "../testdata/golden/gemma2_tiny.json")
}

// TestGoldenGemma3 does the same on a random tiny Gemma3ForCausalLM
// (scripts/golden_gemma.py, from transformers' modeling_gemma3): (1 + w)
// q/k norms before RoPE, sliding layers 0 and 2 with their own RoPE base
// (10000), the global layer with rope_theta 1e6 and linear scaling 8, no
// soft-capping.
func TestGoldenGemma3(t *testing.T) {
	s, err := Open("../testdata/golden/gemma3-tiny")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c := s.Cfg
	if !c.QKNorm || c.LocalRopeTheta != 10000 || c.RopeTheta != 1e6 || c.RopeFactor != 8 || c.AttnSoftcap != 0 || !c.SlidingLayers[0] || c.SlidingLayers[1] {
		t.Fatalf("unexpected config %+v", c)
	}
	checkGolden(t, s, "../testdata/golden/gemma3_tiny.json")
}
