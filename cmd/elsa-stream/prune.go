package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/elsa-stream/elsa-stream/admm"
	"github.com/elsa-stream/elsa-stream/dataset"
	"github.com/elsa-stream/elsa-stream/internal/budget"
	"github.com/elsa-stream/elsa-stream/internal/defaultmodel"
	"github.com/elsa-stream/elsa-stream/internal/fsguard"
	"github.com/elsa-stream/elsa-stream/lowmem"
	"github.com/elsa-stream/elsa-stream/model"
	"github.com/elsa-stream/elsa-stream/shard"
	"github.com/elsa-stream/elsa-stream/stream"
	"github.com/elsa-stream/elsa-stream/tokenizer"
)

// copiedFiles are copied verbatim from the input folder when present.
var copiedFiles = []string{shard.ConfigFile, "generation_config.json", tokenizer.HFFile, tokenizer.SentencePieceFile,
	tokenizer.HFConfigFile, "special_tokens_map.json"}

type pruneFlags struct {
	model, out, method, pattern, allocation, calib, calibFormat, work, evalData, evalFormat string
	sparsity, owlM, owlLambda                                                               float64
	nsamples, seqlen, microBatch                                                            int
	seed                                                                                    uint64
	maxShard                                                                                string
	jsonOut, force, noMmap                                                                  bool
	mem                                                                                     memBudgetFlag
	elsa                                                                                    admm.ElsaOptions
	trainDense, resume, streamed                                                            bool
	init, state                                                                             string
	set                                                                                     map[string]bool // flags given on the command line
}

func runPrune(args []string, stdout, stderr io.Writer) error {
	var f pruneFlags
	fs := newFlags("prune", stderr)
	fs.StringVar(&f.model, "model", "", "Hugging Face model folder (default: the embedded stories260K)")
	fs.StringVar(&f.out, "out", "", "output folder (default: <tmp>/elsa-stream/<model>-<method>-<sparsity>)")
	fs.StringVar(&f.method, "method", "elsa", "elsa, elsa-l, magnitude, wanda or sparsegpt")
	fs.Float64Var(&f.sparsity, "sparsity", -1, "fraction of each pruned tensor set to zero, unstructured (default: 0.9 for elsa and elsa-l, 0.5 for one-shot methods)")
	fs.StringVar(&f.pattern, "pattern", "unstructured", "unstructured, 2:4 or 4:8")
	fs.StringVar(&f.allocation, "allocation", "uniform", "uniform, owl, or a FILE of 'module: sparsity' lines")
	fs.Float64Var(&f.owlM, "owl-m", 5, "OWL: outlier threshold, in multiples of the layer's mean Wanda score")
	fs.Float64Var(&f.owlLambda, "owl-lambda", 0.08, "OWL: spread of the layer sparsities around the target")
	fs.StringVar(&f.calib, "calib", "", "calibration file (default with the embedded model: embedded TinyStories train text)")
	fs.StringVar(&f.calibFormat, "calib-format", "stories", "calibration format: stories, text or tokens")
	fs.IntVar(&f.nsamples, "nsamples", 128, "calibration windows")
	fs.IntVar(&f.seqlen, "seqlen", 0, "calibration / training window length (default: the model's context, at most 2048; elsa: a quarter of it)")
	fs.Uint64Var(&f.seed, "seed", 0, "calibration sampling seed")
	fs.IntVar(&f.microBatch, "micro-batch", 0, "calibration windows per forward (default: from the memory plan)")
	fs.Var(&f.mem, "mem-budget", "memory budget: 32G, 512M, 1.5GiB, ... (default 80% of available memory)")
	fs.BoolVar(&f.noMmap, "no-mmap", false, "read weights with pread instead of mmap")
	fs.StringVar(&f.work, "work", "", "work folder for metrics.jsonl (default: <out>.work)")
	fs.StringVar(&f.evalData, "eval", "", "evaluate the pruned model on FILE (default with the embedded model: the embedded validation excerpt)")
	fs.StringVar(&f.evalFormat, "eval-format", "stories", "evaluation format: stories, text or tokens")
	fs.StringVar(&f.maxShard, "max-shard-size", "5GB", "largest output shard")
	fs.BoolVar(&f.jsonOut, "json", false, "print a JSON summary on stdout")
	fs.BoolVar(&f.force, "force", false, "replace an existing output folder")
	d := admm.DefaultElsa()
	fs.IntVar(&f.elsa.Steps, "steps", d.Steps, "elsa: optimizer steps")
	fs.IntVar(&f.elsa.Batch, "batch", d.Batch, "elsa: windows per step")
	fs.Float64Var(&f.elsa.LR, "lr", 0, "elsa: Adam learning rate, decaying linearly to 0 (default: 1e-2 up to 10M parameters, 2e-4 from 1B, log-linear between)")
	fs.Float64Var(&f.elsa.Lambda, "lambda", d.Lambda, "elsa: ADMM penalty λ (start)")
	fs.Float64Var(&f.elsa.LambdaFinal, "lambda-final", -1, "elsa: λ at the last step (default: --lambda)")
	fs.StringVar(&f.elsa.Schedule, "lambda-schedule", d.Schedule, "elsa: constant, linear, cosine or exponential")
	fs.IntVar(&f.elsa.Interval, "interval", d.Interval, "elsa: steps between z/u updates")
	fs.Float64Var(&f.elsa.Clip, "clip", d.Clip, "elsa: global gradient-norm clip (0: none)")
	fs.StringVar(&f.elsa.Projection, "projection", d.Projection, "elsa: magnitude or objective (Adam second moment x v²)")
	fs.BoolVar(&f.trainDense, "train-dense", d.TrainDense, "elsa: also train embeddings, norms and lm_head (no penalty)")
	fs.BoolVar(&f.resume, "resume", false, "elsa: continue an interrupted run from <work>/state (same settings)")
	fs.StringVar(&f.init, "init", "magnitude", "elsa: initial z from the magnitude of W, or from a wanda or sparsegpt pruning")
	fs.StringVar(&f.state, "state", "", "elsa-l: state codecs, e.g. master=bf16-sr,m=dyn8,v=dyn8,zu=int8,grad=bf16 (the default)")
	fs.BoolVar(&f.streamed, "streamed", false, "elsa: stream the optimizer state from disk even when it fits in RAM")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: elsa-stream [prune] [--model DIR] [--out DIR] [--method elsa|elsa-l|magnitude|wanda|sparsegpt]\n"+
			"       [--sparsity S] [--pattern unstructured|2:4|4:8] [--allocation uniform|owl|FILE] [--calib FILE] [--nsamples 128]\n"+
			"       [--seqlen N] [--seed 0] [--mem-budget 32G] [--eval FILE] [--json] [--force]\n"+
			"       elsa: [--steps N] [--batch N] [--lr X] [--lambda X] [--lambda-final X] [--lambda-schedule S] [--interval N]\n"+
			"       [--clip X] [--projection magnitude|objective] [--init magnitude|wanda|sparsegpt] [--state SPEC] [--resume] [--streamed]")
		fs.PrintDefaults()
	}
	if _, err := parseFlags(fs, args, 0); err != nil {
		return err
	}
	f.set = setFlags(fs)
	return prune(f, stdout, stderr)
}

// checkNumbers refuses NaN, infinities and out-of-range values in the
// numeric flags before anything is read or written: a NaN passes every
// "x < lo || x > hi" test and would flow into the model.
func (f *pruneFlags) checkNumbers() error {
	for _, c := range []struct {
		name string
		v    float64
		ok   bool
		want string
	}{
		{"sparsity", f.sparsity, f.sparsity >= 0 && f.sparsity < 1, "0 <= sparsity < 1"},
		{"owl-m", f.owlM, f.owlM > 0, "a positive number"},
		{"owl-lambda", f.owlLambda, f.owlLambda >= 0 && f.owlLambda < 1, "0 <= owl-lambda < 1"},
		{"lr", f.elsa.LR, f.elsa.LR > 0 || (f.elsa.LR == 0 && !f.set["lr"]), "a positive learning rate"},
		{"lambda", f.elsa.Lambda, f.elsa.Lambda > 0, "a positive penalty"},
		{"lambda-final", f.elsa.LambdaFinal, f.elsa.LambdaFinal > 0 || !f.set["lambda-final"], "a positive penalty"},
		{"clip", f.elsa.Clip, f.elsa.Clip >= 0, "a norm >= 0 (0: no clipping)"},
	} {
		if !c.ok || math.IsInf(c.v, 0) {
			return usagef("--%s %g: want %s", c.name, c.v, c.want)
		}
	}
	for _, c := range []struct {
		name string
		v    int
		min  int
	}{{"nsamples", f.nsamples, 1}, {"seqlen", f.seqlen, 0}, {"micro-batch", f.microBatch, 0},
		{"steps", f.elsa.Steps, 1}, {"batch", f.elsa.Batch, 1}, {"interval", f.elsa.Interval, 1}} {
		if c.v < c.min {
			return usagef("--%s %d: want at least %d", c.name, c.v, c.min)
		}
	}
	return nil
}

// checkPaths refuses outputs that would overwrite, delete or lie inside the
// inputs (and the reverse): the output folder is replaced as a whole at the
// end, and the work folder's state is deleted on a fresh start.
func checkPaths(model, out, work string, inputs map[string]string) error {
	if fsguard.Overlap(out, model) {
		return usagef("--out %s and the model folder %s overlap (the same folder, or one inside the other): writing the output would destroy the model; choose another --out", out, model)
	}
	if fsguard.Overlap(work, out) {
		return usagef("--work %s and --out %s overlap: the output folder is replaced as a whole; choose a --work outside it", work, out)
	}
	if fsguard.Overlap(work, model) {
		return usagef("--work %s and the model folder %s overlap: the work folder's state is deleted on a fresh start; choose another --work", work, model)
	}
	for flag, p := range inputs {
		if p == "" || fsguard.IsStdin(p) {
			continue
		}
		if fsguard.Within(p, out) || fsguard.Within(out, p) {
			return usagef("--%s %s lies inside --out %s (or is it), which the run replaces: move it or choose another --out", flag, p, out)
		}
		if fsguard.Within(p, work) || fsguard.Within(work, p) {
			return usagef("--%s %s lies inside --work %s (or is it), whose contents the run deletes: move it or choose another --work", flag, p, work)
		}
	}
	return nil
}

func prune(f pruneFlags, stdout, stderr io.Writer) error {
	start := time.Now()
	method := admm.Method(f.method)
	switch method {
	case admm.MethodMagnitude, admm.MethodWanda, admm.MethodSparseGPT, methodElsa, methodElsaL:
	default:
		return usagef("--method %q: want magnitude, wanda, sparsegpt, elsa or elsa-l", f.method)
	}
	pattern, err := admm.ParsePattern(f.pattern)
	if err != nil {
		return usagef("--pattern: %v", err)
	}
	if !f.set["sparsity"] { // Elsa is for the extreme regime; one-shot methods collapse there
		f.sparsity = 0.5
		if method == methodElsa || method == methodElsaL {
			f.sparsity = 0.9
		}
	}
	if err := f.checkNumbers(); err != nil {
		return err
	}
	calibFormat, err := dataset.ParseFormat(f.calibFormat)
	if err != nil {
		return usagef("--calib-format: %v", err)
	}
	evalFormat, err := dataset.ParseFormat(f.evalFormat)
	if err != nil {
		return usagef("--eval-format: %v", err)
	}
	if f.mem.bytes > 0 {
		if err := budget.CheckRunnable(f.mem.bytes); err != nil {
			return usagef("--mem-budget: %v", err)
		}
	}
	if elsa := method == methodElsa || method == methodElsaL; elsa {
		switch f.elsa.Schedule {
		case "constant", "linear", "cosine", "exponential":
		default:
			return usagef("--lambda-schedule %q: want constant, linear, cosine or exponential", f.elsa.Schedule)
		}
		if f.elsa.Projection != "magnitude" && f.elsa.Projection != "objective" {
			return usagef("--projection %q: want magnitude or objective", f.elsa.Projection)
		}
		switch admm.Method(f.init) {
		case admm.MethodMagnitude, admm.MethodWanda, admm.MethodSparseGPT:
		default:
			return usagef("--init %q: want magnitude, wanda or sparsegpt", f.init)
		}
		if f.state != "" && method != methodElsaL {
			return usagef("--state sets Elsa-L's codecs: use it with --method elsa-l")
		}
		f.elsa.Codecs = lowmem.FP32State
		if method == methodElsaL {
			var err error
			if f.elsa.Codecs, err = lowmem.ParseStateCodecs(f.state, lowmem.ElsaLState); err != nil {
				return usagef("--state: %v", err)
			}
		}
	} else if f.resume || f.streamed {
		return usagef("--resume and --streamed apply to --method elsa and elsa-l")
	}
	maxShard, err := budget.ParseSize(f.maxShard)
	if err != nil {
		return usagef("--max-shard-size: %v", err)
	}
	if maxShard <= 0 {
		return usagef("--max-shard-size %s: want a positive size (e.g. 5GB)", f.maxShard)
	}
	embedded := f.model == ""
	if f.calib != "" && f.evalData != "" && sameFile(f.calib, f.evalData) {
		return usagef("--calib and --eval name the same data (%s): calibrating on the evaluation text inflates the result; use training text for --calib", f.calib)
	}
	dir := f.model
	if embedded {
		if dir, err = defaultmodel.Dir(); err != nil {
			return err
		}
	}
	ledger := budget.New(f.mem.value())
	src, err := stream.OpenWith(dir, stream.Options{NoMmap: f.noMmap, Ledger: ledger})
	if err != nil {
		return err
	}
	defer src.Close()
	T := f.seqlen
	switch {
	case T > 0:
	case method == methodElsa || method == methodElsaL:
		T = admm.DefaultSeqLen(src.Cfg.MaxPositions)
	default:
		T = min(src.Cfg.MaxPositions, 2048)
	}
	if err := src.Cfg.CheckSeqLen(T); err != nil {
		return usagef("--seqlen: %v", err)
	}
	if err := pattern.Fits(src.Cfg); err != nil {
		return usagef("--pattern: %v", err)
	}
	if f.elsa.LR == 0 {
		f.elsa.LR = admm.DefaultLR(src.Model.TotalParams())
	}
	name := filepath.Base(filepath.Clean(dir))
	if embedded {
		name = defaultmodel.Name
	}
	out := f.out
	force := f.force
	if out == "" {
		out = filepath.Join(os.TempDir(), "elsa-stream", fmt.Sprintf("%s-%s-%s", name, method, sparsityLabel(f.sparsity, pattern)))
		force = true // our own scratch location
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			return err
		}
	}
	if _, err := os.Stat(out); err == nil && !force {
		return fmt.Errorf("%s already exists (use --force to replace it)", out)
	}
	work := f.work
	if work == "" {
		work = out + ".work"
	}
	if err := checkPaths(dir, out, work, map[string]string{"calib": f.calib, "eval": f.evalData, "allocation": f.allocation}); err != nil {
		return err
	}

	// Memory plan: one layer, the calibration activations, the statistics.
	job, batch := stream.Prune, f.nsamples
	switch method {
	case methodElsa:
		job, batch = stream.Elsa, f.elsa.Batch
	case methodElsaL:
		job, batch = stream.ElsaL, f.elsa.Batch
	}
	plan, err := stream.MakePlan(stream.PlanInput{Cfg: src.Cfg, WeightBytes: weightBytes(src.Model.Config), Batch: batch,
		SeqLen: T, Budget: ledger.Limit(), Job: job, GFLOPS: 1, Hessians: method == admm.MethodSparseGPT || f.init == "sparsegpt"})
	if err != nil {
		return err
	}
	// The ledger reserves mapped pages and state read buffers as they are
	// used; the rest of the plan is held for the whole run.
	var mapped, selfReserved int64
	for _, c := range plan.RAM {
		if strings.HasPrefix(c.Name, "mapped pages") {
			mapped = c.Bytes
		}
		if c.Name == stream.LineStateIO {
			selfReserved += c.Bytes
		}
	}
	ledger.LimitRuntime(mapped)
	hold, err := ledger.Reserve(string(job)+" plan", plan.RAMTotal-mapped-selfReserved)
	if err != nil {
		return err
	}
	defer hold.Release()
	mb := plan.MicroBatch
	if f.microBatch > 0 {
		mb = f.microBatch
	}

	// Calibration windows.
	var tok tokenizer.Tokenizer
	tokenizerFor := func(format dataset.Format) (tokenizer.Tokenizer, error) {
		var err error
		if tok == nil && format != dataset.Tokens {
			tok, err = tokenizer.Load(dir, src.Cfg.Vocab)
		}
		return tok, err
	}
	var inputs []int
	var calibIDs []int
	if method.NeedsCalibration() || f.allocation == "owl" {
		format := calibFormat
		if _, err := tokenizerFor(format); err != nil {
			return err
		}
		var ids []int
		switch {
		case f.calib != "":
			ids, err = dataset.Load(f.calib, tok, dataset.Options{Format: format, Vocab: src.Cfg.Vocab})
		case embedded:
			ids, err = dataset.Parse("embedded:train_calib.txt", defaultmodel.TrainCalib, tok, dataset.Options{Format: dataset.Stories, Vocab: src.Cfg.Vocab})
		default:
			return usagef("--method %s needs --calib FILE (training-distribution text)", method)
		}
		if err != nil {
			return err
		}
		if inputs, _, err = dataset.CalibWindows(ids, T, f.nsamples, f.seed); err != nil {
			return err
		}
		calibIDs = ids
	}

	// Evaluation data, read and checked before anything is written (the
	// output's tokenizer files are the input's, copied verbatim).
	var evalIDs []int
	evalName := f.evalData
	if f.evalData != "" || embedded {
		data := defaultmodel.ValidExcerpt
		if f.evalData == "" {
			evalName = "embedded:valid_first100.txt"
		} else if data, err = dataset.ReadFile(f.evalData); err != nil {
			return err
		}
		t, err := tokenizerFor(evalFormat)
		if err != nil {
			return err
		}
		if evalIDs, err = dataset.Parse(evalName, data, t, dataset.Options{Format: evalFormat, Vocab: src.Cfg.Vocab}); err != nil {
			return err
		}
	}

	opt := admm.OneShotOptions{Method: method, Sparsity: f.sparsity, Pattern: pattern, MicroBatch: mb,
		Log: func(format string, args ...any) { fmt.Fprintf(stderr, "elsa-stream: "+format+"\n", args...) }}
	switch f.allocation {
	case "uniform":
	case "owl":
		if pattern.IsNM() {
			return usagef("--allocation owl needs an unstructured pattern")
		}
		per, err := admm.OWL(src, inputs, f.nsamples, T, f.sparsity, f.owlM, f.owlLambda, mb)
		if err != nil {
			return err
		}
		opt.LayerSparsity = func(tensor string) float64 {
			var l int
			fmt.Sscanf(strings.TrimPrefix(tensor, "model.layers."), "%d", &l)
			return per[l]
		}
	default:
		if pattern.IsNM() {
			return usagef("--allocation FILE needs an unstructured pattern")
		}
		b, err := fsguard.ReadFile(f.allocation)
		if err != nil {
			return err
		}
		if opt.LayerSparsity, err = admm.ParseAllocation(string(b), f.sparsity); err != nil {
			return fmt.Errorf("%s: %v", f.allocation, err)
		}
	}

	// From here on files are created: hold the work folder and the output
	// target exclusively, and clear what dead runs left there.
	if err := os.MkdirAll(work, 0o755); err != nil {
		return err
	}
	locks, err := lockRun(out, work, force, stderr)
	if err != nil {
		return err
	}
	defer locks.release()
	flags := os.O_CREATE | os.O_WRONLY | os.O_TRUNC
	if f.resume {
		flags = os.O_CREATE | os.O_WRONLY | os.O_APPEND
	}
	metrics, err := os.OpenFile(filepath.Join(work, "metrics.jsonl"), flags, 0o644)
	if err != nil {
		return err
	}
	defer metrics.Close()
	progress := newProgress(stderr, src.Cfg.Layers, "pruning", "layers")
	opt.Progress = func(l int) {
		progress.step()
		json.NewEncoder(metrics).Encode(map[string]any{"layer": l, "seconds": time.Since(start).Seconds(), "ledger_peak": ledger.Peak()})
	}

	summary := map[string]any{"method": method, "sparsity": f.sparsity, "pattern": pattern.String(), "allocation": f.allocation,
		"nsamples": f.nsamples, "seqlen": T, "seed": f.seed}
	if f.elsa.LambdaFinal < 0 {
		f.elsa.LambdaFinal = f.elsa.Lambda
	}
	if method == methodElsa || method == methodElsaL {
		summary["elsa"] = map[string]any{"steps": f.elsa.Steps, "batch": f.elsa.Batch, "lr": f.elsa.LR, "lambda": f.elsa.Lambda,
			"lambda_final": f.elsa.LambdaFinal, "lambda_schedule": f.elsa.Schedule, "interval": f.elsa.Interval, "clip": f.elsa.Clip,
			"projection": f.elsa.Projection, "train_dense": f.trainDense, "init": f.init, "state": f.elsa.Codecs.String()}
	}
	md, _ := json.Marshal(summary)
	w, err := shard.NewWriter(out, admm.OutputOrder(src), shard.WriterOptions{MaxShardSize: maxShard, Force: force, FiniteOnly: true,
		Metadata: map[string]string{"elsa_stream": string(md)}})
	if err != nil {
		return err
	}
	var stats []admm.TensorStats
	if method == methodElsa || method == methodElsaL {
		stats, err = runElsa(f, src, calibIDs, T, opt.LayerSparsity, pattern, plan, metrics, stderr, w, work)
	} else {
		stats, err = admm.OneShot(src, inputs, f.nsamples, T, opt, w)
	}
	progress.done()
	if err != nil {
		w.Abort()
		return err
	}
	var pruned, zeros int64
	for _, s := range stats {
		if s.Target > 0 {
			pruned += s.Params
			zeros += s.Zeros
		}
	}
	sidecar, _ := json.MarshalIndent(map[string]any{"settings": summary, "pruned_params": pruned, "zeros": zeros,
		"sparsity": float64(zeros) / float64(max(1, pruned)), "tensors": stats}, "", "  ")
	if err := w.AddFile("sparsity.json", append(sidecar, '\n')); err != nil {
		return err
	}
	for _, name := range copiedFiles {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err := w.CopyFile(p); err != nil {
			return err
		}
	}
	if err := w.Commit(); err != nil {
		return err
	}
	pruneSeconds := time.Since(start).Seconds()

	// Evaluation of dense and pruned models.
	res := map[string]any{"out": out, "sparsity": float64(zeros) / float64(max(1, pruned)), "pruned_params": pruned,
		"seconds": pruneSeconds, "settings": summary}
	if evalIDs != nil {
		for _, m := range []struct{ key, dir string }{{"dense_ppl", dir}, {"pruned_ppl", out}} {
			ppl, err := evalPPL(m.dir, evalIDs, ledger.Limit())
			if err != nil {
				return err
			}
			res[m.key] = ppl
		}
	}
	res["peak_rss_bytes"] = peakRSS()
	if f.jsonOut {
		return json.NewEncoder(stdout).Encode(res)
	}
	data := fmt.Sprintf("%d x %d calibration tokens", f.nsamples, T)
	if method == methodElsa || method == methodElsaL {
		data = fmt.Sprintf("%d steps x %d x %d tokens", f.elsa.Steps, f.elsa.Batch, T)
	}
	fmt.Fprintf(stdout, "pruned %s with %s at %s (%s allocation, %s)\n", name, method, sparsityLabel(f.sparsity, pattern), f.allocation, data)
	fmt.Fprintf(stdout, "output  %s\n", out)
	fmt.Fprintf(stdout, "%-12s %s\n", "sparsity", fmt.Sprintf("%.4f of %s pruned parameters", res["sparsity"], commas(pruned)))
	if d, ok := res["dense_ppl"]; ok {
		fmt.Fprintf(stdout, "%-12s %.4f (%s)\n%-12s %.4f\n", "dense ppl", d, evalName, "pruned ppl", res["pruned_ppl"])
	}
	fmt.Fprintf(stdout, "%-12s %.1fs\n%-12s %s (budget %s)\n", "time", pruneSeconds, "peak memory", budget.Format(peakRSS()), budget.Format(ledger.Limit()))
	return nil
}

// runLocks are the exclusive locks a prune holds for its whole run.
type runLocks struct{ work, out *fsguard.Lock }

// lockRun locks the work folder (a lock file inside it) and the output
// target (a lock file beside it, removed at the end), then re-checks that
// the target still may be written and removes the temporary folders runs
// that died left beside it and in the work folder.
func lockRun(out, work string, force bool, stderr io.Writer) (*runLocks, error) {
	l := &runLocks{}
	var err error
	if l.work, err = fsguard.Acquire(filepath.Join(work, ".lock"), "the work folder "+work, false); err != nil {
		return nil, err
	}
	lockOut := filepath.Join(filepath.Dir(filepath.Clean(out)), "."+filepath.Base(filepath.Clean(out))+".lock")
	if l.out, err = fsguard.Acquire(lockOut, "the output folder "+out, true); err != nil {
		l.release()
		return nil, err
	}
	if _, err := os.Stat(out); err == nil && !force {
		l.release()
		return nil, fmt.Errorf("%s already exists (use --force to replace it)", out)
	}
	stale, err := shard.RemoveStaleTemps(out)
	if err == nil {
		var more []string
		more, err = stream.RemoveStaleCheckpoints(work)
		stale = append(stale, more...)
	}
	if err != nil {
		l.release()
		return nil, err
	}
	for _, p := range stale {
		fmt.Fprintf(stderr, "elsa-stream: removed %s, left by a run that died\n", p)
	}
	return l, nil
}

func (l *runLocks) release() {
	l.out.Release()
	l.work.Release()
}

// methodElsa is surrogate-free ADMM with exact (fp32) state; methodElsaL
// the same with its state in low precision.
const (
	methodElsa  = admm.Method("elsa")
	methodElsaL = admm.Method("elsa-l")
)

// runElsa trains with Elsa. The optimizer state lives in <work>/state
// (exact for elsa, through the --state codecs for elsa-l), committed every
// step; --resume continues from its last committed step. It stays in RAM
// as well when the 24 B/param of state and gradient fit the budget next to
// the plan (unless --streamed); otherwise it is streamed from disk one
// tensor at a time, gradients spilled to <work>/grads.
func runElsa(f pruneFlags, src *stream.Source, ids []int, T int, layer func(string) float64, pattern admm.Pattern, plan *stream.Plan,
	metrics io.Writer, stderr io.Writer, w admm.TensorSink, work string) ([]admm.TensorStats, error) {
	opt := f.elsa
	opt.Sparsity, opt.Pattern, opt.LayerSparsity, opt.SeqLen, opt.Seed, opt.TrainDense = f.sparsity, pattern, layer, T, f.seed, f.trainDense
	opt.MicroBatch = plan.MicroBatch
	if f.microBatch > 0 {
		opt.MicroBatch = f.microBatch
	}
	if plan.Granularity != "layer" {
		opt.Granularity = model.Attention
	}
	if plan.SpillActivations {
		opt.SpillDir = work
	}
	var trained int64
	for _, n := range src.Model.Names {
		t, _ := src.Model.Tensor(n)
		trained += t.NumElements()
	}
	extra := 24 * trained // decoded W, m, v, z, u and the gradient
	opt.Resident = !f.streamed && plan.RAMTotal+extra <= plan.Budget
	if opt.Resident {
		hold, err := src.Ledger.Reserve("optimizer state and gradients in RAM (24 B/param)", extra)
		if err != nil {
			return nil, err
		}
		defer hold.Release()
	}
	var err error
	if opt.Grads, err = lowmem.NewSpill(filepath.Join(work, "grads")); err != nil {
		return nil, err
	}
	mode := "streamed from " + work
	if opt.Resident {
		mode = "in RAM (and committed to " + work + ")"
	}
	fmt.Fprintf(stderr, "elsa-stream: %s, %d steps x %d windows x %d tokens, state %s, units: %s, micro-batch %d\n",
		f.method, opt.Steps, opt.Batch, T, mode, plan.Granularity, opt.MicroBatch)

	dir := filepath.Join(work, "state")
	if !f.resume {
		if err := os.RemoveAll(dir); err != nil {
			return nil, err
		}
	}
	id, _ := json.Marshal([]any{f.method, f.model, f.sparsity, f.pattern, f.allocation, f.calib, f.seed, T, opt.Steps, opt.Batch,
		opt.LR, opt.Lambda, opt.LambdaFinal, opt.Schedule, opt.Interval, opt.Clip, opt.Projection, opt.TrainDense, f.init,
		opt.Codecs.String(), opt.MicroBatch})
	store, err := lowmem.Open(dir, string(id), src.Ledger)
	if err != nil {
		return nil, err
	}
	if f.resume && store.LastStep() >= 0 {
		fmt.Fprintf(stderr, "elsa-stream: resuming after step %d of %d from %s\n", store.LastStep(), opt.Steps, dir)
	}
	opt.State, opt.Resume = store, f.resume
	if opt.InitFrom, err = elsaInit(f, src, ids, T, layer, pattern, work, plan.MicroBatch, stderr); err != nil {
		return nil, err
	}
	if opt.InitFrom != nil {
		defer opt.InitFrom.Close()
	}
	p := newProgress(stderr, opt.Steps, string(f.method), "steps")
	enc := json.NewEncoder(metrics)
	opt.Step = func(m admm.StepMetrics) {
		enc.Encode(m)
		p.step()
	}
	stats, err := admm.Elsa(src, ids, opt, w)
	p.done()
	return stats, err
}

// elsaInit runs the one-shot baseline --init names (wanda, sparsegpt) into
// <work>/init, whose pruned tensors are Elsa's initial z; magnitude needs
// nothing (nil). A resumed run reuses the folder.
func elsaInit(f pruneFlags, src *stream.Source, ids []int, T int, layer func(string) float64, pattern admm.Pattern,
	work string, mb int, stderr io.Writer) (*stream.Source, error) {
	method := admm.Method(f.init)
	if method == admm.MethodMagnitude {
		return nil, nil
	}
	dir := filepath.Join(work, "init")
	if _, err := os.Stat(dir); err != nil || !f.resume {
		inputs, _, err := dataset.CalibWindows(ids, T, f.nsamples, f.seed)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(stderr, "elsa-stream: initial z from %s (%d x %d calibration tokens)\n", method, f.nsamples, T)
		if _, err := shard.RemoveStaleTemps(dir); err != nil {
			return nil, err
		}
		w, err := shard.NewWriter(dir, admm.OutputOrder(src), shard.WriterOptions{Force: true, FiniteOnly: true})
		if err != nil {
			return nil, err
		}
		opt := admm.OneShotOptions{Method: method, Sparsity: f.sparsity, Pattern: pattern, MicroBatch: mb, LayerSparsity: layer}
		if _, err := admm.OneShot(src, inputs, f.nsamples, T, opt, w); err != nil {
			w.Abort()
			return nil, err
		}
		if err := w.CopyFile(filepath.Join(src.Model.Dir, shard.ConfigFile)); err != nil {
			return nil, err
		}
		if err := w.Commit(); err != nil {
			return nil, err
		}
	}
	return stream.OpenWith(dir, stream.Options{Ledger: src.Ledger})
}

func sparsityLabel(s float64, p admm.Pattern) string {
	if p.IsNM() {
		return p.String()
	}
	return fmt.Sprintf("%g%%", s*100)
}

// sameFile reports whether two paths are the same file or hold the same
// bytes (standard input is never read for the comparison).
func sameFile(a, b string) bool {
	ia, ea := os.Stat(a)
	ib, eb := os.Stat(b)
	if ea == nil && eb == nil && os.SameFile(ia, ib) {
		return true
	}
	if fsguard.IsStdin(a) || fsguard.IsStdin(b) {
		return false
	}
	ba, ea := fsguard.ReadFile(a)
	bb, eb := fsguard.ReadFile(b)
	return ea == nil && eb == nil && sha256.Sum256(ba) == sha256.Sum256(bb)
}

// evalPPL is the perplexity of the model in dir on the token stream ids,
// in windows of its context.
func evalPPL(dir string, ids []int, limit int64) (float64, error) {
	src, err := stream.OpenWith(dir, stream.Options{})
	if err != nil {
		return 0, err
	}
	defer src.Close()
	opt, _, err := stream.EvalBudget(src.Cfg, weightBytes(src.Model.Config), src.Cfg.MaxPositions, limit)
	if err != nil {
		return 0, err
	}
	r, err := src.Evaluate(dataset.EvalWindows(ids, src.Cfg.MaxPositions), opt)
	if err != nil {
		return 0, err
	}
	return r.PPL(), nil
}

// peakRSS is the process's maximum resident set size so far.
func peakRSS() int64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return ru.Maxrss * 1024 // Linux reports KiB
}

// progress draws "pruning [####    ] 3/5 layers, ETA 12s" on a terminal and
// nothing otherwise.
type progress struct {
	w            io.Writer
	total, count int
	label, unit  string
	start        time.Time
	tty          bool
}

func newProgress(w io.Writer, total int, label, unit string) *progress {
	p := &progress{w: w, total: total, label: label, unit: unit, start: time.Now()}
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			p.tty = true
		}
	}
	return p
}

func (p *progress) step() {
	p.count++
	if !p.tty {
		return
	}
	el := time.Since(p.start)
	eta := time.Duration(float64(el) / float64(p.count) * float64(p.total-p.count))
	bar := bytes.Repeat([]byte("#"), 20*p.count/p.total)
	fmt.Fprintf(p.w, "\r%s [%-20s] %d/%d %s, ETA %s ", p.label, bar, p.count, p.total, p.unit, eta.Round(time.Second))
}

func (p *progress) done() {
	if p.tty {
		fmt.Fprintln(p.w)
	}
}
