package main

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestImportInspectEval(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	dir := filepath.Join(t.TempDir(), "s260")
	code, _, errOut := runCLI(t, "import", "llama2c", "--model", "../../testdata/stories260K/stories260K.bin",
		"--tokenizer", "../../testdata/stories260K/tok512.bin", "--out", dir)
	if code != 0 {
		t.Fatalf("import: exit %d: %s", code, errOut)
	}
	// A second import without --force must refuse to overwrite.
	if code, _, errOut := runCLI(t, "import", "llama2c", "--model", "../../testdata/stories260K/stories260K.bin",
		"--tokenizer", "../../testdata/stories260K/tok512.bin", "--out", dir); code != 1 || !strings.Contains(errOut, "already exists") {
		t.Fatalf("overwrite without --force: exit %d: %s", code, errOut)
	}
	code, out, errOut := runCLI(t, "inspect", dir)
	if code != 0 || !strings.Contains(out, "260,032 parameters") {
		t.Fatalf("inspect: exit %d, out %q, err %s", code, out, errOut)
	}
	code, out, _ = runCLI(t, "inspect", dir, "--json")
	var js struct {
		TotalParams int64 `json:"total_params"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &js) != nil || js.TotalParams != 260032 {
		t.Fatalf("inspect --json: exit %d, %q", code, out)
	}
	code, out, errOut = runCLI(t, "eval", "--model", dir, "--max-stories", "10", "--json",
		"--data", "../../testdata/tinystories-valid-1000/tinystories_valid_first1000.txt")
	var ev struct {
		PPL    float64 `json:"ppl"`
		Tokens int     `json:"tokens"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &ev) != nil || ev.Tokens == 0 || ev.PPL < 1 || ev.PPL > 10 {
		t.Fatalf("eval: exit %d, %q, %s", code, out, errOut)
	}
}

// TestEvalCompute: eval --compute bf16 on the embedded stories260K says so
// and lands within 0.5% of the fp32 perplexity, but not on it.
func TestEvalCompute(t *testing.T) {
	ppl := map[string]float64{}
	for _, c := range []string{"fp32", "bf16"} {
		code, out, errOut := runCLI(t, "eval", "--compute", c, "--max-stories", "20", "--json")
		var ev struct {
			PPL     float64 `json:"ppl"`
			Compute string  `json:"compute"`
		}
		if code != 0 || json.Unmarshal([]byte(out), &ev) != nil || ev.Compute != c {
			t.Fatalf("eval --compute %s: exit %d, %q, %s", c, code, out, errOut)
		}
		ppl[c] = ev.PPL
	}
	if r := ppl["bf16"] / ppl["fp32"]; r == 1 || math.Abs(r-1) > 0.005 {
		t.Fatalf("bf16 ppl %v vs fp32 %v: want within 0.5%% and not equal", ppl["bf16"], ppl["fp32"])
	}
}

// TestCharLlamaMatchesTraining: the second test model (a character-level
// LLaMA trained by scripts/train_char_llama.py, testdata/charllama) has on
// the first 100 validation stories the perplexity its PyTorch training
// script measured, 3.0682 over 69,675 characters: tokenizer (no merges,
// prepended "▁"), head_dim 32 without GQA, context 256 and the stream
// protocol, checked against an independent implementation.
func TestCharLlamaMatchesTraining(t *testing.T) {
	code, out, errOut := runCLI(t, "eval", "--model", "../../testdata/charllama", "--json")
	var ev struct {
		PPL    float64 `json:"ppl"`
		Tokens int     `json:"tokens"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &ev) != nil {
		t.Fatalf("eval: exit %d, %q, %s", code, out, errOut)
	}
	if ev.Tokens != 69675 || math.Abs(ev.PPL-3.0682) > 5e-5 {
		t.Fatalf("ppl %.6f over %d tokens, PyTorch 3.0682 over 69675", ev.PPL, ev.Tokens)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"nope"},
		{"eval", "--format", "csv"},
		{"eval", "--bogus"},
		{"inspect"},
		{"import", "llama2c", "--model", "x"},
		{"import", "gguf"},
		{"eval", "--compute", "fp8"},
		{"prune", "--compute", "bf8"},
	} {
		if code, _, _ := runCLI(t, args...); code != 2 {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
	}
	if code, _, errOut := runCLI(t, "inspect", t.TempDir()); code != 1 || !strings.Contains(errOut, "config.json") {
		t.Errorf("inspect of an empty folder: exit %d: %s", code, errOut)
	}
}

func TestPlanCommand(t *testing.T) {
	code, out, errOut := runCLI(t, "plan", "--config", "../../configs/llama-2-70b.json", "--mem-budget", "32G", "--gflops", "100")
	if code != 0 || !strings.Contains(out, "fits:") {
		t.Fatalf("plan 70B at 32G: exit %d\n%s\n%s", code, out, errOut)
	}
	code, _, errOut = runCLI(t, "plan", "--config", "../../configs/llama-2-70b.json", "--mem-budget", "4G", "--gflops", "100")
	if code != 1 || !strings.Contains(errOut, "needs at least") {
		t.Fatalf("plan 70B at 4G: exit %d: %s", code, errOut)
	}
	if code, _, _ := runCLI(t, "plan", "--config", "x.json", "--mem-budget", "lots"); code != 2 {
		t.Fatalf("bad --mem-budget: exit %d, want 2", code)
	}
	// The paper's flagship: Gemma-2-27B's Elsa-L fits a 32 GB workstation.
	code, out, errOut = runCLI(t, "plan", "--config", "../../configs/gemma-2-27b.json", "--method", "elsa-l", "--mem-budget", "32G", "--gflops", "100")
	if code != 0 || !strings.Contains(out, "fits:") || !strings.Contains(out, "Gemma2ForCausalLM: 46 layers") {
		t.Fatalf("Gemma-2-27B Elsa-L at 32G: exit %d\n%s\n%s", code, out, errOut)
	}
}

// TestMain lets a test run the command itself as a child process (for
// signals and exit codes): ELSA_STREAM_MAIN=1 makes the test binary main.
func TestMain(m *testing.M) {
	if os.Getenv("ELSA_STREAM_MAIN") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// TestSignalStopsAtSafePoint: SIGINT and SIGTERM stop a run at its next
// safe point with the state committed, say how to continue, and exit with
// 128 + the signal number, as shells report a signalled process.
func TestSignalStopsAtSafePoint(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		dir := t.TempDir()
		cmd := exec.Command(os.Args[0], "--out", filepath.Join(dir, "out"), "--steps", "400", "--batch", "2", "--seqlen", "64")
		cmd.Env = append(os.Environ(), "ELSA_STREAM_MAIN=1", "XDG_CACHE_HOME="+dir)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Wait for training to start (the first metrics line), then signal.
		metrics := filepath.Join(dir, "out.work", "metrics.jsonl")
		for i := 0; i < 600; i++ {
			if b, err := os.ReadFile(metrics); err == nil && bytes.Count(b, []byte("\n")) >= 2 {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		cmd.Process.Signal(sig)
		cmd.Wait()
		code := cmd.ProcessState.ExitCode()
		if code != 128+int(sig) || !strings.Contains(stderr.String(), "--resume continues after step") {
			t.Fatalf("%v: exit %d, %s", sig, code, stderr.String())
		}
		if _, err := os.Stat(filepath.Join(dir, "out")); err == nil {
			t.Fatalf("%v: an interrupted run wrote its output", sig)
		}
	}
}

// TestValidationBeforeSideEffects: --projection foo emptied an existing
// metrics.jsonl before exiting with code 2.
func TestValidationBeforeSideEffects(t *testing.T) {
	work := t.TempDir()
	metrics := filepath.Join(work, "metrics.jsonl")
	os.WriteFile(metrics, []byte("{\"step\":0}\n"), 0o644)
	for _, args := range [][]string{{"--projection", "foo"}, {"--lambda-schedule", "bar"}, {"--sparsity", "NaN"}, {"--steps", "0"}} {
		if code, _, stderr := runCLI(t, append(args, "--work", work, "--out", filepath.Join(t.TempDir(), "o"))...); code != 2 {
			t.Errorf("%v: exit %d, %s", args, code, stderr)
		}
	}
	if b, _ := os.ReadFile(metrics); string(b) != "{\"step\":0}\n" {
		t.Fatalf("metrics.jsonl changed by a refused run: %q", b)
	}
}

// TestElsaDefaultsTravel (not -short: about 2.5 minutes on 2 cores) prunes
// the second model, charllama, to 50% with Elsa's defaults and with
// SparseGPT: Elsa must win. With the old single learning rate (1e-2) it
// lost there (3.37 against 3.14, falling back to its magnitude start);
// the target's rate gives 3.12 [3.12-3.13] over 3 seeds.
func TestElsaDefaultsTravel(t *testing.T) {
	if testing.Short() {
		t.Skip("prunes a 0.8M-parameter model with Elsa (minutes)")
	}
	ppl := map[string]float64{}
	for _, method := range []string{"sparsegpt", "elsa"} {
		code, out, errOut := runCLI(t, "prune", "--model", "../../testdata/charllama", "--method", method, "--sparsity", "0.5",
			"--calib", "../../internal/defaultmodel/data/train_calib.txt", "--eval", "../../internal/defaultmodel/data/valid_first100.txt",
			"--out", filepath.Join(t.TempDir(), method), "--json")
		var res struct {
			PrunedPPL float64 `json:"pruned_ppl"`
		}
		if code != 0 || json.Unmarshal([]byte(out), &res) != nil || res.PrunedPPL == 0 {
			t.Fatalf("prune --method %s: exit %d, %q, %s", method, code, out, errOut)
		}
		ppl[method] = res.PrunedPPL
	}
	if ppl["elsa"] >= ppl["sparsegpt"] {
		t.Fatalf("at 50%% on charllama Elsa's defaults give %.4f, SparseGPT %.4f", ppl["elsa"], ppl["sparsegpt"])
	}
	t.Logf("charllama 50%%: Elsa %.4f, SparseGPT %.4f", ppl["elsa"], ppl["sparsegpt"])
}
