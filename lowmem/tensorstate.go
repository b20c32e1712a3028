package lowmem

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
)

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

// WriteTensorState rounds st through the codecs (EncodeState) and writes
// it as step s of tensor name. The caller continues from exactly what is
// stored.
func (s *Store) WriteTensorState(step int, name string, c StateCodecs, master Codec, st *TensorState, pruned bool) error {
	w, rest, err := EncodeState(c, master, st, pruned)
	if err != nil {
		return err
	}
	if err := s.WriteBlock(step, name+weightsBlock, []Chunk{w}); err != nil {
		return err
	}
	return s.WriteBlock(step, name+restBlock, rest)
}

// EncodeState encodes a tensor's state as the store keeps it - master for
// W (a seeded stochastic-rounding codec differs per tensor and step), c for
// the rest, Z and U as one ZU chunk when pruned - and replaces every
// component by its decoded value. The components are independent, so they
// are encoded at once, each by its codec as always: the bytes do not
// depend on the cores (the codecs are most of an update's CPU: the whole
// Elsa-L state of a pruned parameter ~23 ns to save, ~6 ns to load, one core).
func EncodeState(c StateCodecs, master Codec, st *TensorState, pruned bool) (w Chunk, rest []Chunk, err error) {
	rest = make([]Chunk, 2, 3)
	var zu []byte
	jobs := []func() error{
		func() error { w = roundTripChunk("w", master, st.W); return nil },
		func() error { rest[0] = roundTripChunk("m", c.M, st.M); return nil },
		func() error { rest[1] = roundTripChunk("v", c.V, st.V); return nil },
	}
	if pruned {
		jobs = append(jobs, func() error {
			var err error
			zu, err = c.ZU.RoundZU(nil, st.Z, st.U)
			return err
		})
	}
	if err := concurrently(jobs); err != nil {
		return Chunk{}, nil, err
	}
	if pruned {
		rest = append(rest, Chunk{Name: "zu", Codec: c.ZU.Name(), N: len(st.Z), Data: zu, Compress: true})
	}
	return w, rest, nil
}

// concurrently runs jobs on their own goroutines (up to GOMAXPROCS at a
// time) and returns the first error in job order.
func concurrently(jobs []func() error) error {
	errs := make([]error, len(jobs))
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	var wg sync.WaitGroup
	for i, job := range jobs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			errs[i] = job()
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// roundTripChunk encodes x with c, leaves in x what decoding it gives, and
// returns the chunk.
func roundTripChunk(name string, c Codec, x []float32) Chunk {
	return Chunk{Name: name, Codec: c.Name(), N: len(x), Data: EncodeRound(nil, c, x)}
}

// EncodeRound appends x encoded with c and replaces x by its decoded
// value (what a save does): in one pass where c can, else by decoding the
// bytes.
func EncodeRound(dst []byte, c Codec, x []float32) []byte {
	if rt, ok := c.(roundTripper); ok {
		return rt.encodeRound(dst, x)
	}
	n := len(dst)
	dst = c.Encode(dst, x)
	if err := c.Decode(x, dst[n:]); err != nil {
		panic("lowmem: codec round trip: " + err.Error()) // a codec bug, not bad input
	}
	return dst
}

// ReadTensorState decodes tensor name's state of step s into st (slices of
// the tensor's length): W, and unless weightsOnly M, V and (pruned) Z, U.
// A chunk missing or written with other codecs is an error. The blocks are
// read first, then the components decoded at once.
func (s *Store) ReadTensorState(step int, name string, c StateCodecs, st *TensorState, pruned, weightsOnly bool) error {
	w, err := s.ReadBlock(step, name+weightsBlock)
	if err != nil {
		return err
	}
	var rest map[string]Chunk
	if !weightsOnly {
		if rest, err = s.ReadBlock(step, name+restBlock); err != nil {
			return err
		}
	}
	return DecodeState(step, c, w, rest, st, pruned, weightsOnly)
}

// DecodeState decodes the chunks of a tensor's weights block w and (unless
// weightsOnly) its other block into st, the components at once.
func DecodeState(step int, c StateCodecs, w, rest map[string]Chunk, st *TensorState, pruned, weightsOnly bool) error {
	want := []struct {
		chunks map[string]Chunk
		chunk  string
		codec  Codec
		dst    []float32
	}{{w, "w", c.Master, st.W}, {rest, "m", c.M, st.M}, {rest, "v", c.V, st.V}}
	if weightsOnly {
		want = want[:1]
	}
	var jobs []func() error
	for _, x := range want {
		ch, ok := x.chunks[x.chunk]
		if !ok || ch.Codec != x.codec.Name() || ch.N != len(x.dst) {
			return fmt.Errorf("state (%s) at step %d: missing, or not %d values of %s: written by other settings", x.chunk, step, len(x.dst), x.codec.Name())
		}
		jobs = append(jobs, func() error {
			if err := x.codec.Decode(x.dst, ch.Data); err != nil {
				return fmt.Errorf("state (%s): %w", x.chunk, err)
			}
			return nil
		})
	}
	if !weightsOnly && pruned {
		ch, ok := rest["zu"]
		if !ok || ch.Codec != c.ZU.Name() || ch.N != len(st.Z) {
			return fmt.Errorf("state (zu) at step %d: missing, or not %d values of %s: written by other settings", step, len(st.Z), c.ZU.Name())
		}
		jobs = append(jobs, func() error {
			if err := c.ZU.DecodeZU(st.Z, st.U, ch.Data); err != nil {
				return fmt.Errorf("state (zu): %w", err)
			}
			return nil
		})
	}
	return concurrently(jobs)
}
