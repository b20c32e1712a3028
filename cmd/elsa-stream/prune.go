package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/elsa-stream/elsa-stream/admm"
	"github.com/elsa-stream/elsa-stream/dataset"
	"github.com/elsa-stream/elsa-stream/internal/budget"
	"github.com/elsa-stream/elsa-stream/internal/defaultmodel"
	"github.com/elsa-stream/elsa-stream/internal/kernels"
	"github.com/elsa-stream/elsa-stream/internal/mpi"
	"github.com/elsa-stream/elsa-stream/lowmem"
	"github.com/elsa-stream/elsa-stream/prune"
)

// pruneFlags are prune's flags as given; job turns them into a prune.Job.
type pruneFlags struct {
	model, out, method, pattern, allocation, calib, calibFormat, work, evalData, evalFormat string
	schedule, projection, init, state, maxShard                                             string
	sparsity, owlM, owlLambda                                                               float64
	tokenBytes                                                                              int
	jsonOut                                                                                 bool
	mem                                                                                     memBudgetFlag
	compute                                                                                 *kernels.Compute
	job                                                                                     prune.Job
	set                                                                                     map[string]bool // flags given on the command line
}

func runPrune(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f pruneFlags
	j := &f.job
	fs := newFlags("prune", stderr)
	fs.StringVar(&f.model, "model", "", "Hugging Face model folder (default: the embedded stories260K)")
	fs.StringVar(&f.out, "out", "", "output folder (default: <tmp>/elsa-stream/<model>-<method>-<sparsity>)")
	fs.StringVar(&f.method, "method", "elsa", "elsa, elsa-l, magnitude, wanda or sparsegpt")
	fs.Float64Var(&f.sparsity, "sparsity", -1, "fraction of each pruned tensor set to zero, unstructured (default: 0.9 for elsa and elsa-l, 0.5 for one-shot methods)")
	fs.StringVar(&f.pattern, "pattern", "unstructured", "unstructured, 2:4 or 4:8")
	fs.StringVar(&f.allocation, "allocation", "uniform", "uniform, owl, or a FILE of 'module: sparsity' lines")
	fs.Float64Var(&f.owlM, "owl-m", 5, "OWL: outlier threshold, in multiples of the layer's mean Wanda score")
	fs.Float64Var(&f.owlLambda, "owl-lambda", 0.08, "OWL: spread of the layer sparsities around the target")
	fs.StringVar(&f.calib, "calib", "", "calibration file, - for standard input (default with the embedded model: embedded TinyStories train text)")
	fs.StringVar(&f.calibFormat, "calib-format", "stories", "calibration format: stories, text, jsonl or tokens")
	fs.IntVar(&f.tokenBytes, "token-bytes", 2, "tokens format (--calib and --eval): bytes per id, 2 or 4")
	fs.IntVar(&j.NSamples, "nsamples", 128, "calibration windows")
	fs.IntVar(&j.SeqLen, "seqlen", 0, "calibration / training window length (default: the model's context, at most 2048; elsa: a quarter of it)")
	fs.Uint64Var(&j.Seed, "seed", 0, "calibration sampling seed")
	fs.IntVar(&j.MicroBatch, "micro-batch", 0, "calibration windows per forward (default: from the memory plan)")
	fs.Var(&f.mem, "mem-budget", "memory budget: 32G, 512M, 1.5GiB, ... (default 80% of available memory)")
	fs.BoolVar(&j.NoMmap, "no-mmap", false, "read weights with pread instead of mmap")
	fs.StringVar(&f.work, "work", "", "work folder for metrics.jsonl and Elsa's state (default: <out>.work)")
	fs.StringVar(&f.evalData, "eval", "", "evaluate the pruned model on FILE (default with the embedded model: the embedded validation excerpt)")
	fs.StringVar(&f.evalFormat, "eval-format", "stories", "evaluation format: stories, text, jsonl or tokens")
	fs.StringVar(&f.maxShard, "max-shard-size", "5GB", "largest output shard")
	fs.BoolVar(&f.jsonOut, "json", false, "print a JSON summary on stdout")
	fs.BoolVar(&j.Force, "force", false, "replace an existing output folder")
	fs.StringVar(&j.Pack, "pack", "", "also write the packed sparse form (smaller, decodes faster) to this folder")
	d := prune.DefaultElsaSettings()
	e := &j.Elsa
	fs.IntVar(&e.Steps, "steps", d.Steps, "elsa: optimizer steps")
	fs.IntVar(&e.Batch, "batch", d.Batch, "elsa: windows per step (0: four contexts of tokens, at most 8 x 2048)")
	fs.Float64Var(&e.LR, "lr", 0, "elsa: Adam learning rate, decaying linearly to 0 (default: from 70% sparsity 5e-3 up to 10M parameters to 2e-4 from 1B, log-linear between; 0.6x that at 50% and below)")
	fs.Float64Var(&e.Lambda, "lambda", d.Lambda, "elsa: ADMM penalty λ (start)")
	fs.Float64Var(&e.LambdaFinal, "lambda-final", 0, "elsa: λ at the last step (default: --lambda)")
	fs.StringVar(&f.schedule, "lambda-schedule", string(d.Schedule), "elsa: constant, linear, cosine or exponential")
	fs.IntVar(&e.Interval, "interval", d.Interval, "elsa: steps between z/u updates")
	fs.Float64Var(&e.Clip, "clip", d.Clip, "elsa: global gradient-norm clip (0: none)")
	fs.StringVar(&f.projection, "projection", string(d.Projection), "elsa: magnitude or objective (Adam second moment x v²)")
	fs.BoolVar(&e.TrainDense, "train-dense", d.TrainDense, "elsa: also train embeddings, norms and lm_head (no penalty)")
	fs.BoolVar(&e.Resume, "resume", false, "elsa: continue an interrupted run from <work>/state (same settings)")
	fs.StringVar(&f.init, "init", "magnitude", "elsa: initial z from the magnitude of W, or from a wanda or sparsegpt pruning")
	fs.StringVar(&f.state, "state", "", "elsa-l: state codecs, e.g. master=bf16-sr,m=dyn8,v=dyn8,zu=int8,grad=bf16 (the default)")
	fs.BoolVar(&e.Streamed, "streamed", false, "elsa: stream the optimizer state from disk even when it fits in RAM")
	f.compute = computeFlag(fs, "elsa: GEMM precision of the training")
	fs.BoolVar(&e.Fallback, "fallback", true, "elsa: write the one-shot initialisation instead if Elsa's result scores worse on held-out calibration windows")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: elsa-stream [prune] [--model DIR] [--out DIR] [--method elsa|elsa-l|magnitude|wanda|sparsegpt]\n"+
			"       [--sparsity S] [--pattern unstructured|2:4|4:8] [--allocation uniform|owl|FILE] [--calib FILE] [--nsamples 128]\n"+
			"       [--seqlen N] [--seed 0] [--mem-budget 32G] [--eval FILE] [--json] [--force]\n"+
			"       elsa: [--steps N] [--batch N] [--lr X] [--lambda X] [--lambda-final X] [--lambda-schedule S] [--interval N]\n"+
			"       [--clip X] [--projection magnitude|objective] [--init magnitude|wanda|sparsegpt] [--state SPEC] [--resume] [--streamed] [--fallback=false] [--compute fp32|bf16]")
		fs.PrintDefaults()
	}
	if _, err := parseFlags(fs, args, 0); err != nil {
		return err
	}
	f.set = setFlags(fs)
	if err := f.toJob(); err != nil {
		return err
	}
	comm, err := mpi.World()
	if err != nil {
		return err
	}
	defer mpi.Finalize()
	j.Comm = comm
	if comm.Rank() > 0 { // rank 0 speaks for the job; the others only fail loudly
		stdout, stderr = io.Discard, prefixed(stderr, fmt.Sprintf("rank %d: ", comm.Rank()))
	}
	j.Observer = newObserver(stderr)
	res, err := prune.Run(ctx, *j)
	j.Observer.(*observer).end()
	if err != nil {
		if comm.Size() > 1 {
			return fmt.Errorf("rank %d of %d: %w", comm.Rank(), comm.Size(), err)
		}
		return err
	}
	return report(stdout, j, res, f.jsonOut)
}

// toJob maps the flags onto the Job: names to typed values, the embedded
// model and data when no model is given, the default output folder.
func (f *pruneFlags) toJob() error {
	j := &f.job
	var err error
	if j.Method, err = admm.ParseMethod(f.method); err != nil {
		return usagef("--method: %v", err)
	}
	if j.Pattern, err = admm.ParsePattern(f.pattern); err != nil {
		return usagef("--pattern: %v", err)
	}
	j.Sparsity = f.sparsity
	j.Compute = *f.compute
	if !f.set["sparsity"] {
		j.Sparsity = prune.DefaultSparsity(j.Method)
	}
	// 0 means "the default" to the Job; given on the command line it is a
	// mistake, not a request for the default.
	for _, c := range []struct {
		name string
		v    float64
	}{{"lr", j.Elsa.LR}, {"lambda-final", j.Elsa.LambdaFinal}} {
		if f.set[c.name] && !(c.v > 0) {
			return usagef("--%s %g: want a positive number", c.name, c.v)
		}
	}
	if (f.set["owl-m"] || f.set["owl-lambda"]) && f.allocation != "owl" {
		return usagef("--owl-m and --owl-lambda apply to --allocation owl")
	}
	switch f.allocation {
	case "uniform":
	case "owl":
		j.Allocation = prune.Allocation{Kind: prune.OWL, OWLM: f.owlM, OWLLambda: f.owlLambda}
	default:
		j.Allocation = prune.Allocation{Kind: prune.FromFile, File: f.allocation}
	}
	calibFormat, err := dataset.ParseFormat(f.calibFormat)
	if err != nil {
		return usagef("--calib-format: %v", err)
	}
	evalFormat, err := dataset.ParseFormat(f.evalFormat)
	if err != nil {
		return usagef("--eval-format: %v", err)
	}
	j.MemBudget = f.mem.bytes
	if j.MaxShardSize, err = budget.ParseSize(f.maxShard); err != nil {
		return usagef("--max-shard-size: %v", err)
	}
	if j.MaxShardSize <= 0 {
		return usagef("--max-shard-size %s: want a positive size (e.g. 5GB)", f.maxShard)
	}
	if j.Method.IsElsa() {
		e := &j.Elsa
		if e.Schedule, err = admm.ParseSchedule(f.schedule); err != nil {
			return usagef("--lambda-schedule: %v", err)
		}
		if e.Projection, err = admm.ParseProjection(f.projection); err != nil {
			return usagef("--projection: %v", err)
		}
		e.Init = admm.Method(f.init)
		if !e.Init.IsOneShot() {
			return usagef("--init %q: want magnitude, wanda or sparsegpt", f.init)
		}
		if f.state != "" && j.Method != admm.MethodElsaL {
			return usagef("--state sets Elsa-L's codecs: use it with --method elsa-l")
		}
		if j.Method == admm.MethodElsaL {
			if e.State, err = lowmem.ParseStateCodecs(f.state, lowmem.ElsaLState); err != nil {
				return usagef("--state: %v", err)
			}
		}
	}
	j.Model, j.Work = f.model, f.work
	if f.tokenBytes != 2 && f.tokenBytes != 4 {
		return usagef("--token-bytes must be 2 or 4")
	}
	j.Calib = prune.Data{Path: f.calib, Format: calibFormat, TokenBytes: f.tokenBytes}
	j.Eval = prune.Data{Path: f.evalData, Format: evalFormat, TokenBytes: f.tokenBytes}
	if f.model == "" { // the embedded stories260K with its embedded texts
		if j.Model, err = defaultmodel.Dir(); err != nil {
			return err
		}
		j.Name = defaultmodel.Name
		if f.calib == "" {
			j.Calib = prune.Data{Name: "embedded:train_calib.txt", Bytes: defaultmodel.TrainCalib, Format: dataset.Stories}
		}
		if f.evalData == "" {
			j.Eval = prune.Data{Name: "embedded:valid_first100.txt", Bytes: defaultmodel.ValidExcerpt, Format: dataset.Stories}
		}
	}
	j.Out = f.out
	if j.Out == "" { // our own scratch location
		name := j.Name
		if name == "" {
			name = filepath.Base(filepath.Clean(j.Model))
		}
		j.Out = filepath.Join(os.TempDir(), "elsa-stream", fmt.Sprintf("%s-%s-%s", name, j.Method, prune.Label(j.Sparsity, j.Pattern)))
		j.Force = true
		if err := os.MkdirAll(filepath.Dir(j.Out), 0o755); err != nil {
			return err
		}
	}
	return nil
}

// report prints the Result: one JSON object, or the summary.
func report(stdout io.Writer, j *prune.Job, res prune.Result, asJSON bool) error {
	if asJSON {
		return json.NewEncoder(stdout).Encode(res)
	}
	s := res.Settings
	data := fmt.Sprintf("%d x %d calibration tokens", s.NSamples, s.SeqLen)
	if s.Elsa != nil {
		data = fmt.Sprintf("%d steps x %d x %d tokens", s.Elsa.Steps, s.Elsa.Batch, s.SeqLen)
	}
	name := j.Name
	if name == "" {
		name = filepath.Base(filepath.Clean(j.Model))
	}
	fmt.Fprintf(stdout, "pruned %s with %s at %s (%s allocation, %s)\n", name, s.Method, prune.Label(s.Sparsity, j.Pattern), s.Allocation, data)
	fmt.Fprintf(stdout, "output  %s\n", res.Out)
	fmt.Fprintf(stdout, "%-12s %.4f of %s pruned parameters\n", "sparsity", res.Sparsity, commas(res.PrunedParams))
	if h := res.HeldOut; h != nil {
		fmt.Fprintf(stdout, "%-12s elsa %.4f, %s initialisation %.4f (%d calibration tokens held out); wrote %s\n", "held-out ppl",
			h.ElsaPPL, h.Init, h.InitPPL, h.Tokens, h.Returned)
	}
	if res.EvalData != "" {
		fmt.Fprintf(stdout, "%-12s %.4f (%s)\n%-12s %.4f\n", "dense ppl", res.DensePPL, res.EvalData, "pruned ppl", res.PrunedPPL)
	}
	if a := res.AllReduce; a != nil {
		fmt.Fprintf(stdout, "%-12s %d MPI ranks, gradient sums %.1fs for %s\n", "ranks", res.Ranks, a.Seconds, budget.Format(a.Bytes))
	}
	if p := res.Packed; p != nil {
		fmt.Fprintf(stdout, "%-12s %s: %s -> %s (%.2fx smaller)\n", "packed", p.Dir, budget.Format(p.DenseBytes), budget.Format(p.PackedBytes), p.Ratio)
	}
	fmt.Fprintf(stdout, "%-12s %.1fs\n%-12s %s (budget %s)\n", "time", res.Seconds, "peak memory", budget.Format(res.PeakRSS), budget.Format(res.Budget))
	return nil
}

// observer prints a run's notes as "elsa-stream: ..." lines and draws
// "pruning [####    ] 3/5 layers, ETA 12s" on a terminal (nothing
// otherwise).
type observer struct {
	w     io.Writer
	tty   bool
	start time.Time
	open  bool // a progress line is on screen
	label string
}

func newObserver(w io.Writer) *observer {
	o := &observer{w: w}
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			o.tty = true
		}
	}
	return o
}

func (o *observer) Note(msg string) {
	o.end()
	fmt.Fprintln(o.w, "elsa-stream: "+msg)
}

func (o *observer) Progress(label, unit string, done, total int) {
	if !o.tty || total <= 0 {
		return
	}
	if !o.open || o.label != label {
		o.end()
		o.start, o.label, o.open = time.Now(), label, true
	}
	eta := time.Duration(0)
	if done > 0 {
		eta = time.Duration(float64(time.Since(o.start)) / float64(done) * float64(total-done))
	}
	bar := make([]byte, 20*done/total)
	for i := range bar {
		bar[i] = '#'
	}
	fmt.Fprintf(o.w, "\r%s [%-20s] %d/%d %s, ETA %s ", label, bar, done, total, unit, eta.Round(time.Second))
}

// end finishes a progress line on screen.
func (o *observer) end() {
	if o.open {
		fmt.Fprintln(o.w)
		o.open = false
	}
}

// prefixed writes w's lines with a prefix (a rank's messages).
func prefixed(w io.Writer, prefix string) io.Writer {
	return &prefixWriter{w: w, prefix: prefix, start: true}
}

type prefixWriter struct {
	w      io.Writer
	prefix string
	start  bool
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	var out []byte
	for _, c := range b {
		if p.start {
			out = append(out, p.prefix...)
		}
		out = append(out, c)
		p.start = c == '\n'
	}
	if _, err := p.w.Write(out); err != nil {
		return 0, err
	}
	return len(b), nil
}
