package lowmem

import "fmt"

// TensorState is one tensor's Elsa state: master weights W, Adam's moments
// M and V, and for a pruned tensor the split variable Z and the scaled
// dual U (docs/design.md, Elsa).
type TensorState struct {
	W, M, V, Z, U []float32
}

// The store keeps a tensor's state in two blocks per step: the master
// weights alone (which a backward sweep rereads) and the rest.
const (
	weightsBlock = ".w"
	restBlock    = ".opt"
)

// WriteTensorState rounds st through the codecs - master for W (a seeded
// stochastic-rounding codec differs per tensor and step), c for the rest,
// Z and U as one ZU chunk when pruned - and writes it as step s of tensor
// name. The caller continues from exactly what is stored.
func (s *Store) WriteTensorState(step int, name string, c StateCodecs, master Codec, st *TensorState, pruned bool) error {
	if err := s.WriteBlock(step, name+weightsBlock, []Chunk{roundTripChunk("w", master, st.W)}); err != nil {
		return err
	}
	chunks := []Chunk{roundTripChunk("m", c.M, st.M), roundTripChunk("v", c.V, st.V)}
	if pruned {
		zu, err := c.ZU.EncodeZU(nil, st.Z, st.U)
		if err != nil {
			return err
		}
		if err := c.ZU.DecodeZU(st.Z, st.U, zu); err != nil {
			return err
		}
		chunks = append(chunks, Chunk{Name: "zu", Codec: c.ZU.Name(), N: len(st.Z), Data: zu, Compress: true})
	}
	return s.WriteBlock(step, name+restBlock, chunks)
}

// roundTripChunk encodes x with c, decodes it back into x, and returns the chunk.
func roundTripChunk(name string, c Codec, x []float32) Chunk {
	b := c.Encode(nil, x)
	if err := c.Decode(x, b); err != nil {
		panic("lowmem: codec round trip: " + err.Error()) // a codec bug, not bad input
	}
	return Chunk{Name: name, Codec: c.Name(), N: len(x), Data: b}
}

// ReadTensorState decodes tensor name's state of step s into st (slices of
// the tensor's length): W, and unless weightsOnly M, V and (pruned) Z, U.
// A chunk missing or written with other codecs is an error.
func (s *Store) ReadTensorState(step int, name string, c StateCodecs, st *TensorState, pruned, weightsOnly bool) error {
	want := []struct {
		block, chunk string
		codec        Codec
		dst          []float32
	}{{weightsBlock, "w", c.Master, st.W}, {restBlock, "m", c.M, st.M}, {restBlock, "v", c.V, st.V}}
	if weightsOnly {
		want = want[:1]
	}
	var chunks map[string]Chunk
	for i, x := range want {
		if i == 0 || x.block != want[i-1].block {
			var err error
			if chunks, err = s.ReadBlock(step, name+x.block); err != nil {
				return err
			}
		}
		ch, ok := chunks[x.chunk]
		if !ok || ch.Codec != x.codec.Name() || ch.N != len(x.dst) {
			return fmt.Errorf("state (%s) at step %d: missing, or not %d values of %s: written by other settings", x.chunk, step, len(x.dst), x.codec.Name())
		}
		if err := x.codec.Decode(x.dst, ch.Data); err != nil {
			return fmt.Errorf("state (%s): %w", x.chunk, err)
		}
	}
	if weightsOnly || !pruned {
		return nil
	}
	ch, ok := chunks["zu"]
	if !ok || ch.Codec != c.ZU.Name() || ch.N != len(st.Z) {
		return fmt.Errorf("state (zu) at step %d: missing, or not %d values of %s: written by other settings", step, len(st.Z), c.ZU.Name())
	}
	if err := c.ZU.DecodeZU(st.Z, st.U, ch.Data); err != nil {
		return fmt.Errorf("state (zu): %w", err)
	}
	return nil
}
