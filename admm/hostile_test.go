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
