package prune

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/elsa-stream/elsa-stream/dataset"
	"github.com/elsa-stream/elsa-stream/internal/kernels"
	"github.com/elsa-stream/elsa-stream/lowmem"
	"github.com/elsa-stream/elsa-stream/shard"
)

// fingerprint is a run's identity for resuming: every setting that
// affects the result, by name, with digests where a value is large (the
// model's files, the calibration token ids, the resolved allocation). A
// resume is accepted only when every entry is equal; otherwise the
// entries that differ are named.
type fingerprint map[string]string

// String is the canonical form stored in the state journal (keys sorted).
func (f fingerprint) String() string {
	b, _ := json.Marshal(map[string]string(f)) // maps marshal with sorted keys
	return string(b)
}

func (r *run) fingerprint() (fingerprint, error) {
	j, e := &r.job, r.job.Elsa
	model, err := modelDigest(r.src.Model)
	if err != nil {
		return nil, err
	}
	f := fingerprint{
		"model":           model,
		"method":          string(j.Method),
		"sparsity":        fmt.Sprint(j.Sparsity),
		"pattern":         j.Pattern.String(),
		"allocation":      j.Allocation.String(),
		"allocation.map":  r.allocationDigest(),
		"calib.tokens":    idsDigest(r.calibIDs),
		"calib.train":     fmt.Sprint(r.trainIDs.Len()), // the rest is held out
		"nsamples":        fmt.Sprint(j.NSamples),
		"seqlen":          fmt.Sprint(r.seqLen),
		"seed":            fmt.Sprint(j.Seed),
		"micro-batch":     fmt.Sprint(r.microBatch()), // orders a gradient's sums
		"steps":           fmt.Sprint(e.Steps),
		"batch":           fmt.Sprint(e.Batch),
		"lr":              fmt.Sprint(e.LR),
		"lambda":          fmt.Sprint(e.Lambda),
		"lambda-final":    fmt.Sprint(e.LambdaFinal),
		"lambda-schedule": string(e.Schedule),
		"interval":        fmt.Sprint(e.Interval),
		"clip":            fmt.Sprint(e.Clip),
		"projection":      string(e.Projection),
		"train-dense":     fmt.Sprint(e.TrainDense),
		"init":            string(e.Init),
		"state":           e.State.String(),
	}
	if j.Compute != kernels.ComputeFP32 { // absent for fp32: states from before the flag resume
		f["compute"] = j.Compute.String()
	}
	if j.Allocation.Kind == OWL {
		f["owl-m"], f["owl-lambda"] = fmt.Sprint(j.Allocation.OWLM), fmt.Sprint(j.Allocation.OWLLambda)
	}
	return f, nil
}

// explainMismatch turns the store's refusal of another run's state into
// the list of settings that differ.
func explainMismatch(err error, now fingerprint) error {
	var mm *lowmem.RunMismatchError
	if !errors.As(err, &mm) {
		return err
	}
	var was fingerprint
	if json.Unmarshal([]byte(mm.Stored), &was) != nil {
		return fmt.Errorf("the state in %s was written by another version or run; use a new work folder, or delete it to start over", mm.Dir)
	}
	var diffs []string
	for k := range merge(was, now) {
		if was[k] != now[k] {
			diffs = append(diffs, fmt.Sprintf("%s was %s, now %s", k, orNone(was[k]), orNone(now[k])))
		}
	}
	sort.Strings(diffs)
	return fmt.Errorf("%w: cannot resume the state in %s: the settings differ (%s); resume with the same settings, or start over without resuming",
		ErrInvalid, mm.Dir, strings.Join(diffs, "; "))
}

func merge(a, b fingerprint) map[string]bool {
	keys := map[string]bool{}
	for k := range a {
		keys[k] = true
	}
	for k := range b {
		keys[k] = true
	}
	return keys
}

func orNone(s string) string {
	if s == "" {
		return "(unset)"
	}
	return s
}

// idsDigest is a short SHA-256 of a token stream (its ids as 4-byte
// little-endian values, whatever width holds them).
func idsDigest(ids *dataset.IDs) string {
	if ids == nil {
		ids = dataset.Compact(nil)
	}
	h := sha256.New()
	var b [4]byte
	const block = 1 << 16
	buf := make([]int, 0, block)
	for lo := 0; lo < ids.Len(); lo += block {
		for _, id := range ids.Slice(buf[:0], lo, min(ids.Len(), lo+block)) {
			binary.LittleEndian.PutUint32(b[:], uint32(id))
			h.Write(b[:])
		}
	}
	return fmt.Sprintf("%d ids, sha256 %s", ids.Len(), hex.EncodeToString(h.Sum(nil))[:16])
}

// allocationDigest is a digest of the per-tensor targets ("uniform" when
// there are none).
func (r *run) allocationDigest() string {
	if r.targets == nil {
		return "uniform"
	}
	names := make([]string, 0, len(r.targets))
	for n := range r.targets {
		names = append(names, n)
	}
	sort.Strings(names)
	h := sha256.New()
	for _, n := range names {
		fmt.Fprintf(h, "%s=%v\n", n, r.targets[n])
	}
	return "sha256 " + hex.EncodeToString(h.Sum(nil))[:16]
}

// modelDigest identifies the model by its config and the headers of its
// safetensors files (names, dtypes, shapes, offsets), which is cheap and
// changes with any re-export; the weights themselves are not hashed.
func modelDigest(m *shard.Model) (string, error) {
	h := sha256.New()
	cfg, err := os.ReadFile(filepath.Join(m.Dir, shard.ConfigFile))
	if err != nil {
		return "", err
	}
	h.Write(cfg)
	for _, name := range m.Names {
		t, _ := m.Tensor(name)
		fmt.Fprintf(h, "%s %s %v %d %d %s\n", name, t.DType, t.Shape, t.Begin, t.End, filepath.Base(t.File.Path))
	}
	return "sha256 " + hex.EncodeToString(h.Sum(nil))[:16], nil
}
