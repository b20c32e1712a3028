package kernels

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// checkCovers runs ParallelFor(n, minChunk) and checks that every index
// is handed out exactly once (Errorf: it also runs on other goroutines).
func checkCovers(t *testing.T, n, minChunk int, inner func()) {
	t.Helper()
	hits := make([]atomic.Int32, n)
	var bad atomic.Value
	ParallelFor(n, minChunk, func(lo, hi int) {
		if lo < 0 || hi > n || lo >= hi {
			bad.Store([2]int{lo, hi})
			return
		}
		for i := lo; i < hi; i++ {
			hits[i].Add(1)
		}
		if inner != nil {
			inner()
		}
	})
	if b := bad.Load(); b != nil {
		t.Errorf("n %d, minChunk %d: chunk %v", n, minChunk, b)
		return
	}
	for i := range hits {
		if h := hits[i].Load(); h != 1 {
			t.Errorf("n %d, minChunk %d: index %d ran %d times", n, minChunk, i, h)
			return
		}
	}
}

// TestParallelFor: every index once, at 1, 2 and 5 threads (the pool grows
// its workers), with calls from several goroutines at once and from inside
// a chunk (those run outside the pool), and after the workers have gone to
// sleep (longer than poolSpin between calls).
func TestParallelFor(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	for _, procs := range []int{1, 2, 5} {
		runtime.GOMAXPROCS(procs)
		for _, n := range []int{0, 1, 2, 3, 7, 64, 1000} {
			for _, minChunk := range []int{0, 1, 3, 64} {
				checkCovers(t, n, minChunk, nil)
			}
		}
		checkCovers(t, 100, 1, func() { checkCovers(t, 50, 1, nil) })
		var wg sync.WaitGroup
		for g := 0; g < 4; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 200; i++ {
					checkCovers(t, 37+i%5, 1, nil)
				}
			}()
		}
		wg.Wait()
		for i := 0; i < 3; i++ {
			time.Sleep(3 * poolSpin)
			checkCovers(t, 16, 1, nil)
		}
	}
}
