package kernels

import (
	"math"
	"math/rand/v2"
	"testing"
)

func TestExp32(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	worst := 0.0
	for i := 0; i < 1_000_000; i++ {
		x := float32(r.Float64()*176 - 88)
		want := math.Exp(float64(x))
		got := float64(Exp32(x))
		if want < 1.2e-38 { // below float32's normal range we return 0 or a flushed value
			continue
		}
		worst = max(worst, math.Abs(got-want)/want)
	}
	if worst > 2.5e-7 {
		t.Fatalf("Exp32 relative error %.3g > 2.5e-7", worst)
	}
	if Exp32(-100) != 0 || !math.IsInf(float64(Exp32(100)), 1) || !math.IsNaN(float64(Exp32(float32(math.NaN())))) || Exp32(0) != 1 {
		t.Fatal("Exp32 edge cases")
	}
}

func TestF16RoundTrip(t *testing.T) {
	// Every binary16 value survives decode then encode (NaNs stay NaN).
	for h := 0; h < 1<<16; h++ {
		f := F16ToF32One(uint16(h))
		back := F16FromF32(f)
		if f != f {
			if back&0x7c00 != 0x7c00 || back&0x3ff == 0 {
				t.Fatalf("NaN %#04x came back as %#04x", h, back)
			}
			continue
		}
		if back != uint16(h) {
			t.Fatalf("%#04x -> %v -> %#04x", h, f, back)
		}
	}
	// Rounding: halfway cases go to even, overflow goes to Inf.
	cases := []struct {
		f    float32
		want uint16
	}{
		{1 + 1.0/2048, 0x3c00},      // tie between 1 and 1+2^-10: even (1)
		{1 + 3.0/2048, 0x3c02},      // tie: rounds up to even
		{65519, 0x7bff},             // below the Inf threshold
		{65520, 0x7c00},             // rounds to Inf
		{5.960464477539063e-08, 1},  // smallest subnormal
		{2.9802322387695312e-08, 0}, // half of it: tie to even (0)
		{8.940696716308594e-08, 2},  // 1.5 subnormal units: tie to even (2)
		{float32(math.Copysign(0, -1)), 0x8000},
	}
	for _, c := range cases {
		if got := F16FromF32(c.f); got != c.want {
			t.Errorf("F16FromF32(%g) = %#04x, want %#04x", c.f, got, c.want)
		}
	}
}

func TestBF16(t *testing.T) {
	cases := []struct {
		f    float32
		want uint16
	}{
		{1, 0x3f80},
		{math.Float32frombits(0x3f808000), 0x3f80}, // tie: even
		{math.Float32frombits(0x3f818000), 0x3f82}, // tie: up to even
		{math.Float32frombits(0x3f808001), 0x3f81},
		{float32(math.Inf(-1)), 0xff80},
	}
	for _, c := range cases {
		if got := BF16FromF32(c.f); got != c.want {
			t.Errorf("BF16FromF32(%g) = %#04x, want %#04x", c.f, got, c.want)
		}
	}
	if v := BF16FromF32(float32(math.NaN())); v&0x7f80 != 0x7f80 || v&0x7f == 0 {
		t.Errorf("NaN became %#04x", v)
	}
	dst := make([]float32, 1)
	BF16ToF32(dst, []uint16{0x3f82})
	if dst[0] != math.Float32frombits(0x3f820000) {
		t.Fatal("BF16ToF32")
	}
}

func TestFP8Decode(t *testing.T) {
	cases := []struct {
		b    uint8
		e4m3 float32
		e5m2 float32
	}{
		{0x00, 0, 0},
		{0x38, 1, 0.5},                   // e4m3: exp 7 -> 1; e5m2: 0x38 = exp 14 -> 0.5
		{0x7e, 448, float32(math.NaN())}, // e4m3 max finite (e5m2: NaN, skipped)
		{0x7b, 352, 57344},               // e5m2 max finite
		{0x01, 1.0 / 512, 1.0 / 65536},   // smallest subnormals
		{0xb8, -1, -0.5},
	}
	for _, c := range cases {
		if got := F8E4M3ToF32One(c.b); got != c.e4m3 {
			t.Errorf("e4m3 %#02x = %v, want %v", c.b, got, c.e4m3)
		}
		if got := F8E5M2ToF32One(c.b); got != c.e5m2 && c.e5m2 == c.e5m2 {
			t.Errorf("e5m2 %#02x = %v, want %v", c.b, got, c.e5m2)
		}
	}
	if v := F8E4M3ToF32One(0x7f); v == v {
		t.Error("e4m3 0x7f must be NaN")
	}
	if v := F8E5M2ToF32One(0x7c); !math.IsInf(float64(v), 1) {
		t.Error("e5m2 0x7c must be +Inf")
	}
}

// TestExpShiftSIMD: the 16-lane exp equals Exp32's bound on every input a
// softmax can produce (x − max ≤ 0, including underflow to 0), and its
// sum is the outputs' sum.
func TestExpShiftSIMD(t *testing.T) {
	if !simdConv {
		t.Skip("no AVX-512")
	}
	r := rand.New(rand.NewPCG(3, 3))
	src := make([]float32, 4096)
	for i := range src {
		src[i] = float32(r.Float64()*120 - 110)
	}
	src[0], src[1] = 10, -200 // the max itself, and deep underflow
	dst := make([]float32, len(src))
	sum := expShiftSum16(&dst[0], &src[0], len(src), 10)
	var want64 float64
	for _, v := range dst {
		want64 += float64(v)
	}
	if d := math.Abs(float64(sum)-want64) / want64; d > 1e-6 {
		t.Fatalf("sum %g, want %g", sum, want64)
	}
	for i, v := range src {
		want := math.Exp(float64(v - 10))
		if want < 1.2e-38 {
			if dst[i] > 1.2e-38 {
				t.Fatalf("e^%g = %g, want ~0", v-10, dst[i])
			}
			continue
		}
		if d := math.Abs(float64(dst[i])-want) / want; d > 3e-7 {
			t.Fatalf("e^%g = %g, want %g (rel %g)", v-10, dst[i], want, d)
		}
	}
}

// TestSoftmaxScaled: softmax(scale·x) against float64 math for lengths
// around the 16-lane boundary, with and without AVX-512 (same tolerance).
func TestSoftmaxScaled(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 5))
	for _, simd := range []bool{true, false} {
		if simd && !simdConv {
			continue
		}
		old := simdConv
		simdConv = simd
		for _, n := range []int{1, 7, 15, 16, 17, 33, 64, 100, 513} {
			x := make([]float32, n)
			for i := range x {
				x[i] = float32(r.NormFloat64() * 4)
			}
			scale := float32(0.35)
			var m float64 = math.Inf(-1)
			for _, v := range x {
				m = math.Max(m, float64(v*scale))
			}
			want := make([]float64, n)
			var s float64
			for i, v := range x {
				want[i] = math.Exp(float64(v*scale) - m)
				s += want[i]
			}
			SoftmaxScaled(x, scale)
			for i := range x {
				if d := math.Abs(float64(x[i]) - want[i]/s); d > 1e-6*math.Max(want[i]/s, 1e-3) {
					t.Fatalf("simd=%v n=%d: p[%d] = %g, want %g", simd, n, i, x[i], want[i]/s)
				}
			}
		}
		simdConv = old
	}
}

// BenchmarkSoftmaxRows: the causal rows of one 512-token attention head.
func BenchmarkSoftmaxRows(b *testing.B) {
	x := make([]float32, 512)
	for i := range x {
		x[i] = float32(i%17) * 0.1
	}
	row := make([]float32, 512)
	b.SetBytes(4 * 512 * 512 / 2)
	for i := 0; i < b.N; i++ {
		for n := 1; n <= 512; n++ {
			copy(row[:n], x[:n])
			SoftmaxInPlace(row[:n])
		}
	}
}

// TestQuantizeInt8BlockRounding: the quantizer rounds half away from zero
// exactly as math.Round does, including ties and values next to them.
func TestQuantizeInt8BlockRounding(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 9))
	x := make([]float32, 4*Int8Block)
	for i := range x {
		x[i] = float32(r.NormFloat64())
	}
	x[0] = 127 // amax of block 0 is 127: inv = 1, so halves are exact ties
	for i := 1; i < Int8Block; i++ {
		x[i] = float32(i%254-127) / 2
		if i%3 == 0 {
			x[i] = math.Nextafter32(x[i], 0)
		}
	}
	q, s := make([]int8, len(x)), make([]float32, 4)
	QuantizeInt8Block(q, s, x)
	for i, v := range x {
		b := i / Int8Block
		inv := 127 / (s[b] * 127)
		want := int8(max(-127, min(127, math.Round(float64(v*inv)))))
		if q[i] != want {
			t.Fatalf("x[%d] = %g: q %d, want %d", i, v, q[i], want)
		}
	}
}
