package kernels

import (
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"testing"
)

// bf16Value is x rounded to bfloat16, independently of roundBF16: through
// float64 arithmetic, to the nearest multiple of the bf16 spacing at x's
// binade, ties to even.
func bf16Value(x float32) float64 {
	v := float64(x)
	if v == 0 || math.IsInf(v, 0) || math.IsNaN(v) {
		return v
	}
	_, e := math.Frexp(v)              // v = f·2^e, 0.5 ≤ |f| < 1
	ulp := math.Ldexp(1, e-8)          // 8 significant bits
	r := math.RoundToEven(v/ulp) * ulp // exact: v/ulp has ≤ 24 bits
	if math.Abs(r) >= 0x1p128 {        // beyond float32's range: overflows to ±Inf
		return math.Inf(int(math.Copysign(1, r)))
	}
	return r
}

// refGemmBF16 is the product of the bf16-rounded operands (refGemm's
// float64 sums, rounded once to float32) and Σ|a||b| per element, the scale
// of the error bound (refGemm on the absolute values).
func refGemmBF16(c0, a, b []float32, m, n, k int, at, bt, acc bool) (want, scale []float32) {
	round := func(x []float32) (r, abs []float32) {
		r, abs = make([]float32, len(x)), make([]float32, len(x))
		for i, v := range x {
			r[i] = float32(bf16Value(v)) // exact: a bf16 value is a float32
			abs[i] = float32(math.Abs(float64(r[i])))
		}
		return r, abs
	}
	ra, aa := round(a)
	rb, ab := round(b)
	ac := make([]float32, len(c0))
	for i, v := range c0 {
		ac[i] = float32(math.Abs(float64(v)))
	}
	return refGemm(c0, ra, rb, m, n, k, at, bt, acc), refGemm(ac, aa, ab, m, n, k, at, bt, acc)
}

var bf16Forms = []struct {
	name   string
	f      func(c, a, b []float32, m, n, k int, acc bool)
	at, bt bool
}{
	{"NT", ComputeBF16.NT, false, true}, {"NN", ComputeBF16.NN, false, false}, {"TN", ComputeBF16.TN, true, false},
	{"NTSerial", ComputeBF16.NTSerial, false, true}, {"NNSerial", ComputeBF16.NNSerial, false, false}, {"TNSerial", ComputeBF16.TNSerial, true, false},
}

// checkGemmBF16: every element within (k+1)·2⁻²³·Σ|a||b| (+2⁻²³ of C for
// the final roundings) of the exact product of the rounded operands. Rounding
// by truncation, or not rounding at all, is off by ~2⁻⁹ relative and fails.
func checkGemmBF16(t *testing.T, r *rand.Rand, form int, m, n, k int, acc bool) {
	t.Helper()
	f := bf16Forms[form]
	a, b, c0 := randSlice(r, m*k), randSlice(r, n*k), randSlice(r, m*n)
	got := append([]float32(nil), c0...)
	f.f(got, a, b, m, n, k, acc)
	want, scale := refGemmBF16(c0, a, b, m, n, k, f.at, f.bt, acc)
	for i := range got {
		// + 2⁻²³|want|: the reference's own rounding to float32, and the sum's.
		tol := float64(k+1)*0x1p-23*float64(scale[i]) + 0x1p-23*math.Abs(float64(want[i]))
		if d := math.Abs(float64(got[i] - want[i])); !(d <= tol) {
			t.Fatalf("%s %s m=%d n=%d k=%d acc=%v: C[%d]=%v, want %v (|Δ| %.3g > %.3g)",
				ComputeBF16.Backend(), f.name, m, n, k, acc, i, got[i], want[i], d, tol)
		}
	}
}

// withEachBF16Path runs fn on the AMX path (where this machine has it) and
// on the rounded-operand float32 path.
func withEachBF16Path(t *testing.T, fn func(t *testing.T)) {
	usable := amxUsable()
	defer func() { amxOK = usable }()
	for _, amx := range []bool{true, false} {
		if amx && !usable {
			t.Log("no AMX-BF16 here: only the rounded-operand path is tested")
			continue
		}
		amxOK = amx
		t.Run(fmt.Sprintf("amx=%v", amx), fn)
	}
}

func TestGemmBF16Conformance(t *testing.T) {
	shapes := [][3]int{{1, 1, 1}, {1, 7, 3}, {32, 32, 32}, {31, 33, 63}, {13, 45, 300}, {70, 600, 33}, {64, 96, 512}, {33, 65, 1025}, {97, 300, 700}}
	withEachBF16Path(t, func(t *testing.T) {
		r := rand.New(rand.NewPCG(4, 2))
		for _, procs := range []int{1, 2} {
			old := runtime.GOMAXPROCS(procs)
			for form := range bf16Forms {
				for _, s := range shapes {
					for _, acc := range []bool{false, true} {
						checkGemmBF16(t, r, form, s[0], s[1], s[2], acc)
					}
				}
			}
			runtime.GOMAXPROCS(old)
		}
	})
}

// FuzzGemmBF16 is the differential fuzz test of the bf16 GEMM against the
// exact product of the rounded operands.
func FuzzGemmBF16(f *testing.F) {
	f.Add(uint8(1), uint8(1), uint16(1), uint8(0), true, uint64(1))
	f.Add(uint8(33), uint8(65), uint16(513), uint8(1), false, uint64(2))
	f.Add(uint8(64), uint8(32), uint16(31), uint8(2), true, uint64(3))
	f.Fuzz(func(t *testing.T, m, n uint8, k uint16, form uint8, acc bool, seed uint64) {
		r := rand.New(rand.NewPCG(seed, 5))
		checkGemmBF16(t, r, int(form)%len(bf16Forms), int(m)%80, int(n)%100, int(k)%1100, acc)
	})
}

// TestGemmBF16HalfWeights: bf16 weights are used bit for bit (their
// rounding is the identity), fp16 ones rounded like float32 ones.
func TestGemmBF16HalfWeights(t *testing.T) {
	withEachBF16Path(t, func(t *testing.T) {
		r := rand.New(rand.NewPCG(8, 3))
		for _, s := range [][3]int{{1, 1, 1}, {13, 45, 300}, {70, 600, 33}} {
			m, n, k := s[0], s[1], s[2]
			a, w := randSlice(r, m*k), randSlice(r, n*k)
			for _, kind := range []Elem{BF16, F16} {
				h, dec := halfWeights(kind, w)
				want, got := make([]float32, m*n), make([]float32, m*n)
				ComputeBF16.NT(want, a, dec, m, n, k, false)
				ComputeBF16.NTHalf(got, a, h, kind, m, n, k, false)
				ComputeBF16.NN(want, a, dec, m, n, k, true)
				ComputeBF16.NNHalf(got, a, h, kind, m, n, k, true)
				for i := range got {
					if got[i] != want[i] {
						t.Fatalf("kind %d %v: C[%d] %v vs %v", kind, s, i, got[i], want[i])
					}
				}
			}
		}
	})
}

// TestRoundBF16 pins the in-place rounding against the float64 reference,
// ties and NaN included.
func TestRoundBF16(t *testing.T) {
	x := []float32{1, 1 + 0x1p-8, 1 + 0x1p-9, 1 + 3*0x1p-9, -1 - 0x1p-9 - 0x1p-20, 3.14159, 1e-30, float32(math.Inf(1)), 0x1.fffffep127}
	r := rand.New(rand.NewPCG(1, 1))
	x = append(x, randSlice(r, 1000)...)
	got := append([]float32(nil), x...)
	roundBF16(got)
	for i, v := range x {
		if want := bf16Value(v); float64(got[i]) != want {
			t.Fatalf("round(%v) = %v, want %v", v, got[i], want)
		}
	}
	nan := []float32{float32(math.NaN())}
	roundBF16(nan)
	if !math.IsNaN(float64(nan[0])) {
		t.Fatal("NaN rounded to a number")
	}
}
