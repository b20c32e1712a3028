package kernels

import (
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// ParallelFor splits [0, n) into contiguous chunks run on up to GOMAXPROCS
// goroutines; fn gets [lo, hi). Small n runs inline. The first chunk runs
// on the caller, the others on the pool's workers; a call made while
// another one holds the pool (from another goroutine, or from inside fn)
// runs its chunks on goroutines of their own instead.
func ParallelFor(n, minChunk int, fn func(lo, hi int)) {
	workers := runtime.GOMAXPROCS(0)
	if minChunk < 1 {
		minChunk = 1
	}
	if workers > (n+minChunk-1)/minChunk {
		workers = (n + minChunk - 1) / minChunk
	}
	if workers <= 1 {
		if n > 0 {
			fn(0, n)
		}
		return
	}
	chunk := (n + workers - 1) / workers
	if !pool.mu.TryLock() {
		spawnFor(n, chunk, fn)
		return
	}
	defer pool.mu.Unlock()
	pool.run(n, chunk, fn)
}

// spawnFor runs the chunks on new goroutines and waits for them.
func spawnFor(n, chunk int, fn func(lo, hi int)) {
	var wg sync.WaitGroup
	for lo := 0; lo < n; lo += chunk {
		hi := min(lo+chunk, n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(lo, hi)
		}()
	}
	wg.Wait()
}

// The pool keeps GOMAXPROCS−1 workers that, after a chunk, spin for
// poolSpin before they sleep. Decoding runs a few dozen short parallel
// products per token with serial work between them, and waking a sleeping
// thread (on a virtual machine: a halted vCPU) took tens of microseconds
// of each ~250 µs product: the 7B-shaped 90% gap-coded products ran at
// 6.2-6.4 G entries/s on two cores through goroutines started per call,
// 7.6-7.7 with a worker spinning without pause, 7.0-7.4 on this pool
// (BenchmarkGapsFromMemory). The spin is long enough for the gaps between
// a token's products: at 100 µs the worker of a 32-token decode (90%
// packed, the 7B-shaped model of scripts/decode_bench.sh, ~1070 calls)
// had gone to sleep 65-95 times and picked a job up ~15 µs after it was
// posted on average; the binaries side by side, medians of 3: 82.6 tok/s
// at 100 µs, 83.7 at 300 µs, 84.5 at 1 ms, 85.8 at 3 ms. A spinning
// worker yields its thread at every turn, so it holds up no other
// goroutine. The workers live as long as the process; idle, they sleep on
// a channel.
const poolSpin = time.Millisecond

var pool workerPool

type workerPool struct {
	mu      sync.Mutex // held by the ParallelFor running on the pool
	workers []*worker
}

// poolJob is one chunk for a worker; pending counts the chunks of its
// call still running.
type poolJob struct {
	fn      func(lo, hi int)
	lo, hi  int
	pending *atomic.Int32
}

type worker struct {
	job    atomic.Pointer[poolJob]
	parked atomic.Bool
	wake   chan struct{} // a token: look at job again
}

// run runs chunk 0 of [0, n) on the caller and the others on workers
// 0, 1, ..., then waits (spinning, yielding its thread) for them.
func (p *workerPool) run(n, chunk int, fn func(lo, hi int)) {
	var pending atomic.Int32
	chunks := (n + chunk - 1) / chunk
	for len(p.workers) < chunks-1 {
		w := &worker{wake: make(chan struct{}, 1)}
		p.workers = append(p.workers, w)
		go w.loop()
	}
	pending.Store(int32(chunks - 1))
	jobs := make([]poolJob, chunks-1)
	for i := range jobs {
		lo := (i + 1) * chunk
		jobs[i] = poolJob{fn: fn, lo: lo, hi: min(lo+chunk, n), pending: &pending}
		w := p.workers[i]
		w.job.Store(&jobs[i])
		// The worker sets parked before its last look at job, and this
		// reads parked after storing job (both sequentially consistent):
		// either it sees the job or it gets the token.
		if w.parked.Load() {
			select {
			case w.wake <- struct{}{}:
			default:
			}
		}
	}
	fn(0, min(chunk, n))
	for pending.Load() != 0 {
		runtime.Gosched()
	}
}

// loop runs jobs as they come: spinning for poolSpin after each, then
// asleep until woken.
func (w *worker) loop() {
	for {
		j := w.next()
		j.fn(j.lo, j.hi)
		j.pending.Add(-1)
	}
}

func (w *worker) next() *poolJob {
	start := time.Now()
	for i := 0; ; i++ {
		if j := w.job.Swap(nil); j != nil {
			return j
		}
		if i%64 != 63 || time.Since(start) < poolSpin {
			runtime.Gosched()
			continue
		}
		w.parked.Store(true)
		if j := w.job.Swap(nil); j != nil {
			w.parked.Store(false)
			return j
		}
		<-w.wake // a stale token only makes it look once more
		w.parked.Store(false)
		start, i = time.Now(), 0
	}
}
