package kernels

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// randomBits returns float32 values from random bit patterns (every class:
// NaN, ±Inf, subnormals, zeros) plus values around the binary16 limits.
func randomBits(n int) []float32 {
	r := rand.New(rand.NewPCG(5, 5))
	v := make([]float32, n)
	for i := range v {
		switch i % 4 {
		case 0:
			v[i] = math.Float32frombits(r.Uint32())
		case 1:
			v[i] = float32(r.NormFloat64() * math.Pow(2, float64(r.IntN(60)-30)))
		case 2:
			v[i] = float32((r.Float64()*2 - 1) * 70000)
		default:
			v[i] = float32(r.NormFloat64() * 1e-6)
		}
	}
	return v
}

// TestSIMDConversionsMatchScalar: the vector loops must give the scalar
// result bit for bit (NaN: any NaN) on every class of input, for lengths
// that exercise the 16-wide body and the scalar tail.
func TestSIMDConversionsMatchScalar(t *testing.T) {
	src := randomBits(1<<16 + 7)
	halves := make([]uint16, 1<<16+7)
	for i := range halves {
		halves[i] = uint16(i)
	}
	sameF := func(a, b float32) bool {
		return a == b && math.Signbit(float64(a)) == math.Signbit(float64(b)) || a != a && b != b
	}
	for _, n := range []int{0, 5, 16, 33, len(src)} {
		h := make([]uint16, n)
		F32ToF16(h, src[:n])
		for i := range h {
			if want := F16FromF32(src[i]); h[i] != want && !(src[i] != src[i] && h[i]&0x7c00 == 0x7c00 && h[i]&0x3ff != 0) {
				t.Fatalf("F32ToF16(%g) = %#04x, scalar %#04x", src[i], h[i], want)
			}
		}
		F32ToBF16(h, src[:n])
		for i := range h {
			if want := BF16FromF32(src[i]); h[i] != want {
				t.Fatalf("F32ToBF16(%g) = %#04x, scalar %#04x", src[i], h[i], want)
			}
		}
		f := make([]float32, n)
		F16ToF32(f, halves[:n])
		for i := range f {
			if want := F16ToF32One(halves[i]); !sameF(f[i], want) {
				t.Fatalf("F16ToF32(%#04x) = %g, scalar %g", halves[i], f[i], want)
			}
		}
		BF16ToF32(f, halves[:n])
		for i := range f {
			if want := math.Float32frombits(uint32(halves[i]) << 16); math.Float32bits(f[i]) != math.Float32bits(want) {
				t.Fatalf("BF16ToF32(%#04x) = %g, want %g", halves[i], f[i], want)
			}
		}
	}
}

// BenchmarkConvert reports G elements/s of each conversion on 1M elements.
func BenchmarkConvert(b *testing.B) {
	const n = 1 << 20
	src := randomBits(n)
	h := make([]uint16, n)
	F32ToF16(h, src)
	f := make([]float32, n)
	for _, c := range []struct {
		name string
		fn   func()
	}{
		{"f16->f32", func() { F16ToF32(f, h) }},
		{"f32->f16", func() { F32ToF16(h, src) }},
		{"bf16->f32", func() { BF16ToF32(f, h) }},
		{"f32->bf16", func() { F32ToBF16(h, src) }},
	} {
		for _, simd := range []bool{true, false} {
			if simd && !simdConv {
				continue
			}
			b.Run(fmt.Sprintf("%s/simd=%v", c.name, simd), func(b *testing.B) {
				old := simdConv
				simdConv = simd
				defer func() { simdConv = old }()
				for i := 0; i < b.N; i++ {
					c.fn()
				}
				b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds()/1e9, "Gelem/s")
			})
		}
	}
}
