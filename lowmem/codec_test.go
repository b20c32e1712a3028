package lowmem

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// stateLike returns data with the features optimizer state has: Gaussian
// bulk, outliers 100x larger, exact zeros, and tiny values.
func stateLike(n int, seed uint64) []float32 {
	r := rand.New(rand.NewPCG(seed, 3))
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(r.NormFloat64())
		switch {
		case i%97 == 0:
			x[i] *= 100
		case i%13 == 0:
			x[i] = 0
		case i%29 == 0:
			x[i] *= 1e-5
		}
	}
	return x
}

func roundTrip(t *testing.T, c Codec, x []float32) []float32 {
	t.Helper()
	b := c.Encode(nil, x)
	if _, sparse := c.(Sparse); !sparse && len(b) != c.Bytes(len(x)) {
		t.Fatalf("%s: %d bytes, Bytes says %d", c.Name(), len(b), c.Bytes(len(x)))
	}
	y := make([]float32, len(x))
	if err := c.Decode(y, b); err != nil {
		t.Fatalf("%s: %v", c.Name(), err)
	}
	return y
}

// TestCodecBounds checks each codec's documented error bound element by
// element on state-like data (and that zeros stay zero).
func TestCodecBounds(t *testing.T) {
	x := stateLike(5000, 1)
	absmax := func(lo, hi int) float64 {
		m := 0.0
		for _, v := range x[lo:min(hi, len(x))] {
			m = max(m, math.Abs(float64(v)))
		}
		return m
	}
	fp8max := func(e5m2 bool) float64 {
		if e5m2 {
			return 57344
		}
		return 448
	}
	cases := []struct {
		c     Codec
		bound func(i int, v float64) float64
	}{
		{FP32{}, func(int, float64) float64 { return 0 }},
		{BF16{}, func(_ int, v float64) float64 { return math.Ldexp(math.Abs(v), -8) }},
		{BF16{Stochastic: true, Seed: 3}, func(_ int, v float64) float64 { return math.Ldexp(math.Abs(v), -7) }},
		{FP16{}, func(_ int, v float64) float64 { return max(math.Ldexp(math.Abs(v), -11), math.Ldexp(1, -25)) }},
		{FP8{}, func(_ int, v float64) float64 {
			s := absmax(0, len(x)) / fp8max(false) * 1.05
			return max(math.Ldexp(math.Abs(v), -4), math.Ldexp(s, -10))
		}},
		{FP8{E5M2: true}, func(_ int, v float64) float64 {
			s := absmax(0, len(x)) / fp8max(true) * 1.05
			return max(math.Ldexp(math.Abs(v), -3), math.Ldexp(s, -17))
		}},
		{Int8Block{}, func(i int, _ float64) float64 { return absmax(i/256*256, i/256*256+256) / 254 }},
	}
	for _, c := range cases {
		y := roundTrip(t, c.c, x)
		for i, v := range x {
			b := c.bound(i, float64(v)) * (1 + 1e-6)
			if d := math.Abs(float64(y[i]) - float64(v)); d > b {
				t.Fatalf("%s: x[%d] = %g decoded %g, error %g > bound %g", c.c.Name(), i, v, y[i], d, b)
			}
			if v == 0 && y[i] != 0 {
				t.Fatalf("%s: zero at %d decoded as %g", c.c.Name(), i, y[i])
			}
		}
	}
}

// TestDynamicBounds: block-wise dynamic quantization is within half the
// code book gap around each normalized value.
func TestDynamicBounds(t *testing.T) {
	for _, c := range []Dynamic{{Signed: true, Bits: 8}, {Bits: 8}, {Signed: true, Bits: 4}, {Bits: 4}} {
		cb := c.book()
		if len(cb) != 1<<c.Bits && !(len(cb) == 1<<c.Bits-1 && !c.Signed) {
			t.Fatalf("%s: code book has %d entries", c.Name(), len(cb))
		}
		x := stateLike(3001, 2)
		if !c.Signed {
			for i := range x {
				x[i] = x[i] * x[i] // second moments are non-negative
			}
		}
		y := roundTrip(t, c, x)
		bs := c.block()
		for i, v := range x {
			var amax float64
			for _, w := range x[i/bs*bs : min(len(x), i/bs*bs+bs)] {
				amax = max(amax, math.Abs(float64(w)))
			}
			nv := float32(float64(v) / amax)
			k := cb.nearest(nv)
			lo, hi := cb[max(0, k-1)], cb[min(len(cb)-1, k+1)]
			gap := float64(max(hi-cb[k], cb[k]-lo))
			if d := math.Abs(float64(y[i]) - float64(v)); d > amax*gap/2*(1+1e-5)+1e-12 {
				t.Fatalf("%s: x[%d] = %g decoded %g: error %g > %g", c.Name(), i, v, y[i], d, amax*gap/2)
			}
			if v == 0 && y[i] != 0 {
				t.Fatalf("%s: zero decoded as %g", c.Name(), y[i])
			}
		}
	}
}

// TestStochasticRoundingUnbiased: the mean of many stochastic roundings of
// one value converges to it, while round-to-nearest keeps its bias; and an
// update far below bf16 resolution survives on average.
func TestStochasticRoundingUnbiased(t *testing.T) {
	x := float32(1.00390625 + 0.001) // between two bf16 values, 1 and 1 + 2⁻⁷
	var sum, rne float64
	// Each rounding goes up with p = 0.628, so the mean of n has standard
	// deviation 2⁻⁷·√(p(1−p)/n) = 8.5e-6: allow 4 of them.
	const n = 200000
	tol := math.Ldexp(1, -7) * math.Sqrt(0.628*0.372/n) * 4
	for i := 0; i < n; i++ {
		y := roundTrip(t, BF16{Stochastic: true, Seed: uint64(i)}, []float32{x})
		sum += float64(y[0])
	}
	rne = float64(roundTrip(t, BF16{}, []float32{x})[0])
	if mean := sum / n; math.Abs(mean-float64(x)) > tol || math.Abs(rne-float64(x)) < 5e-4 {
		t.Fatalf("stochastic mean %.7f (allowed ±%.2g), RNE %.7f, x %.7f", mean, tol, rne, x)
	}
}

// TestNonFinite: fp32/bf16/fp16 keep NaN and Inf; the scaled codecs turn a
// block with a non-finite value into NaNs (never silent finite values).
func TestNonFinite(t *testing.T) {
	x := []float32{1, float32(math.NaN()), float32(math.Inf(-1)), 2}
	for _, c := range []Codec{FP32{}, BF16{}, FP16{}} {
		y := roundTrip(t, c, x)
		if !math.IsNaN(float64(y[1])) || !math.IsInf(float64(y[2]), -1) || y[0] != 1 {
			t.Fatalf("%s: %v", c.Name(), y)
		}
	}
	for _, c := range []Codec{FP8{}, Int8Block{}, Dynamic{Signed: true, Bits: 8}, Dynamic{Bits: 4}} {
		y := roundTrip(t, c, x)
		for i, v := range y {
			if !math.IsNaN(float64(v)) {
				t.Fatalf("%s: element %d of a block holding NaN decoded finite (%g)", c.Name(), i, v)
			}
		}
	}
	// fp16 saturates finite overflow instead of producing Inf.
	if y := roundTrip(t, FP16{}, []float32{1e6, -1e6}); y[0] != 65504 || y[1] != -65504 {
		t.Fatalf("fp16 saturation: %v", y)
	}
}

func TestSparseAndZU(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 5))
	n := 4099
	z, u := make([]float32, n), make([]float32, n)
	for i := range z {
		v := float32(r.NormFloat64())
		if r.Float64() < 0.1 {
			z[i] = v
		} else {
			u[i] = v * 0.01
		}
	}
	sp := Sparse{Values: FP16{}}
	b := sp.Encode(nil, z)
	if len(b) > 4+(n+7)/8+2*n/8 {
		t.Fatalf("sparse z took %d bytes", len(b))
	}
	y := make([]float32, n)
	if err := sp.Decode(y, b); err != nil {
		t.Fatal(err)
	}
	for i := range z {
		if (z[i] == 0) != (y[i] == 0) || math.Abs(float64(y[i]-z[i])) > math.Ldexp(math.Abs(float64(z[i])), -11) {
			t.Fatalf("sparse %d: %g -> %g", i, z[i], y[i])
		}
	}
	b[4] ^= 0xff // flip a bitmap byte: the non-zero count no longer matches
	if err := sp.Decode(y, b); err == nil {
		t.Fatal("corrupted bitmap accepted")
	}

	zu := ZU{Values: Int8Block{}}
	enc, err := zu.EncodeZU(nil, z, u)
	if err != nil {
		t.Fatal(err)
	}
	if len(enc) != zu.Bytes(n) || float64(len(enc))/float64(n) > 1.15 {
		t.Fatalf("z and u took %d bytes for %d params", len(enc), n)
	}
	z2, u2 := make([]float32, n), make([]float32, n)
	if err := zu.DecodeZU(z2, u2, enc); err != nil {
		t.Fatal(err)
	}
	for i := range z {
		if (z[i] != 0 && u2[i] != 0) || (z[i] == 0 && z2[i] != 0) {
			t.Fatalf("supports not restored at %d", i)
		}
	}
	u[0], z[0] = 1, 1
	if _, err := zu.EncodeZU(nil, z, u); err == nil {
		t.Fatal("overlapping z and u accepted")
	}
}

// TestBucketIndexExact: the bucket table finds the same nearest entry as a
// full binary search, on random values and on every code book entry and
// midpoint.
func TestBucketIndexExact(t *testing.T) {
	r := rand.New(rand.NewPCG(8, 8))
	books := []*bucketIndex{fp8Books[0].index, fp8Books[1].index}
	for _, bi := range dynBooks {
		books = append(books, bi)
	}
	for _, bi := range books {
		probe := []float32{0, 1, -1}
		for i, v := range bi.cb {
			probe = append(probe, v, math.Nextafter32(v, 2), math.Nextafter32(v, -2))
			if i > 0 {
				probe = append(probe, (v+bi.cb[i-1])/2)
			}
		}
		for i := 0; i < 100000; i++ {
			probe = append(probe, float32(r.NormFloat64()*math.Pow(10, -r.Float64()*8)))
		}
		// Every threshold and the value just below it, within its bucket.
		for k, thr := range bi.thr {
			if math.IsInf(float64(thr), 1) {
				continue
			}
			probe = append(probe, thr)
			if below := math.Nextafter32(thr, float32(math.Inf(-1))); math.Float32bits(below)>>16 == uint32(k) {
				probe = append(probe, below)
			}
		}
		for _, v := range probe {
			got := bi.nearest(v)
			k := math.Float32bits(v) >> 16
			if scan := bi.scan(v, int(bi.first[k]), int(bi.span[k])); got != scan {
				t.Fatalf("nearest(%g) = %d (%g), scanning the bucket's candidates %d (%g)", v, got, bi.cb[got], scan, bi.cb[scan])
			}
			if want := bi.cb.nearest(v); got != want && bi.cb[got] != bi.cb[want] {
				t.Fatalf("nearest(%g) = %d (%g), binary search %d (%g)", v, got, bi.cb[got], want, bi.cb[want])
			}
		}
	}
}

// TestEncodeRoundIsDecodeOfEncode: the one-pass save of every codec writes
// Encode's bytes and leaves exactly Decode's values, bit for bit, on
// state-like values with a zero block and a non-finite one; and RoundZU is
// EncodeZU followed by DecodeZU.
func TestEncodeRoundIsDecodeOfEncode(t *testing.T) {
	x := stateLike(3000, 21)
	clear(x[256:512]) // a zero block of the block codecs
	x[700], x[1900] = float32(math.NaN()), float32(math.Inf(-1))
	bits := func(v []float32) []uint32 {
		b := make([]uint32, len(v))
		for i, f := range v {
			b[i] = math.Float32bits(f)
		}
		return b
	}
	for _, c := range []Codec{FP32{}, BF16{}, BF16{Stochastic: true, Seed: 5}, FP16{}, FP8{}, FP8{E5M2: true}, Int8Block{},
		Dynamic{Signed: true, Bits: 8}, Dynamic{Bits: 8}, Dynamic{Signed: true, Bits: 4}, Sparse{Values: Int8Block{}}} {
		want := c.Encode(nil, x)
		dec := make([]float32, len(x))
		if err := c.Decode(dec, want); err != nil {
			t.Fatal(err)
		}
		got := slices.Clone(x)
		b := EncodeRound([]byte{7}, c, got)
		if !slices.Equal(b[1:], want) || b[0] != 7 {
			t.Errorf("%s: EncodeRound's bytes differ from Encode's", c.Name())
		}
		if !slices.Equal(bits(got), bits(dec)) {
			t.Errorf("%s: EncodeRound leaves other values than Decode gives", c.Name())
		}
	}
	n := 3000
	z, u := make([]float32, n), make([]float32, n)
	for i, v := range stateLike(n, 22) {
		if i%10 == 0 {
			z[i] = v
		} else {
			u[i] = v / 10
		}
	}
	u[5] = float32(math.Copysign(0, -1))
	for _, c := range []ZU{{Values: Int8Block{}}, {Values: Dynamic{Signed: true, Bits: 8}}, {Values: FP32{}}} {
		want, err := c.EncodeZU(nil, z, u)
		if err != nil {
			t.Fatal(err)
		}
		dz, du := make([]float32, n), make([]float32, n)
		if err := c.DecodeZU(dz, du, want); err != nil {
			t.Fatal(err)
		}
		gz, gu := slices.Clone(z), slices.Clone(u)
		got, err := c.RoundZU(nil, gz, gu)
		if err != nil || !slices.Equal(got, want) || !slices.Equal(bits(gz), bits(dz)) || !slices.Equal(bits(gu), bits(du)) {
			t.Errorf("%s: RoundZU differs from EncodeZU then DecodeZU (err %v)", c.Name(), err)
		}
	}
}
