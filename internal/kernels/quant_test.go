package kernels

import (
	"math"
	"math/rand/v2"
	"testing"
)

func TestInt8BlockRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(4, 4))
	for _, n := range []int{0, 1, 255, 256, 257, 5000} {
		x := make([]float32, n)
		for i := range x {
			x[i] = float32(r.NormFloat64())
			if i%97 == 0 {
				x[i] *= 100 // outliers
			}
			if i%13 == 0 {
				x[i] = 0
			}
		}
		nb := (n + Int8Block - 1) / Int8Block
		q, s, y := make([]int8, n), make([]float32, nb), make([]float32, n)
		QuantizeInt8Block(q, s, x)
		DequantizeInt8Block(y, q, s)
		for i := range x {
			bound := s[i/Int8Block]/2 + 1e-7*float32(math.Abs(float64(x[i])))
			if d := float32(math.Abs(float64(x[i] - y[i]))); d > bound {
				t.Fatalf("n=%d x[%d]=%v decoded %v: error %v > scale/2 = %v", n, i, x[i], y[i], d, bound)
			}
			if x[i] == 0 && y[i] != 0 {
				t.Fatalf("zero not kept exactly")
			}
		}
	}
	x := []float32{1, float32(math.Inf(1)), 2}
	q, s, y := make([]int8, 3), make([]float32, 1), make([]float32, 3)
	QuantizeInt8Block(q, s, x)
	DequantizeInt8Block(y, q, s)
	if !math.IsNaN(float64(y[0])) {
		t.Fatal("a block with Inf must decode to NaN, not silently to finite values")
	}
}

func TestAxpyScale(t *testing.T) {
	y := []float32{1, 2}
	Axpy(2, []float32{3, 4}, y)
	Scale(0.5, y)
	if y[0] != 3.5 || y[1] != 5 {
		t.Fatal(y)
	}
}
