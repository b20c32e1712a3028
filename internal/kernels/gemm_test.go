package kernels

import (
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"testing"
)

var forms = []struct {
	name   string
	f      func(c, a, b []float32, m, n, k int, acc bool)
	at, bt bool // A stored k×m; B stored n×k
}{{"NT", MatMulNT, false, true}, {"NN", MatMulNN, false, false}, {"TN", MatMulTN, true, false}}

// refGemm is the reference loop (float64 accumulation).
func refGemm(c0, a, b []float32, m, n, k int, at, bt, acc bool) []float32 {
	out := make([]float32, m*n)
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			var s float64
			for p := 0; p < k; p++ {
				av, bv := a[i*k+p], b[p*n+j]
				if at {
					av = a[p*m+i]
				}
				if bt {
					bv = b[j*k+p]
				}
				s += float64(av) * float64(bv)
			}
			if acc {
				s += float64(c0[i*n+j])
			}
			out[i*n+j] = float32(s)
		}
	}
	return out
}

func randSlice(r *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64())
	}
	return v
}

// checkGemm runs one form on one shape and compares with refGemm; the bound
// scales with √k (float32 rounding of a k-term dot product).
func checkGemm(t *testing.T, r *rand.Rand, form int, m, n, k int, acc bool) {
	t.Helper()
	f := forms[form]
	a, b, c0 := randSlice(r, m*k), randSlice(r, n*k), randSlice(r, m*n)
	got := append([]float32(nil), c0...)
	f.f(got, a, b, m, n, k, acc)
	want := refGemm(c0, a, b, m, n, k, f.at, f.bt, acc)
	tol := 1e-5 * (2 + math.Sqrt(float64(k))) * 4
	for i := range got {
		if d := math.Abs(float64(got[i] - want[i])); d > tol {
			t.Fatalf("%s %s m=%d n=%d k=%d acc=%v: c[%d] = %v, want %v", Backend(), f.name, m, n, k, acc, i, got[i], want[i])
		}
	}
}

// TestGemmConformance runs every backend available here (generic, avx2,
// avx512, and openblas under -tags openblas) through edge shapes: 1, odd
// sizes, sizes off the tile, k = 1, k spanning several kc blocks, and a
// large parallel case.
func TestGemmConformance(t *testing.T) {
	shapes := [][3]int{{1, 1, 1}, {1, 37, 5}, {37, 1, 5}, {3, 5, 7}, {13, 33, 1}, {12, 32, 16}, {25, 65, 300},
		{64, 48, 31}, {7, 100, 513}, {200, 3, 64}, {130, 130, 257}, {8, 9, 0}}
	if !testing.Short() {
		shapes = append(shapes, [3]int{300, 520, 700})
	}
	defer SetBackend(Backend())
	for _, name := range Backends() {
		if err := SetBackend(name); err != nil {
			t.Fatal(err)
		}
		t.Run(name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(3, 3))
			for _, s := range shapes {
				for form := range forms {
					for _, acc := range []bool{false, true} {
						checkGemm(t, r, form, s[0], s[1], s[2], acc)
					}
				}
			}
		})
	}
}

// FuzzGemm is the differential fuzz test: random shapes and forms on the
// active backend against the reference loop.
func FuzzGemm(f *testing.F) {
	f.Add(uint8(1), uint8(1), uint16(1), uint8(0), true, uint64(1))
	f.Add(uint8(13), uint8(33), uint16(257), uint8(1), false, uint64(2))
	f.Add(uint8(24), uint8(64), uint16(5), uint8(2), true, uint64(3))
	f.Fuzz(func(t *testing.T, m, n uint8, k uint16, form uint8, acc bool, seed uint64) {
		r := rand.New(rand.NewPCG(seed, 9))
		checkGemm(t, r, int(form)%3, int(m)%70, int(n)%90, int(k)%600, acc)
	})
}

// BenchmarkGemm reports GFLOP/s (2·m·n·k per call) for the three forms in
// both precisions at LLaMA shapes (M×K×N: C is M×N over depth K), one and
// two threads.
func BenchmarkGemm(b *testing.B) {
	shapes := [][3]int{{512, 4096, 4096}, {512, 4096, 11008}, {512, 11008, 4096}, {512, 288, 768}} // m, n, k
	gemms := map[string][2]func(c, a, b []float32, m, n, k int, acc bool){
		"NT": {ComputeFP32.NT, ComputeBF16.NT}, "NN": {ComputeFP32.NN, ComputeBF16.NN}, "TN": {ComputeFP32.TN, ComputeBF16.TN},
	}
	for _, f := range forms {
		for _, s := range shapes {
			for _, compute := range []Compute{ComputeFP32, ComputeBF16} {
				for _, threads := range []int{1, 2} {
					m, n, k := s[0], s[1], s[2]
					gemm := gemms[f.name][compute]
					b.Run(fmt.Sprintf("%s/%s/%dx%dx%d/threads=%d", f.name, compute, m, k, n, threads), func(b *testing.B) {
						old := runtime.GOMAXPROCS(threads)
						defer runtime.GOMAXPROCS(old)
						r := rand.New(rand.NewPCG(1, 1))
						a, bb, c := randSlice(r, m*k), randSlice(r, n*k), make([]float32, m*n)
						gemm(c, a, bb, m, n, k, false) // warm up buffers and pages
						b.ResetTimer()
						for i := 0; i < b.N; i++ {
							gemm(c, a, bb, m, n, k, false)
						}
						b.ReportMetric(2*float64(m)*float64(n)*float64(k)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
					})
				}
			}
		}
	}
}

// TestGemmHalfWeights: NT and NN with bf16/fp16 weights equal the float32
// GEMM on the decoded weights, on every backend.
func TestGemmHalfWeights(t *testing.T) {
	defer SetBackend(Backend())
	r := rand.New(rand.NewPCG(8, 8))
	for _, name := range Backends() {
		SetBackend(name)
		for _, s := range [][3]int{{1, 1, 1}, {13, 45, 300}, {70, 600, 33}} {
			m, n, k := s[0], s[1], s[2]
			a, w := randSlice(r, m*k), randSlice(r, n*k)
			for _, kind := range []Elem{BF16, F16} {
				h, dec := halfWeights(kind, w)
				want, got := make([]float32, m*n), make([]float32, m*n)
				MatMulNT(want, a, dec, m, n, k, false)
				MatMulNTHalf(got, a, h, kind, m, n, k, false)
				for i := range got {
					if math.Abs(float64(got[i]-want[i])) > 1e-4*(1+math.Abs(float64(want[i]))) {
						t.Fatalf("%s NT kind %d %v: %v vs %v", name, kind, s, got[i], want[i])
					}
				}
				// NN: B is [k×n]; reuse dec as a k×n matrix.
				MatMulNN(want, a, dec, m, n, k, false)
				MatMulNNHalf(got, a, h, kind, m, n, k, false)
				for i := range got {
					if math.Abs(float64(got[i]-want[i])) > 1e-4*(1+math.Abs(float64(want[i]))) {
						t.Fatalf("%s NN kind %d %v: %v vs %v", name, kind, s, got[i], want[i])
					}
				}
			}
		}
	}
}

// halfWeights encodes w as kind (h) and decodes it back (dec).
func halfWeights(kind Elem, w []float32) (h []uint16, dec []float32) {
	h, dec = make([]uint16, len(w)), make([]float32, len(w))
	if kind == BF16 {
		F32ToBF16(h, w)
		BF16ToF32(dec, h)
	} else {
		F32ToF16(h, w)
		F16ToF32(dec, h)
	}
	return h, dec
}
