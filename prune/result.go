package prune

import (
	"encoding/json"
	"fmt"

	"github.com/elsa-stream/elsa-stream/admm"
)

// Result is what a run produced. The command's summary and --json,
// sparsity.json and the output's safetensors metadata are all made from it.
type Result struct {
	Out  string `json:"out"`
	Work string `json:"work"`
	// Settings are the job's settings with every default resolved.
	Settings Settings `json:"settings"`
	// Tensors are the output's tensors: their zeros and target sparsity.
	Tensors []admm.TensorStats `json:"-"`
	// PrunedParams and Zeros count the pruned tensors; Sparsity is their
	// ratio.
	PrunedParams int64   `json:"pruned_params"`
	Zeros        int64   `json:"zeros"`
	Sparsity     float64 `json:"sparsity"`
	// Seconds of pruning (training included, evaluation not).
	Seconds float64 `json:"seconds"`
	// EvalData names the job's Eval data when the dense and the pruned
	// model were evaluated on it (empty: no evaluation).
	EvalData  string  `json:"eval_data,omitempty"`
	DensePPL  float64 `json:"dense_ppl,omitempty"`
	PrunedPPL float64 `json:"pruned_ppl,omitempty"`
	PeakRSS   int64   `json:"peak_rss_bytes"`
	Budget    int64   `json:"mem_budget"`
	// ResumedAfter is the committed Elsa step the run resumed after (-1:
	// a fresh start).
	ResumedAfter int `json:"resumed_after"`
	// Ranks is the number of processes that trained (1 without MPI), and
	// AllReduce the time in and bytes through their gradient sums (this
	// rank's; nil with one).
	Ranks     int        `json:"ranks"`
	AllReduce *AllReduce `json:"all_reduce,omitempty"`
	// Packed is the packed sparse form written with Job.Pack (nil: none).
	Packed *Packed `json:"packed,omitempty"`
	// HeldOut is Elsa's check against its initialisation (nil: not run).
	HeldOut *HeldOut `json:"held_out,omitempty"`
}

// HeldOut scores Elsa's result and the one-shot model it started from on
// the calibration windows held out from its training, at the model's
// context, and says which model the output holds.
type HeldOut struct {
	Tokens   int     `json:"tokens"`
	ElsaPPL  float64 `json:"elsa_ppl"`
	Init     string  `json:"init"`
	InitPPL  float64 `json:"init_ppl"`
	Returned string  `json:"returned"`
}

// Settings record a run's settings in sparsity.json and the output's
// metadata. Fields are in alphabetical order of their keys, as the
// earlier map-based record had them.
type Settings struct {
	Allocation string      `json:"allocation"`
	Elsa       *ElsaRecord `json:"elsa,omitempty"`
	Method     admm.Method `json:"method"`
	NSamples   int         `json:"nsamples"`
	Pattern    string      `json:"pattern"`
	Seed       uint64      `json:"seed"`
	SeqLen     int         `json:"seqlen"`
	Sparsity   float64     `json:"sparsity"`
}

// ElsaRecord is the Elsa part of Settings.
type ElsaRecord struct {
	Batch          int             `json:"batch"`
	Clip           float64         `json:"clip"`
	Compute        string          `json:"compute"`
	Init           admm.Method     `json:"init"`
	Interval       int             `json:"interval"`
	Lambda         float64         `json:"lambda"`
	LambdaFinal    float64         `json:"lambda_final"`
	LambdaSchedule admm.Schedule   `json:"lambda_schedule"`
	LR             float64         `json:"lr"`
	Projection     admm.Projection `json:"projection"`
	State          string          `json:"state"`
	Steps          int             `json:"steps"`
	TrainDense     bool            `json:"train_dense"`
}

func (r *run) settings() Settings {
	j := &r.job
	s := Settings{Allocation: j.Allocation.String(), Method: j.Method, NSamples: j.NSamples, Pattern: j.Pattern.String(),
		Seed: j.Seed, SeqLen: r.seqLen, Sparsity: j.Sparsity}
	if e := j.Elsa; j.Method.IsElsa() {
		s.Elsa = &ElsaRecord{Batch: e.Batch, Clip: e.Clip, Init: e.Init, Interval: e.Interval, Lambda: e.Lambda, LambdaFinal: e.LambdaFinal,
			LambdaSchedule: e.Schedule, LR: e.LR, Compute: j.Compute.String(), Projection: e.Projection, State: e.State.String(), Steps: e.Steps, TrainDense: e.TrainDense}
	}
	return s
}

// count sums the pruned tensors' parameters and zeros.
func (res *Result) count() {
	res.PrunedParams, res.Zeros = 0, 0
	for _, s := range res.Tensors {
		if s.Target > 0 {
			res.PrunedParams += s.Params
			res.Zeros += s.Zeros
		}
	}
	res.Sparsity = float64(res.Zeros) / float64(max(1, res.PrunedParams))
}

// sparsityJSON is the output's sidecar: settings, totals and every tensor.
func (res *Result) sparsityJSON() ([]byte, error) {
	b, err := json.MarshalIndent(struct {
		PrunedParams int64              `json:"pruned_params"`
		Settings     Settings           `json:"settings"`
		Sparsity     float64            `json:"sparsity"`
		Tensors      []admm.TensorStats `json:"tensors"`
		Zeros        int64              `json:"zeros"`
		HeldOut      *HeldOut           `json:"held_out,omitempty"`
	}{res.PrunedParams, res.Settings, res.Sparsity, res.Tensors, res.Zeros, res.HeldOut}, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("sparsity.json: %w", err)
	}
	return append(b, '\n'), nil
}

// Label is the target as people write it: "90%" or the N:M pattern.
func Label(s float64, p admm.Pattern) string {
	if p.IsNM() {
		return p.String()
	}
	return fmt.Sprintf("%g%%", s*100)
}

// Packed is the packed form of the output: its folder and tensor bytes.
type Packed struct {
	Dir         string  `json:"dir"`
	DenseBytes  int64   `json:"dense_bytes"`
	PackedBytes int64   `json:"packed_bytes"`
	Ratio       float64 `json:"ratio"`
}

// AllReduce accounts the data-parallel sums of a run.
type AllReduce struct {
	Seconds float64 `json:"seconds"`
	Bytes   int64   `json:"bytes"`
}
