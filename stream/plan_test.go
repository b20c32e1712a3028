package stream

import (
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/elsa-stream/elsa-stream/internal/budget"
	"github.com/elsa-stream/elsa-stream/shard"
)

func configFile(t *testing.T, name string) *shard.Config {
	t.Helper()
	c, err := shard.ReadConfig("../configs/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestPlansAt32G: LLaMA-2-70B and Qwen2.5-32B fit a 32 GiB budget for
// Elsa-L with the reference batch (8 windows of 2048 tokens), and every line
// of the plan adds up to its total.
func TestPlansAt32G(t *testing.T) {
	for _, name := range []string{"llama-2-70b.json", "qwen2.5-32b.json", "llama-3-8b.json", "llama-2-7b.json", "gemma-2-27b.json"} {
		c := ConfigFromHF(configFile(t, name))
		p, err := MakePlan(PlanInput{Cfg: c, WeightBytes: 2, Batch: 8, SeqLen: 2048, Budget: 32 << 30, Job: ElsaL, GFLOPS: 100,
			State: StateCost{PerParam: 5.2, Master: 2, Grad: 2}})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var sum int64
		for _, line := range p.RAM {
			sum += line.Bytes
		}
		if sum != p.RAMTotal || p.RAMTotal > 32<<30 || p.MinBudget > p.RAMTotal || p.FLOPs <= 0 {
			t.Fatalf("%s: inconsistent plan %+v", name, p)
		}
	}
}

// TestPlanRefusesWithMinimum: a budget below one layer names the smallest
// budget that works, and that budget does work.
func TestPlanRefusesWithMinimum(t *testing.T) {
	c := ConfigFromHF(configFile(t, "llama-2-7b.json"))
	in := PlanInput{Cfg: c, WeightBytes: 2, Batch: 8, SeqLen: 2048, Budget: 1 << 30, Job: Grad, GFLOPS: 100}
	p, err := MakePlan(in)
	if !errors.Is(err, budget.ErrOverBudget) || !strings.Contains(err.Error(), "needs at least") {
		t.Fatalf("1 GiB for a 7B gradient step: %v", err)
	}
	in.Budget = p.RAMTotal
	q, err := MakePlan(in)
	if err != nil || q.MicroBatch != 1 || !q.SpillActivations {
		t.Fatalf("the named minimum %d must fit with micro-batch 1 and spilled activations: %v %+v", p.RAMTotal, err, q)
	}
	// With room to spare the plan keeps activations in RAM and the full batch.
	in.Budget = 64 << 30
	r, err := MakePlan(in)
	if err != nil || r.MicroBatch != 8 || r.SpillActivations {
		t.Fatalf("64 GiB: %v %+v", err, r)
	}
}

// TestPlanFrozenHead: the head is never whole in a training plan (a larger
// vocabulary costs a sliver of its fp32 weights); frozen, the plan
// only drops the lm_head share of the tied embedding rows' gradient and
// keeps no state for the head.
func TestPlanFrozenHead(t *testing.T) {
	c := ConfigFromHF(configFile(t, "gemma-2-27b.json"))
	in := PlanInput{Cfg: c, WeightBytes: 2, Batch: 1, SeqLen: 128, Budget: 64 << 30, Job: ElsaL, GFLOPS: 100,
		State: StateCost{PerParam: 5.2, Master: 2, Grad: 2}}
	trained, err := MakePlan(in)
	if err != nil {
		t.Fatal(err)
	}
	in.FrozenHead = true
	frozen, err := MakePlan(in)
	if err != nil {
		t.Fatal(err)
	}
	// Twice the vocabulary: the plan grows by far less than the fp32
	// embedding it adds.
	in.FrozenHead = false
	in.Cfg.Vocab *= 2
	bigger, err := MakePlan(in)
	if err != nil {
		t.Fatal(err)
	}
	added := 4 * int64(c.Vocab) * int64(c.Hidden)
	if d := bigger.RAMTotal - trained.RAMTotal; d > added/50 {
		t.Fatalf("%d more vocabulary rows cost %d bytes of RAM (their fp32 weights: %d): the head is not streamed", c.Vocab, d, added)
	}
	if d := trained.RAMTotal - frozen.RAMTotal; d != 4*128*int64(c.Hidden) {
		t.Fatalf("frozen head saves %d bytes of RAM, want the lm_head share of 128 embedding rows, %d", d, 4*128*c.Hidden)
	}
	if trained.Disk[1].Bytes <= frozen.Disk[1].Bytes {
		t.Fatalf("frozen head keeps state: %+v vs %+v", frozen.Disk, trained.Disk)
	}
}

// TestPlanJobEstimate: the whole job is its steps times the slowest of
// compute, I/O and the state update; another machine scales the compute
// by its cores at this machine's efficiency, never the one-core update.
func TestPlanJobEstimate(t *testing.T) {
	c := ConfigFromHF(configFile(t, "llama-2-7b.json"))
	in := PlanInput{Cfg: c, WeightBytes: 2, Batch: 8, SeqLen: 2048, Budget: 32 << 30, Job: ElsaL, GFLOPS: 200,
		State: StateCost{PerParam: 5.11, Master: 2, Grad: 2}, Steps: 100,
		Rates: Rates{Cores: 2, CoreGFLOPS: 120, AllGFLOPS: 200, UpdateNanos: 50}}
	p, err := MakePlan(in)
	if err != nil {
		t.Fatal(err)
	}
	if want := p.FLOPs / 200e9; math.Abs(p.ComputeSeconds-want) > 1e-9*want {
		t.Fatalf("compute %v s, want %v", p.ComputeSeconds, want)
	}
	if want := float64(p.Params) * 50e-9; math.Abs(p.UpdateSeconds-want) > 1e-9*want {
		t.Fatalf("update %v s, want %v", p.UpdateSeconds, want)
	}
	if p.StepSeconds != max(p.ComputeSeconds, p.IOSeconds, p.UpdateSeconds) || p.JobSeconds != 100*p.StepSeconds || p.Cores != 2 {
		t.Fatalf("step %v, job %v, cores %d", p.StepSeconds, p.JobSeconds, p.Cores)
	}
	in.Cores = 32
	q, _ := MakePlan(in)
	eff := 200.0 / (2 * 120)
	if want := p.FLOPs / (120e9 * 32 * eff); math.Abs(q.ComputeSeconds-want) > 1e-9*want || q.UpdateSeconds != p.UpdateSeconds || q.Cores != 32 {
		t.Fatalf("32 cores: compute %v (want %v), update %v", q.ComputeSeconds, want, q.UpdateSeconds)
	}
}
