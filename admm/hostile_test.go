package admm

import (
	"encoding/json"
	"math"
	"strings"
	"testing"

	"github.com/elsa-stream/elsa-stream/model"
)

// TestPatternFits: N:M on matrices whose input width M does not divide
// pruned a part of each row or nothing at all (1:1000 on 64 columns).
func TestPatternFits(t *testing.T) {
	c := model.Config{Hidden: 64, Intermediate: 172, Layers: 1, Heads: 8, KVHeads: 4, HeadDim: 8, Vocab: 512}
	for _, p := range []Pattern{{1, 1000}, {2, 5}, {4, 8}} {
		if err := p.Fits(c); err == nil || !strings.Contains(err.Error(), "not a multiple of") {
			t.Errorf("%s: %v", p, err)
		}
	}
	for _, p := range []Pattern{Unstructured, {2, 4}, {1, 2}} {
		if err := p.Fits(c); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
}

func TestAllocationRefusesNaN(t *testing.T) {
	for _, line := range []string{"model.layers.0: NaN", "model.layers.0: -0.1", "model.layers.0: 1", "model.layers.0: +Inf"} {
		if _, err := ParseAllocation(line, 0.5); err == nil {
			t.Errorf("%q accepted", line)
		}
	}
}

// TestStepMetricsNonFinite: encoding/json refuses NaN, so the line of a
// diverged step used to be dropped; it is written with nulls.
func TestStepMetricsNonFinite(t *testing.T) {
	b, err := json.Marshal(StepMetrics{Step: 3, Loss: math.NaN(), GradNorm: math.Inf(1), LR: 0.01, Error: "the loss is NaN"})
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil || m["loss"] != nil || m["grad_norm"] != nil || m["lr"] != 0.01 || m["step"] != 3.0 || m["error"] != "the loss is NaN" {
		t.Fatalf("%s: %v", b, err)
	}
	if b, _ := json.Marshal(StepMetrics{Step: 1, Loss: 2}); strings.Contains(string(b), "error") || !strings.Contains(string(b), `"loss":2`) {
		t.Fatalf("finite line: %s", b)
	}
}

// TestAdamStep: two steps against the formula in float64 (torch.optim.Adam
// with bias correction, ε outside the square root).
func TestAdamStep(t *testing.T) {
	w, m, v := []float32{1, -2, 0.5}, make([]float32, 3), make([]float32, 3)
	g := [][]float32{{0.1, -0.3, 2}, {-0.2, 0.1, 1}}
	ref := []float64{1, -2, 0.5}
	rm, rv := make([]float64, 3), make([]float64, 3)
	a := ReferenceAdam
	for s := 0; s < 2; s++ {
		a.Step(w, m, v, append([]float32(nil), g[s]...), 0.01, s)
		for i := range ref {
			gi := float64(g[s][i])
			rm[i] = 0.9*rm[i] + 0.1*gi
			rv[i] = 0.95*rv[i] + 0.05*gi*gi
			mh, vh := rm[i]/(1-math.Pow(0.9, float64(s+1))), rv[i]/(1-math.Pow(0.95, float64(s+1)))
			ref[i] -= 0.01 * mh / (math.Sqrt(vh) + 1e-8)
		}
	}
	for i := range ref {
		if math.Abs(float64(w[i])-ref[i]) > 1e-6 {
			t.Fatalf("w[%d] = %v, formula %v", i, w[i], ref[i])
		}
	}
}
