// Package prune is the pruning pipeline as a library: a Job holds every
// setting that affects the result as a typed value, Validate checks it
// before any file is created or changed, and Run carries it out - plan
// within the memory budget, calibration and evaluation data, per-tensor
// sparsity allocation, the method (a one-shot baseline or Elsa / Elsa-L),
// the Hugging Face output folder with its sparsity.json, and the dense and
// pruned perplexities - returning a typed Result from which every report
// is made.
//
//	res, err := prune.Run(ctx, prune.Job{Model: dir, Out: out, Method: admm.MethodElsa, ...})
//
// A run holds exclusive locks on its work folder and output target, never
// writes into or over its inputs, and stops at the next safe point when ctx
// is cancelled: Elsa's state of the last committed step stays in the work
// folder and the same Job with Elsa.Resume continues it (docs/design.md).
package prune

import (
	"errors"
	"fmt"
	"math"
	"os"

	"github.com/elsa-stream/elsa-stream/internal/kernels"
	"github.com/elsa-stream/elsa-stream/internal/mpi"

	"github.com/elsa-stream/elsa-stream/admm"
	"github.com/elsa-stream/elsa-stream/dataset"
	"github.com/elsa-stream/elsa-stream/internal/budget"
	"github.com/elsa-stream/elsa-stream/internal/fsguard"
	"github.com/elsa-stream/elsa-stream/lowmem"
	"github.com/elsa-stream/elsa-stream/shard"
)

// Job is one pruning run. The zero value of a field means its default
// where the field says so.
type Job struct {
	// Model is the Hugging Face model folder to prune (read only).
	Model string
	// Name names the model in messages (default: Model's base name).
	Name string
	// Out is the output folder, written to a temporary folder beside it
	// and renamed at the end; it must not exist unless Force.
	Out   string
	Force bool
	// Pack, when set, is a folder for the packed sparse form of the output
	// as well (shard.Pack; replaced with Force too).
	Pack string
	// Comm is the job's processes (nil: this one alone). With more than
	// one (an MPI job), Elsa trains data parallel and the result does not
	// depend on their number (up to float32 summation order); rank 0
	// writes Out, Pack and the metrics, every other rank keeps its own
	// copy of the state in Work + ".rank-N" and writes nothing else.
	Comm mpi.Comm
	// Work holds metrics.jsonl, Elsa's state, spills and the --init run
	// (default: Out + ".work").
	Work string

	Method admm.Method
	// Sparsity is the fraction of each pruned tensor set to zero
	// (unstructured; N:M patterns imply theirs). See DefaultSparsity.
	Sparsity   float64
	Pattern    admm.Pattern
	Allocation Allocation

	// Calib is the calibration (one-shot) or training (Elsa) text; Eval,
	// when set, the data the dense and the pruned model are evaluated on.
	Calib, Eval Data
	// NSamples calibration windows of SeqLen tokens (0: the model's
	// context, at most 2048; Elsa: DefaultSeqLen) drawn with Seed.
	NSamples, SeqLen int
	Seed             uint64
	// MicroBatch is the windows per forward (0: from the memory plan).
	MicroBatch int
	// MemBudget bounds the whole process (0: budget.Default()).
	MemBudget int64
	NoMmap    bool
	// MaxShardSize bounds one output shard (0: shard.DefaultMaxShardSize).
	MaxShardSize int64

	Elsa ElsaSettings
	// Compute is the precision of Elsa's training GEMMs (kernels.ComputeBF16:
	// bf16 operands, float32 accumulation, as autocast). The one-shot
	// methods and every reported perplexity run in float32 whatever it is,
	// so runs in either precision compare.
	Compute kernels.Compute

	// Observer hears notes and progress (nil: nothing is reported).
	Observer Observer
}

// ElsaSettings are Elsa's and Elsa-L's settings (docs/design.md, "Elsa").
type ElsaSettings struct {
	Steps, Batch int
	// LR is Adam's learning rate, decaying linearly to 0 (0: admm.DefaultLR
	// for the model's size).
	LR float64
	// Lambda is the penalty λ at the start, LambdaFinal at the last step
	// (0: Lambda), moved by Schedule.
	Lambda, LambdaFinal float64
	Schedule            admm.Schedule
	Interval            int
	Clip                float64
	Projection          admm.Projection
	TrainDense          bool
	// Init is where z starts: the magnitude of W, or a Wanda or SparseGPT
	// pruning run first into Work/init.
	Init admm.Method
	// State are the state codecs (zero: exact fp32 for elsa,
	// lowmem.ElsaLState for elsa-l).
	State lowmem.StateCodecs
	// Streamed streams the state from disk even when it fits in RAM;
	// Resume continues the state in Work from its last committed step.
	Streamed, Resume bool
	// Fallback writes Elsa's one-shot initialisation instead of its
	// result when the result scores worse on the calibration windows held
	// out from training (both are always scored and reported).
	Fallback bool
}

// AllocationKind is how per-layer sparsities are chosen.
type AllocationKind int

// The allocations: one sparsity everywhere, outlier-weighted (OWL), or the
// "module: sparsity" lines of a file.
const (
	Uniform AllocationKind = iota
	OWL
	FromFile
)

// Allocation sets the sparsity of each pruned tensor.
type Allocation struct {
	Kind AllocationKind
	File string // FromFile
	// OWL: the outlier threshold M in multiples of a layer's mean Wanda
	// score, and λ, the spread of the layer sparsities around the target.
	OWLM, OWLLambda float64
}

// String is "uniform", "owl" or the file's path (as sparsity.json records it).
func (a Allocation) String() string {
	switch a.Kind {
	case OWL:
		return "owl"
	case FromFile:
		return a.File
	}
	return "uniform"
}

// Data is a data file, or bytes held in memory (Path empty, Bytes set:
// the embedded texts), read as Format.
type Data struct {
	Path   string // a regular file, or "-" / /dev/stdin
	Name   string // names in-memory data in messages
	Bytes  []byte
	Format dataset.Format
	// TokenBytes is 2 or 4 for the tokens format (0: 2).
	TokenBytes int
}

// IsSet reports whether d names data.
func (d Data) IsSet() bool { return d.Path != "" || d.Bytes != nil }

func (d Data) String() string {
	if d.Path != "" {
		return d.Path
	}
	return d.Name
}

// Observer hears what a run has to say while it runs.
type Observer interface {
	// Note is one line for the user (what is happening, what was cleaned).
	Note(msg string)
	// Progress reports done of total units (layers, steps) of a phase.
	Progress(label, unit string, done, total int)
}

// ErrInvalid is wrapped by every refusal of a Job's settings: the job was
// not started and nothing was written.
var ErrInvalid = errors.New("invalid job")

// ErrOutputExists refuses an output folder that exists when Force is not
// set (it is the shard writer's refusal too).
var ErrOutputExists = shard.ErrExists

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// DefaultSparsity is the target a method is meant for: 0.9 for Elsa (the
// extreme regime), 0.5 for the one-shot baselines (which collapse beyond).
func DefaultSparsity(m admm.Method) float64 {
	if m.IsElsa() {
		return 0.9
	}
	return 0.5
}

// DefaultElsaSettings are the defaults for small models (admm.DefaultElsa).
func DefaultElsaSettings() ElsaSettings {
	d := admm.DefaultElsa()
	return ElsaSettings{Steps: d.Steps, Batch: 0, Lambda: d.Lambda, Schedule: d.Schedule, Interval: d.Interval,
		Clip: d.Clip, Projection: d.Projection, TrainDense: d.TrainDense, Init: admm.MethodMagnitude, Fallback: true}
}

// WorkDir is the work folder: Work, or Out + ".work".
func (j *Job) WorkDir() string {
	if j.Work != "" {
		return j.Work
	}
	return j.Out + ".work"
}

// Validate checks everything that can be checked without reading the
// model: names, numbers (NaN, infinities and ranges), data formats and
// that no output overlaps an input. Run calls it first; errors wrap
// ErrInvalid.
func (j *Job) Validate() error {
	if j.Model == "" || j.Out == "" {
		return invalidf("a job needs a model folder and an output folder")
	}
	if _, err := os.Stat(j.Out); err == nil && !j.Force {
		return fmt.Errorf("%s %w", j.Out, ErrOutputExists)
	}
	if _, err := admm.ParseMethod(string(j.Method)); err != nil {
		return invalidf("%v", err)
	}
	if !(j.Sparsity >= 0 && j.Sparsity < 1) {
		return invalidf("sparsity %g: want 0 <= sparsity < 1", j.Sparsity)
	}
	if j.Pattern.IsNM() && !(j.Pattern.N > 0 && j.Pattern.N < j.Pattern.M) {
		return invalidf("pattern %s: want N:M with 0 < N < M", j.Pattern)
	}
	switch a := j.Allocation; a.Kind {
	case Uniform:
	case OWL, FromFile:
		if j.Pattern.IsNM() {
			return invalidf("allocation %s needs an unstructured pattern", a)
		}
		if a.Kind == OWL && !(a.OWLM > 0 && !math.IsInf(a.OWLM, 0)) {
			return invalidf("owl-m %g: want a finite threshold > 0", a.OWLM)
		}
		if a.Kind == OWL && !(a.OWLLambda >= 0 && a.OWLLambda < 1) {
			return invalidf("owl-lambda %g: want 0 <= owl-lambda < 1", a.OWLLambda)
		}
		if a.Kind == FromFile && a.File == "" {
			return invalidf("allocation from a file needs the file")
		}
	default:
		return invalidf("unknown allocation kind %d", a.Kind)
	}
	for _, c := range []struct {
		name string
		v    int
		min  int
	}{{"nsamples", j.NSamples, 1}, {"seqlen", j.SeqLen, 0}, {"micro-batch", j.MicroBatch, 0}} {
		if c.v < c.min {
			return invalidf("%s %d: want at least %d", c.name, c.v, c.min)
		}
	}
	if j.MemBudget < 0 || j.MaxShardSize < 0 {
		return invalidf("memory budget and shard size must not be negative")
	}
	if j.MemBudget > 0 {
		if err := budget.CheckRunnable(j.MemBudget); err != nil {
			return invalidf("mem-budget: %v", err)
		}
	}
	if j.Method.IsElsa() {
		if err := j.Elsa.validate(j.Method); err != nil {
			return err
		}
	} else if j.Elsa.Resume || j.Elsa.Streamed {
		return invalidf("resume and streamed state apply to Elsa and Elsa-L only")
	}
	if (j.Method.NeedsCalibration() || j.Allocation.Kind == OWL) && !j.Calib.IsSet() {
		return invalidf("method %s needs calibration data (training-distribution text)", j.Method)
	}
	for _, d := range []Data{j.Calib, j.Eval} {
		if _, err := dataset.ParseFormat(string(d.Format)); d.IsSet() && err != nil {
			return invalidf("%s: %v", d, err)
		}
	}
	if j.Calib.Path != "" && j.Eval.Path != "" && sameData(j.Calib.Path, j.Eval.Path) {
		return invalidf("the calibration and the evaluation data are the same (%s): calibrating on the evaluation text inflates the result; calibrate on training text", j.Calib.Path)
	}
	return j.checkPaths()
}

func (e *ElsaSettings) validate(m admm.Method) error {
	for _, c := range []struct {
		name string
		ok   bool
		v    float64
		want string
	}{
		{"lr", e.LR >= 0, e.LR, "a positive learning rate (0: the default)"},
		{"lambda", e.Lambda > 0, e.Lambda, "a positive penalty"},
		{"lambda-final", e.LambdaFinal >= 0, e.LambdaFinal, "a positive penalty (0: lambda)"},
		{"clip", e.Clip >= 0, e.Clip, "a norm >= 0 (0: no clipping)"},
	} {
		if !c.ok || math.IsInf(c.v, 0) {
			return invalidf("%s %g: want %s", c.name, c.v, c.want)
		}
	}
	for _, c := range []struct {
		name   string
		v, min int
	}{{"steps", e.Steps, 1}, {"batch", e.Batch, 0}, {"interval", e.Interval, 1}} { // batch 0: admm.DefaultBatch
		if c.v < c.min {
			return invalidf("%s %d: want at least %d", c.name, c.v, c.min)
		}
	}
	if _, err := admm.ParseSchedule(string(e.Schedule)); err != nil {
		return invalidf("%v", err)
	}
	if _, err := admm.ParseProjection(string(e.Projection)); err != nil {
		return invalidf("%v", err)
	}
	if !e.Init.IsOneShot() {
		return invalidf("init %q: want magnitude, wanda or sparsegpt", e.Init)
	}
	if e.State.Master != nil && m != admm.MethodElsaL {
		return invalidf("state codecs are Elsa-L's: use them with elsa-l")
	}
	return nil
}

// checkPaths refuses outputs that would overwrite, delete or lie inside
// the inputs (and the reverse): the output folder is replaced as a whole
// at the end, and the work folder's state is deleted on a fresh start.
func (j *Job) checkPaths() error {
	out, work := j.Out, j.WorkDir()
	if fsguard.Overlap(out, j.Model) {
		return invalidf("the output folder %s and the model folder %s overlap (the same folder, or one inside the other): writing the output would destroy the model; choose another output folder", out, j.Model)
	}
	if fsguard.Overlap(work, out) {
		return invalidf("the work folder %s and the output folder %s overlap: the output folder is replaced as a whole; choose a work folder outside it", work, out)
	}
	if fsguard.Overlap(work, j.Model) {
		return invalidf("the work folder %s and the model folder %s overlap: the work folder's state is deleted on a fresh start; choose another work folder", work, j.Model)
	}
	for what, p := range map[string]string{"calibration data": j.Calib.Path, "evaluation data": j.Eval.Path, "allocation file": j.Allocation.File} {
		if p == "" || fsguard.IsStdin(p) {
			continue
		}
		if fsguard.Within(p, out) || fsguard.Within(out, p) {
			return invalidf("the %s %s lies inside the output folder %s (or is it), which the run replaces: move it or choose another output folder", what, p, out)
		}
		if fsguard.Within(p, work) || fsguard.Within(work, p) {
			return invalidf("the %s %s lies inside the work folder %s (or is it), whose contents the run deletes: move it or choose another work folder", what, p, work)
		}
	}
	return nil
}
