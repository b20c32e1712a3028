//go:build mpi

package mpi

/*
#cgo pkg-config: ompi-c
#include <mpi.h>
#include <stdlib.h>

static int es_init(void) {
	int provided = 0, inited = 0;
	MPI_Initialized(&inited);
	if (inited) return MPI_SUCCESS;
	// Errors come back as codes, never abort the process behind Go's back.
	int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided);
	if (rc != MPI_SUCCESS) return rc;
	if (provided < MPI_THREAD_SERIALIZED) return MPI_ERR_OTHER;
	return MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
}
static int es_rank(int *r) { return MPI_Comm_rank(MPI_COMM_WORLD, r); }
static int es_size(int *s) { return MPI_Comm_size(MPI_COMM_WORLD, s); }
static int es_sum_f32(float *x, int n, int rank) {
	int rc = MPI_Reduce(rank == 0 ? MPI_IN_PLACE : x, rank == 0 ? x : NULL, n, MPI_FLOAT, MPI_SUM, 0, MPI_COMM_WORLD);
	if (rc != MPI_SUCCESS) return rc;
	return MPI_Bcast(x, n, MPI_FLOAT, 0, MPI_COMM_WORLD);
}
static int es_sum_f64(double *x, int n, int rank) {
	int rc = MPI_Reduce(rank == 0 ? MPI_IN_PLACE : x, rank == 0 ? x : NULL, n, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
	if (rc != MPI_SUCCESS) return rc;
	return MPI_Bcast(x, n, MPI_DOUBLE, 0, MPI_COMM_WORLD);
}
static int es_minmax(long *v) { // v[0] min in, v[1] max in
	int rc = MPI_Allreduce(MPI_IN_PLACE, &v[0], 1, MPI_LONG, MPI_MIN, MPI_COMM_WORLD);
	if (rc != MPI_SUCCESS) return rc;
	return MPI_Allreduce(MPI_IN_PLACE, &v[1], 1, MPI_LONG, MPI_MAX, MPI_COMM_WORLD);
}
static int es_bcast(void *b, int n) { return MPI_Bcast(b, n, MPI_BYTE, 0, MPI_COMM_WORLD); }
static void es_error(int rc, char *buf, int n) { int len = 0; MPI_Error_string(rc, buf, &len); if (len >= n) len = n - 1; buf[len] = 0; }
*/
import "C"

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// Built reports whether this binary can run as several MPI ranks.
const Built = true

// maxCount is the most elements one MPI call takes: counts are C ints, so
// longer buffers go in pieces.
const maxCount = 1 << 30

type world struct {
	rank, size int
	mu         sync.Mutex // MPI_THREAD_SERIALIZED: one call at a time
	timed
}

var (
	once    sync.Once
	shared  *world
	initErr error
)

func mpiError(what string, rc C.int) error {
	buf := make([]byte, 512)
	C.es_error(rc, (*C.char)(unsafe.Pointer(&buf[0])), C.int(len(buf)))
	return fmt.Errorf("mpi: %s: %s", what, C.GoString((*C.char)(unsafe.Pointer(&buf[0]))))
}

// World initialises MPI once and returns the job (Single when this process
// was not started by a launcher: MPI then runs a job of one).
func World() (Comm, error) {
	once.Do(func() {
		if rc := C.es_init(); rc != C.MPI_SUCCESS {
			initErr = mpiError("init", rc)
			return
		}
		var r, s C.int
		if rc := C.es_rank(&r); rc != C.MPI_SUCCESS {
			initErr = mpiError("rank", rc)
			return
		}
		if rc := C.es_size(&s); rc != C.MPI_SUCCESS {
			initErr = mpiError("size", rc)
			return
		}
		shared = &world{rank: int(r), size: int(s)}
	})
	if initErr != nil {
		return nil, initErr
	}
	if shared.size == 1 {
		return Single{}, nil
	}
	return shared, nil
}

// Finalize ends the MPI job.
func Finalize() {
	if shared != nil {
		C.MPI_Finalize()
	}
}

func (w *world) Rank() int    { return w.rank }
func (w *world) Size() int    { return w.size }
func (w *world) Stats() Stats { return w.stats() }

func (w *world) SumFloat32(x []float32) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	start := time.Now()
	for off := 0; off < len(x); off += maxCount {
		n := min(maxCount, len(x)-off)
		if rc := C.es_sum_f32((*C.float)(unsafe.Pointer(&x[off])), C.int(n), C.int(w.rank)); rc != C.MPI_SUCCESS {
			return mpiError("sum of a gradient", rc)
		}
	}
	w.add(start, 4*len(x))
	return nil
}

func (w *world) SumFloat64(x []float64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	start := time.Now()
	for off := 0; off < len(x); off += maxCount {
		n := min(maxCount, len(x)-off)
		if rc := C.es_sum_f64((*C.double)(unsafe.Pointer(&x[off])), C.int(n), C.int(w.rank)); rc != C.MPI_SUCCESS {
			return mpiError("sum", rc)
		}
	}
	w.add(start, 8*len(x))
	return nil
}

func (w *world) MinMaxInt(v int) (int, int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	b := [2]C.long{C.long(v), C.long(v)}
	if rc := C.es_minmax(&b[0]); rc != C.MPI_SUCCESS {
		return 0, 0, mpiError("min/max", rc)
	}
	return int(b[0]), int(b[1]), nil
}

func (w *world) Bcast(b []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for off := 0; off < len(b); off += maxCount {
		n := min(maxCount, len(b)-off)
		if rc := C.es_bcast(unsafe.Pointer(&b[off]), C.int(n)); rc != C.MPI_SUCCESS {
			return mpiError("broadcast", rc)
		}
	}
	return nil
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
