package model

import (
	"fmt"
	"math/rand/v2"
	"testing"

	k "github.com/elsa-stream/elsa-stream/internal/kernels"
)

// llama7B is one LLaMA-2-7B decoder layer: hidden 4096, MLP 11008, 32 heads.
var llama7B = Config{Hidden: 4096, Intermediate: 11008, Layers: 1, Heads: 32, KVHeads: 32, HeadDim: 128,
	Vocab: 32000, MaxPositions: 4096, Eps: 1e-5, RopeTheta: 10000}

// BenchmarkBlock reports tokens/s and GFLOP/s (linear layers and attention,
// 2 flops per multiply-add) of one block forward and forward+backward
// (backward recomputes the forward) at 512 tokens, with fp32 and with bf16
// GEMMs. Run with -cpu 1,2 for
// the thread count; scripts/bench_block.sh puts PyTorch beside it.
func BenchmarkBlock(b *testing.B) {
	for _, s := range []struct {
		name string
		c    Config
		T    int
	}{{"7B", llama7B, 512}, {"stories260K", Config{Hidden: 64, Intermediate: 172, Layers: 1, Heads: 8, KVHeads: 4, HeadDim: 8,
		Vocab: 512, MaxPositions: 512, Eps: 1e-5, RopeTheta: 10000}, 512}} {
		c, T := s.c, s.T
		r := rand.New(rand.NewPCG(1, 1))
		w := c.NewBlock()
		for _, p := range c.BlockParams() {
			v := *p.Get(w)
			for i := range v {
				v[i] = float32(r.NormFloat64() * 0.02)
			}
		}
		x := make([]float32, T*c.Hidden)
		for i := range x {
			x[i] = float32(r.NormFloat64())
		}
		rope := NewRope(c, T)
		fwdFlops := 2*float64(T)*float64(c.BlockParamCount()) + 2*float64(c.Heads)*float64(T)*float64(T)*float64(c.HeadDim)
		for _, run := range []struct {
			compute k.Compute
			mode    string
		}{{k.ComputeFP32, "forward"}, {k.ComputeFP32, "forward+backward"}, {k.ComputeBF16, "forward"}, {k.ComputeBF16, "forward+backward"}} {
			mode := run.mode
			b.Run(fmt.Sprintf("%s/T=%d/%s/%s", s.name, T, run.compute, mode), func(b *testing.B) {
				ws := Workspace{Compute: run.compute}
				y := make([]float32, len(x))
				var g *Block
				flops := fwdFlops
				if mode != "forward" {
					g = c.NewBlock()
					flops = 3 * fwdFlops // recomputed forward + backward (input and weight gradients: 2x forward)
				}
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					copy(y, x)
					if g == nil {
						c.Forward(w, rope, y, 1, T, &ws)
					} else {
						c.Backward(w, g, rope, x, y, 1, T, &ws)
					}
				}
				sec := b.Elapsed().Seconds() / float64(b.N)
				b.ReportMetric(float64(T)/sec, "tokens/s")
				b.ReportMetric(flops/sec/1e9, "GFLOP/s")
			})
		}
	}
}
