// Package mpi is the job's view of its processes: one, or the ranks of an
// MPI job (Open MPI through cgo, only with -tags mpi; the default build
// has no cgo and is single-process). The calls are the handful data
// parallelism needs; every sum is reduced to rank 0 in a fixed order and
// broadcast, so all ranks hold the same bits.
package mpi

import (
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
	"time"
)

// Comm is the processes of a job.
type Comm interface {
	// Rank is this process's index in [0, Size).
	Rank() int
	Size() int
	// SumFloat32 replaces x on every rank with the element-wise sum over
	// the ranks (the same bits on each).
	SumFloat32(x []float32) error
	// SumFloat64 is SumFloat32 for float64.
	SumFloat64(x []float64) error
	// MinMaxInt returns the least and the largest v over the ranks.
	MinMaxInt(v int) (lo, hi int, err error)
	// Stats is the time spent in, and the bytes given to, the sums.
	Stats() Stats
}

// Stats accounts a Comm's sums.
type Stats struct {
	Seconds float64
	Bytes   int64
}

// Single is the one-process job: every sum is the value itself.
type Single struct{}

func (Single) Rank() int                         { return 0 }
func (Single) Size() int                         { return 1 }
func (Single) SumFloat32([]float32) error        { return nil }
func (Single) SumFloat64([]float64) error        { return nil }
func (Single) MinMaxInt(v int) (int, int, error) { return v, v, nil }
func (Single) Stats() Stats                      { return Stats{} }

// launchedSize is the size of the MPI job that started this process
// according to the launcher's environment (Open MPI, PMIx, Slurm's PMI),
// 0 when none did.
func launchedSize() int {
	for _, k := range []string{"OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "PMI_SIZE", "SLURM_NTASKS"} {
		if n, err := strconv.Atoi(os.Getenv(k)); err == nil && n > 0 {
			if k == "SLURM_NTASKS" && os.Getenv("SLURM_PROCID") == "" {
				continue // an sbatch script's own shell, not a task
			}
			return n
		}
	}
	return 0
}

// errNotBuilt is what a binary without MPI says when a launcher started
// it as one of several ranks.
func errNotBuilt(n int) error {
	return fmt.Errorf("started as one of %d MPI ranks, but this binary was built without MPI: rebuild with `go build -tags mpi ./cmd/elsa-stream` (Open MPI: libopenmpi-dev), or run it without mpirun", n)
}

// timed accounts one sum of n bytes.
type timed struct {
	nanos atomic.Int64
	bytes atomic.Int64
}

func (t *timed) add(start time.Time, n int) {
	t.nanos.Add(int64(time.Since(start)))
	t.bytes.Add(int64(n))
}

func (t *timed) stats() Stats {
	return Stats{Seconds: time.Duration(t.nanos.Load()).Seconds(), Bytes: t.bytes.Load()}
}
