package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"runtime"
	"text/tabwriter"

	"github.com/elsa-stream/elsa-stream/admm"
	"github.com/elsa-stream/elsa-stream/internal/budget"
	"github.com/elsa-stream/elsa-stream/internal/kernels"
	"github.com/elsa-stream/elsa-stream/lowmem"
	"github.com/elsa-stream/elsa-stream/prune"
	"github.com/elsa-stream/elsa-stream/shard"
	"github.com/elsa-stream/elsa-stream/stream"
)

// memBudgetFlag is the --mem-budget flag shared by every command that
// touches weights.
type memBudgetFlag struct{ bytes int64 }

func (f *memBudgetFlag) String() string {
	if f.bytes == 0 {
		return fmt.Sprintf("%.0f%% of available memory", 100*budget.DefaultFraction)
	}
	return budget.Format(f.bytes)
}

func (f *memBudgetFlag) Set(s string) error {
	b, err := budget.ParseSize(s)
	if err != nil {
		return err
	}
	if b <= 0 {
		return fmt.Errorf("must be positive")
	}
	f.bytes = b
	return nil
}

// computeFlag registers --compute on fs: the GEMMs' precision for what.
func computeFlag(fs *flag.FlagSet, what string) *kernels.Compute {
	c := new(kernels.Compute)
	fs.Func("compute", what+": fp32, or bf16 (bf16 operands, fp32 accumulation; on AMX where the CPU has it) (default fp32)", func(s string) error {
		v, err := kernels.ParseCompute(s)
		*c = v
		return err
	})
	return c
}

// value is the budget in bytes (the default when unset).
func (f *memBudgetFlag) value() int64 {
	if f.bytes == 0 {
		return budget.Default()
	}
	return f.bytes
}

func runPlan(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("plan", stderr)
	modelDir := fs.String("model", "", "Hugging Face model folder")
	configPath := fs.String("config", "", "a config.json instead of a model folder (see configs/)")
	var mem memBudgetFlag
	fs.Var(&mem, "mem-budget", "memory budget: 32G, 512M, 1.5GiB, ... (default 80% of available memory)")
	seqlen := fs.Int("seqlen", 2048, "tokens per window (capped at the model's context)")
	batch := fs.Int("batch", 8, "windows per optimizer step (eval: windows per sweep)")
	method := fs.String("method", "elsa-l", "eval, grad, elsa, elsa-l, or a one-shot method: magnitude, wanda, sparsegpt (--batch: calibration windows)")
	gflops := fs.Float64("gflops", 0, "GEMM speed for the time estimate (0: measure it now)")
	steps := fs.Int("steps", prune.DefaultElsaSettings().Steps, "elsa: optimizer steps of the job the estimate is for")
	cores := fs.Int("cores", 0, "estimate for a machine with this many cores like this one's (0: this machine)")
	asJSON := fs.Bool("json", false, "print one JSON object")
	stateSpec := fs.String("state", "", "elsa-l: state codecs as for prune (default master=bf16-sr,m=dyn8,v=dyn8,zu=int8,grad=bf16)")
	trainDense := fs.Bool("train-dense", true, "elsa: embeddings, norms and lm_head are trained too (false: frozen, no state)")
	compute := computeFlag(fs, "GEMM precision the job runs in (and the speed is measured in)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: elsa-stream plan (--model DIR | --config config.json) --mem-budget 32G [--seqlen N] [--batch N] [--method eval|grad|elsa|elsa-l] [--state SPEC] [--compute fp32|bf16] [--json]")
		fs.PrintDefaults()
	}
	if _, err := parseFlags(fs, args, 0); err != nil {
		return err
	}
	if (*modelDir == "") == (*configPath == "") {
		return usagef("give exactly one of --model and --config")
	}
	job := stream.Job(*method)
	hessians := false
	switch job {
	case stream.Eval, stream.Grad, stream.Elsa, stream.ElsaL:
	case "magnitude", "wanda", "sparsegpt":
		job, hessians = stream.Prune, *method == "sparsegpt"
	default:
		return usagef("--method %q: want eval, grad, elsa, elsa-l, magnitude, wanda or sparsegpt", *method)
	}
	path := *configPath
	if path == "" {
		path = filepath.Join(*modelDir, shard.ConfigFile)
	}
	cfg, err := shard.ReadConfig(path)
	if err != nil {
		return err
	}
	mc := stream.ConfigFromHF(cfg)
	T := min(*seqlen, mc.MaxPositions)
	in := stream.PlanInput{Cfg: mc, WeightBytes: stream.WeightBytes(cfg), Batch: *batch, SeqLen: T, Budget: mem.value(), Job: job, GFLOPS: *gflops, Hessians: hessians,
		Compute: *compute}
	switch {
	case job == stream.Elsa && *stateSpec == "":
		in.State = admm.StateCost(lowmem.FP32State)
	case job == stream.ElsaL:
		codecs, err := lowmem.ParseStateCodecs(*stateSpec, lowmem.ElsaLState)
		if err != nil {
			return usagef("--state: %v", err)
		}
		in.State = admm.StateCost(codecs)
	case *stateSpec != "":
		return usagef("--state sets Elsa-L's codecs: use it with --method elsa-l")
	}
	in.FrozenHead = in.State.PerParam > 0 && !*trainDense
	if *steps <= 0 || *cores < 0 {
		return usagef("--steps must be positive and --cores not negative")
	}
	// The job estimate: this machine's per-core speeds, measured now.
	here := runtime.GOMAXPROCS(0)
	in.Rates = stream.Rates{Cores: here, AllGFLOPS: *gflops, CoreGFLOPS: *gflops / float64(here)}
	if *gflops <= 0 {
		in.Rates.AllGFLOPS, in.Rates.CoreGFLOPS = stream.MeasureGFLOPS(*compute), stream.MeasureCoreGFLOPS(*compute)
		in.GFLOPS = in.Rates.AllGFLOPS
	}
	if job == stream.Elsa || job == stream.ElsaL {
		codecs := lowmem.FP32State
		if job == stream.ElsaL {
			codecs, _ = lowmem.ParseStateCodecs(*stateSpec, lowmem.ElsaLState)
		}
		cost := admm.MeasureUpdate(codecs)
		in.Rates.UpdateNanos, in.Steps = cost.Nanos(here), *steps
		if *cores > 0 {
			in.Rates.UpdateNanos = cost.Nanos(*cores)
		}
	}
	in.Cores = *cores
	p, planErr := stream.MakePlan(in)
	if *asJSON {
		out := map[string]any{"config": path, "seqlen": T, "batch": *batch, "plan": p, "fits": planErr == nil, "compute": compute.String(), "kernels": compute.Backend()}
		if planErr != nil {
			out["error"] = planErr.Error()
		}
		if err := json.NewEncoder(stdout).Encode(out); err != nil {
			return err
		}
		return planErr
	}
	fmt.Fprintf(stdout, "%s\n%s, %s weights, %s parameters (%s per layer)\n", path, cfg, budget.Format(int64(float64(p.Params)*in.WeightBytes)),
		commas(p.Params), commas(p.BlockParams))
	fmt.Fprintf(stdout, "job %s: %d windows x %d tokens per step, budget %s\n\n", job, *batch, T, budget.Format(in.Budget))
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "RAM\tbytes\t")
	for _, c := range p.RAM {
		fmt.Fprintf(tw, "%s\t%s\t\n", c.Name, budget.Format(c.Bytes))
	}
	fmt.Fprintf(tw, "total\t%s\t\n", budget.Format(p.RAMTotal))
	tw.Flush()
	if len(p.Disk) > 0 {
		fmt.Fprintln(stdout)
		for _, c := range p.Disk {
			fmt.Fprintf(stdout, "disk: %s %s\n", c.Name, budget.Format(c.Bytes))
		}
	}
	acts := map[bool]string{false: "in RAM", true: "spilled to disk"}[p.SpillActivations]
	if p.KeepActivations {
		acts = "kept in RAM for the backward (it does not recompute the forward)"
	}
	fmt.Fprintf(stdout, "\ngranularity %s, micro-batch %d, prefetch depth %d, activations %s\n", p.Granularity, p.MicroBatch, p.PrefetchDepth, acts)
	fmt.Fprintf(stdout, "per step: read %s, write %s, %.3g TFLOP\n", budget.Format(p.ReadBytes), budget.Format(p.WriteBytes), p.FLOPs/1e12)
	where := fmt.Sprintf("this machine (%d cores)", in.Rates.Cores)
	if in.Cores > 0 {
		where = fmt.Sprintf("%d cores like these (%.0f GFLOP/s per core, %.0f%% parallel efficiency as here)", in.Cores, in.Rates.CoreGFLOPS, 100*in.Rates.Efficiency())
	}
	fmt.Fprintf(stdout, "estimate for %s: compute %.1fs at %.0f GFLOP/s (%s GEMMs on %s), disk %.1fs at %.2f GB/s", where, p.ComputeSeconds, p.GFLOPS, *compute, compute.Backend(), p.IOSeconds, 1.45)
	if p.UpdateSeconds > 0 {
		fmt.Fprintf(stdout, ", state update %.1fs (%.1f ns/param)", p.UpdateSeconds, in.Rates.UpdateNanos)
	}
	fmt.Fprintf(stdout, "; they overlap, so ~%.1fs per step\n", p.StepSeconds)
	if in.Steps > 0 {
		fmt.Fprintf(stdout, "job: %d steps x %.1fs = %s\n", p.Steps, p.StepSeconds, duration(p.JobSeconds))
	}
	// A training job in fp32 on a CPU with AMX: say what bf16 would take.
	if in.Steps > 0 && *compute == kernels.ComputeFP32 && *gflops <= 0 && kernels.ComputeBF16.Backend() == "amx" {
		alt := in
		alt.Compute = kernels.ComputeBF16
		alt.Rates.AllGFLOPS, alt.Rates.CoreGFLOPS = stream.MeasureGFLOPS(alt.Compute), stream.MeasureCoreGFLOPS(alt.Compute)
		alt.GFLOPS = alt.Rates.AllGFLOPS
		if q, err := stream.MakePlan(alt); err == nil {
			fmt.Fprintf(stdout, "with --compute bf16 (AMX here, %.0f GFLOP/s): ~%.1fs per step, job %s\n", q.GFLOPS, q.StepSeconds, duration(q.JobSeconds))
		}
	}
	if planErr != nil {
		return planErr
	}
	fmt.Fprintf(stdout, "fits: %s of %s (smallest budget that works: %s)\n", budget.Format(p.RAMTotal), budget.Format(in.Budget), budget.Format(p.MinBudget))
	return nil
}

// duration renders seconds as the largest sensible unit.
func duration(s float64) string {
	switch {
	case s < 120:
		return fmt.Sprintf("%.0f s", s)
	case s < 2*3600:
		return fmt.Sprintf("%.1f min", s/60)
	case s < 2*86400:
		return fmt.Sprintf("%.1f h", s/3600)
	}
	return fmt.Sprintf("%.1f days", s/86400)
}
