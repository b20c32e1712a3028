//go:build !mpi

package mpi

import "fmt"

// Built reports whether this binary can run as several MPI ranks.
const Built = false

// World returns the job: Single, or an error when a launcher started this
// binary (built without MPI) as one of several ranks.
func World() (Comm, error) {
	if n := launchedSize(); n > 1 {
		return nil, errNotBuilt(n)
	}
	return Single{}, nil
}

// Finalize ends the MPI job (nothing without MPI).
func Finalize() {}

// errNotBuilt is what a binary without MPI says when a launcher started
// it as one of several ranks.
func errNotBuilt(n int) error {
	return fmt.Errorf("started as one of %d MPI ranks, but this binary was built without MPI: rebuild with `go build -tags mpi ./cmd/elsa-stream` (Open MPI: libopenmpi-dev), or run it without mpirun", n)
}
