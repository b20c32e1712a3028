package lowmem

// ElsaLState is the default Elsa-L state layout per pruned parameter, the
// best measured quality per byte (DESIGN.md §3: int8-block z,u 12.2 vs fp32
// 12.95 ppl; dynamic 8-bit Adam 13.1): master weights in bf16 with
// stochastic rounding (2 B), Adam m and v in block-wise dynamic 8-bit
// (1 + 1/64 B each), and z, u together as one int8-block quantized v plus
// the support mask (1 + 1/8 + 1/64 B): ≈ 5.17 B/param before the mask is
// compressed. The gradient is not stored: it is produced and consumed
// within a step.
var ElsaLState = struct {
	Master Codec
	M, V   Codec
	ZU     ZU
}{
	Master: BF16{Stochastic: true},
	M:      Dynamic{Signed: true, Bits: 8},
	V:      Dynamic{Bits: 8},
	ZU:     ZU{Values: Int8Block{}},
}
