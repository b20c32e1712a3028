package lowmem

import (
	"math/rand/v2"
	"testing"
)

const benchN = 1 << 20

// BenchmarkCodec reports encode and decode throughput in GB/s of float32
// input (4 bytes per value) on 1M state-like values.
func BenchmarkCodec(b *testing.B) {
	x := stateLike(benchN, 9)
	for _, c := range []Codec{FP32{}, BF16{}, BF16{Stochastic: true}, FP16{}, FP8{}, FP8{E5M2: true}, Int8Block{},
		Dynamic{Signed: true, Bits: 8}, Dynamic{Bits: 8}, Dynamic{Signed: true, Bits: 4}, Sparse{Values: Int8Block{}}} {
		enc := c.Encode(nil, x)
		b.Run(c.Name()+"/encode", func(b *testing.B) {
			buf := make([]byte, 0, len(enc))
			for i := 0; i < b.N; i++ {
				buf = c.Encode(buf[:0], x)
			}
			b.ReportMetric(4*benchN*float64(b.N)/b.Elapsed().Seconds()/1e9, "GB/s")
		})
		b.Run(c.Name()+"/decode", func(b *testing.B) {
			y := make([]float32, benchN)
			for i := 0; i < b.N; i++ {
				if err := c.Decode(y, enc); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(4*benchN*float64(b.N)/b.Elapsed().Seconds()/1e9, "GB/s")
		})
	}
}

// BenchmarkElsaLState reports what an Elsa-L update spends on its state
// codecs per pruned parameter (90% sparse z): EncodeState (round every
// component through its codec, as a save does) and DecodeState (as a
// load does, the gradient not included), in ns/param of wall time with
// the components decoded at once.
func BenchmarkElsaLState(b *testing.B) {
	st := elsaLState(benchN)
	w, rest, err := EncodeState(ElsaLState, ElsaLState.Master, st, true)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("encode", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if _, _, err := EncodeState(ElsaLState, ElsaLState.Master, st, true); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/benchN, "ns/param")
	})
	b.Run("decode", func(b *testing.B) {
		ws := map[string]Chunk{"w": w}
		rs := map[string]Chunk{}
		for _, c := range rest {
			rs[c.Name] = c
		}
		for i := 0; i < b.N; i++ {
			if err := DecodeState(0, ElsaLState, ws, rs, st, true, false); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/benchN, "ns/param")
	})
}

// elsaLState is one tensor's state of n pruned parameters at 90% sparsity.
func elsaLState(n int) *TensorState {
	r := rand.New(rand.NewPCG(4, 4))
	st := &TensorState{W: make([]float32, n), M: make([]float32, n), V: make([]float32, n), Z: make([]float32, n), U: make([]float32, n)}
	for i := range st.W {
		st.W[i] = float32(r.NormFloat64() * 0.02)
		st.M[i] = float32(r.NormFloat64() * 1e-4)
		st.V[i] = float32(r.ExpFloat64() * 1e-8)
		if r.Float64() < 0.1 {
			st.Z[i] = st.W[i]
		} else {
			st.U[i] = st.W[i] * 0.1
		}
	}
	return st
}

// elsaLBlock encodes one block of n pruned parameters at 90% sparsity in
// the default Elsa-L layout.
func elsaLBlock(n int) []Chunk {
	st := elsaLState(n)
	w, m, v, z, u := st.W, st.M, st.V, st.Z, st.U
	s := ElsaLState
	zu, _ := s.ZU.EncodeZU(nil, z, u)
	return []Chunk{
		{Name: "w", Codec: s.Master.Name(), N: n, Data: s.Master.Encode(nil, w)},
		{Name: "m", Codec: s.M.Name(), N: n, Data: s.M.Encode(nil, m)},
		{Name: "v", Codec: s.V.Name(), N: n, Data: s.V.Encode(nil, v)},
		{Name: "zu", Codec: s.ZU.Name(), N: n, Data: zu, Compress: true},
	}
}

// BenchmarkStore reports the spill write and read path (checksums, zstd
// where it pays, temp+fsync+rename on write) in GB/s of stored bytes, and
// the Elsa-L state on disk per pruned parameter as bytes/param.
func BenchmarkStore(b *testing.B) {
	chunks := elsaLBlock(benchN)
	var raw int
	for _, c := range chunks {
		raw += len(c.Data)
	}
	b.Run("write", func(b *testing.B) {
		s, err := Open(b.TempDir(), "bench", nil)
		if err != nil {
			b.Fatal(err)
		}
		for i := 0; i < b.N; i++ {
			if err := s.WriteBlock(i, "layer", chunks); err != nil {
				b.Fatal(err)
			}
			if err := s.Commit(i); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(raw)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GB/s")
		disk, _ := s.BytesOnDisk()
		b.ReportMetric(float64(disk)/benchN, "bytes/param")
	})
	b.Run("read", func(b *testing.B) {
		s, _ := Open(b.TempDir(), "bench", nil)
		s.WriteBlock(0, "layer", chunks)
		s.Commit(0)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := s.ReadBlock(0, "layer"); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(raw)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GB/s")
	})
}

// TestElsaLBytesPerParam: the default layout stays within the 6-byte goal.
func TestElsaLBytesPerParam(t *testing.T) {
	s, err := Open(t.TempDir(), "t", nil)
	if err != nil {
		t.Fatal(err)
	}
	n := 1 << 16
	if err := s.WriteBlock(0, "layer", elsaLBlock(n)); err != nil {
		t.Fatal(err)
	}
	s.Commit(0)
	disk, _ := s.BytesOnDisk()
	if bpp := float64(disk) / float64(n); bpp > 6 {
		t.Fatalf("Elsa-L state takes %.2f bytes/param, goal ≤ 6", bpp)
	}
}
