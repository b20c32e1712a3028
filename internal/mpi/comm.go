// Package mpi is the job's view of its processes: one, or the ranks of an
// MPI job (Open MPI through cgo, only with -tags mpi; the default build
// has no cgo and is single-process). The calls are the handful data
// parallelism needs; every sum is reduced to rank 0 in a fixed order and
// broadcast, so all ranks hold the same bits.
package mpi

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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
	// Bcast copies rank 0's b into every rank's b (of the same length).
	Bcast(b []byte) error
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
func (Single) Bcast([]byte) error                { return nil }
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

// SyncDir makes dir on every rank a copy of rank 0's: each regular file
// under it (names relative to dir) is broadcast in pieces of at most
// 64 MiB and written to a temporary name, fsynced and renamed; files the
// other ranks hold beyond rank 0's are left as they are. Resume uses it:
// the ranks hold the same state, but a kill can leave them committed one
// step apart, and rank 0's committed state is the one they all continue.
func SyncDir(c Comm, dir string) error {
	if c.Size() == 1 {
		return nil
	}
	var files []string
	if c.Rank() == 0 {
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.Type().IsRegular() {
				rel, _ := filepath.Rel(dir, p)
				files = append(files, rel)
			}
			return nil
		})
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	list, err := bcastBytes(c, []byte(strings.Join(files, "\n")))
	if err != nil {
		return err
	}
	if c.Rank() != 0 && len(list) > 0 {
		files = strings.Split(string(list), "\n")
	}
	for _, rel := range files {
		if err := syncFile(c, filepath.Join(dir, rel)); err != nil {
			return err
		}
	}
	return nil
}

// bcastBytes sends rank 0's b (any length) to every rank.
func bcastBytes(c Comm, b []byte) ([]byte, error) {
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(len(b)))
	if err := c.Bcast(n[:]); err != nil {
		return nil, err
	}
	if c.Rank() != 0 {
		b = make([]byte, binary.LittleEndian.Uint64(n[:]))
	}
	if len(b) > 0 {
		if err := c.Bcast(b); err != nil {
			return nil, err
		}
	}
	return b, nil
}

const syncPiece = 64 << 20

func syncFile(c Comm, path string) error {
	var size [8]byte
	var f *os.File
	var err error
	if c.Rank() == 0 {
		if f, err = os.Open(path); err == nil {
			var fi os.FileInfo
			if fi, err = f.Stat(); err == nil {
				binary.LittleEndian.PutUint64(size[:], uint64(fi.Size()))
			}
		}
		if err != nil {
			binary.LittleEndian.PutUint64(size[:], ^uint64(0)) // tell the others
		}
	}
	if berr := c.Bcast(size[:]); berr != nil {
		return berr
	}
	n := binary.LittleEndian.Uint64(size[:])
	if n == ^uint64(0) {
		if err == nil {
			err = fmt.Errorf("rank 0 could not read %s", path)
		}
		return err
	}
	if c.Rank() == 0 {
		defer f.Close()
	} else {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if f, err = os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".sync-"); err != nil {
			return err
		}
		defer os.Remove(f.Name())
		defer f.Close()
	}
	buf := make([]byte, min(int(n), syncPiece))
	for left := int(n); left > 0; {
		piece := buf[:min(left, syncPiece)]
		if c.Rank() == 0 {
			if _, err := io.ReadFull(f, piece); err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
		}
		if err := c.Bcast(piece); err != nil {
			return err
		}
		if c.Rank() != 0 {
			if _, err := f.Write(piece); err != nil {
				return err
			}
		}
		left -= len(piece)
	}
	if c.Rank() == 0 {
		return nil
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
