package model

import (
	"encoding/json"
	"math"
	"os"
	"testing"
)

// TestLlama3RopeScaling compares InvFreq with Llama-3 rope_scaling against
// testdata/golden/rope_llama3.json (numpy, written from transformers'
// _compute_llama3_parameters by scripts/golden_stories260k.py).
func TestLlama3RopeScaling(t *testing.T) {
	b, err := os.ReadFile("../testdata/golden/rope_llama3.json")
	if err != nil {
		t.Fatal(err)
	}
	var g struct {
		Theta   float64   `json:"rope_theta"`
		HeadDim int       `json:"head_dim"`
		Factor  float64   `json:"factor"`
		Low     float64   `json:"low_freq_factor"`
		High    float64   `json:"high_freq_factor"`
		Orig    int       `json:"original_max_position_embeddings"`
		InvFreq []float64 `json:"inv_freq"`
	}
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatal(err)
	}
	c := Config{HeadDim: g.HeadDim, RopeTheta: g.Theta, RopeFactor: g.Factor, RopeLowFreq: g.Low, RopeHighFreq: g.High, RopeOrigMax: g.Orig}
	got := c.InvFreq()
	changed := 0
	plain := Config{HeadDim: g.HeadDim, RopeTheta: g.Theta}.InvFreq()
	for i, want := range g.InvFreq {
		if math.Abs(got[i]-want) > 1e-12*want {
			t.Fatalf("inv_freq[%d] = %.17g, reference %.17g", i, got[i], want)
		}
		if got[i] != plain[i] {
			changed++
		}
	}
	if changed == 0 || changed == len(got) {
		t.Fatalf("scaling changed %d of %d frequencies; the test needs low, medium and high bands", changed, len(got))
	}
}
