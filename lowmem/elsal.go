package lowmem

import (
	"fmt"
	"sort"
	"strings"
)

// StateCodecs are the codecs of an Elsa run's per-tensor state: master
// weights, Adam's moments, z and u (stored together), and the gradient a
// backward sweep spills for the next step's update.
type StateCodecs struct {
	Master, M, V Codec
	ZU           ZU
	Grad         Codec
}

// FP32State stores everything exactly: Elsa.
var FP32State = StateCodecs{Master: FP32{}, M: FP32{}, V: FP32{}, ZU: ZU{Values: FP32{}}, Grad: FP32{}}

// ElsaLState is the default Elsa-L state layout per pruned parameter, the
// best measured quality per byte (docs/design.md, Elsa: int8-block z,u 12.2 vs fp32
// 12.95 ppl; dynamic 8-bit Adam 13.1): master weights in bf16 with
// stochastic rounding (2 B), Adam m and v in block-wise dynamic 8-bit
// (1 + 1/64 B each), and z, u together as one int8-block quantized v plus
// the support mask (1 + 1/8 + 1/64 B): ≈ 5.17 B/param before the mask is
// compressed. The gradient lives on disk only between a backward sweep and
// the next forward sweep, in bf16 (2 B, rounded to nearest even: the
// precision mixed-precision training computes gradients in).
var ElsaLState = StateCodecs{
	Master: BF16{Stochastic: true},
	M:      Dynamic{Signed: true, Bits: 8},
	V:      Dynamic{Bits: 8},
	ZU:     ZU{Values: Int8Block{}},
	Grad:   BF16{},
}

// codecNames are the names ParseStateCodecs accepts for one variable.
var codecNames = map[string]Codec{
	"fp32": FP32{}, "bf16": BF16{}, "bf16-sr": BF16{Stochastic: true}, "fp16": FP16{},
	"fp8-e4m3": FP8{}, "fp8-e5m2": FP8{E5M2: true}, "int8": Int8Block{},
	"dyn8": Dynamic{Bits: 8}, "dyn4": Dynamic{Bits: 4},
}

// ParseStateCodecs reads "master=bf16-sr,m=dyn8,v=dyn8,zu=int8,grad=bf16"
// over base: each named variable gets the codec (fp32, bf16, bf16-sr, fp16,
// fp8-e4m3, fp8-e5m2, int8, dyn8, dyn4); variables not named keep base's.
// Dynamic codecs are signed for m, zu and grad.
func ParseStateCodecs(spec string, base StateCodecs) (StateCodecs, error) {
	out := base
	if strings.TrimSpace(spec) == "" {
		return out, nil
	}
	var names []string
	for n := range codecNames {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, kv := range strings.Split(spec, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		c, known := codecNames[v]
		if !ok || !known {
			return base, fmt.Errorf("state codec %q: want VAR=CODEC with VAR master, m, v, zu or grad and CODEC one of %s", kv, strings.Join(names, ", "))
		}
		if d, isDyn := c.(Dynamic); isDyn {
			d.Signed = k != "v"
			c = d
		}
		switch k {
		case "master":
			out.Master = c
		case "m":
			out.M = c
		case "v":
			out.V = c
		case "zu":
			out.ZU = ZU{Values: c}
		case "grad":
			out.Grad = c
		default:
			return base, fmt.Errorf("state codec %q: unknown variable %q (want master, m, v, zu or grad)", kv, k)
		}
	}
	return out, nil
}

// String is the spec ParseStateCodecs reads back.
func (s StateCodecs) String() string {
	name := func(c Codec) string {
		for n, k := range codecNames {
			if d, ok := c.(Dynamic); ok {
				if kd, ok := k.(Dynamic); ok && kd.Bits == d.Bits {
					return n
				}
				continue
			}
			if b, ok := c.(BF16); ok {
				b.Seed = 0
				c = b
			}
			if k == c {
				return n
			}
		}
		return c.Name()
	}
	return fmt.Sprintf("master=%s,m=%s,v=%s,zu=%s,grad=%s", name(s.Master), name(s.M), name(s.V), name(s.ZU.Values), name(s.Grad))
}

// BytesPerParam is what the codecs store per pruned parameter, measured on
// a block of 2^20 values (block headers and the z/u mask included): the
// whole state of one step generation, the master weights alone within it,
// and the spilled gradient.
func (c StateCodecs) BytesPerParam() (state, master, grad float64) {
	const n = 1 << 20
	master = float64(c.Master.Bytes(n)) / n
	state = master + float64(c.M.Bytes(n)+c.V.Bytes(n)+c.ZU.Bytes(n))/n
	return state, master, float64(c.Grad.Bytes(n)) / n
}
