package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/elsa-stream/elsa-stream/shard"
)

// TestPackEvalGenerate prunes the embedded model to 90% with --pack and
// checks the payoff's promises end to end: the packed folder is smaller,
// evaluates to the same perplexity as the dense output, generates the same
// greedy tokens, and unpacks to the very same model file.
func TestPackEvalGenerate(t *testing.T) {
	tmp := t.TempDir()
	out, packed, back := filepath.Join(tmp, "out"), filepath.Join(tmp, "packed"), filepath.Join(tmp, "back")
	var so, se bytes.Buffer
	if code := run([]string{"prune", "--method", "magnitude", "--sparsity", "0.9", "--out", out, "--pack", packed, "--json"}, &so, &se); code != 0 {
		t.Fatalf("prune --pack: exit %d: %s", code, se.String())
	}
	var res struct {
		Packed struct{ Ratio float64 } `json:"packed"`
	}
	if err := json.Unmarshal(so.Bytes(), &res); err != nil || res.Packed.Ratio < 2 {
		t.Fatalf("prune --json packed ratio %v (%v): %s", res.Packed.Ratio, err, so.String())
	}
	// At 90% every pruned matrix is under 1/8 dense: gap-coded.
	mf, err := shard.ReadManifest(packed)
	if err != nil {
		t.Fatal(err)
	}
	gaps := 0
	for _, pt := range mf.Tensors {
		if pt.Encoding == shard.EncodingGaps {
			gaps++
		}
	}
	if gaps == 0 {
		t.Errorf("no tensor of the 90%%-sparse model is gap-coded: %+v", mf.Tensors)
	}
	ppl := func(dir string) float64 {
		var so, se bytes.Buffer
		if code := run([]string{"eval", "--model", dir, "--max-stories", "10", "--json"}, &so, &se); code != 0 {
			t.Fatalf("eval %s: exit %d: %s", dir, code, se.String())
		}
		var r struct{ PPL float64 }
		if err := json.Unmarshal(so.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		return r.PPL
	}
	if a, b := ppl(out), ppl(packed); a != b || a == 0 {
		t.Errorf("perplexity dense %v, packed %v", a, b)
	}
	generate := func(dir string) []int {
		var so, se bytes.Buffer
		if code := run([]string{"generate", "--model", dir, "--prompt", "Once upon a time", "--max-tokens", "24", "--json"}, &so, &se); code != 0 {
			t.Fatalf("generate %s: exit %d: %s", dir, code, se.String())
		}
		var r struct {
			IDs    []int `json:"ids"`
			Packed int   `json:"packed_matrices"`
		}
		if err := json.Unmarshal(so.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		if dir == packed && r.Packed == 0 {
			t.Errorf("generate on the packed folder read no packed matrix")
		}
		return r.IDs
	}
	if a, b := generate(out), generate(packed); !slices.Equal(a, b) || len(a) != 24 {
		t.Errorf("greedy tokens differ:\ndense  %v\npacked %v", a, b)
	}
	if code := run([]string{"unpack", packed, back}, &so, &se); code != 0 {
		t.Fatalf("unpack: exit %d: %s", code, se.String())
	}
	a, _ := os.ReadFile(filepath.Join(out, "model.safetensors"))
	b, err := os.ReadFile(filepath.Join(back, "model.safetensors"))
	if err != nil || !bytes.Equal(a, b) {
		t.Errorf("unpacked model differs from the pruned output (%v)", err)
	}
	entries, _ := os.ReadDir(packed)
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".safetensors") || strings.HasPrefix(e.Name(), "model") {
			t.Errorf("packed folder holds %s, which loaders of HF folders would pick up", e.Name())
		}
	}
}

func TestGenerateRefusesBadPrompts(t *testing.T) {
	for _, args := range [][]string{
		{"generate"},
		{"generate", "--prompt", "a", "--prompt-ids", "1"},
		{"generate", "--prompt-ids", "1,x"},
		{"generate", "--prompt-ids", "99999"},
		{"generate", "--prompt-ids", "1", "--top-p", "0"},
	} {
		var so, se bytes.Buffer
		if code := run(args, &so, &se); code != 2 {
			t.Errorf("%v: exit %d, want 2 (%s)", args, code, se.String())
		}
	}
}
