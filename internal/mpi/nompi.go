//go:build !mpi

package mpi

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
