package stream

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"unsafe"

	"github.com/elsa-stream/elsa-stream/internal/fsguard"
	"github.com/elsa-stream/elsa-stream/internal/kernels"
	"github.com/elsa-stream/elsa-stream/model"
)

// GradConsumer receives the gradients of one step from a gradient sweep:
// the lm_head's chunk by chunk (during the head's pass, before the
// backward sweep), each block's accumulated over all micro-batches (last
// layer first), then the final norm's and the embedding's. Optimizers
// implement it.
type GradConsumer interface {
	// LMHead gets the gradient of lm_head rows [lo, hi), in vocabulary
	// order (with tied embeddings: of the embedding's use as lm_head).
	LMHead(lo, hi int, g []float32) error
	// Block gets unit u's parameters and gradients; with half-layer
	// granularity only that half's slices are meaningful.
	Block(u Unit, w, g *model.Block) error
	// Head gets the final norm's gradient and the embedding gradient's
	// rows of ids, the step's distinct input tokens in ascending order
	// (rows [len(ids) × D]): every other row of it is zero. With tied
	// embeddings the embedding's whole gradient is these rows plus
	// LMHead's.
	Head(norm []float32, ids []int, rows []float32) error
}

// Every slice a GradConsumer or Weights gets is valid during the call only.

// SweepOptions configure a gradient sweep.
type SweepOptions struct {
	// MicroBatch is the number of windows per block pass (0: all at once).
	MicroBatch int
	// SpillDir, when set, holds the unit-boundary checkpoints on disk
	// (one file per unit) instead of in RAM.
	SpillDir string
	// Granularity is model.Whole (a layer at a time) or model.Attention
	// (half a layer at a time: twice the checkpoints, half the weights).
	Granularity model.Half
	// VocabChunk is the lm_head rows the head works on at once (0:
	// DefaultVocabChunk): the loss and the gradients never hold more of
	// the lm_head or its gradient (model.HeadLossChunked).
	VocabChunk int
	// Weights, when set, supplies the parameters instead of the checkpoint
	// (an optimizer's master weights, updated between sweeps).
	Weights Weights
	// KeepActivations keeps every unit's activations from the forward
	// sweep for the backward, which then does not recompute them (a
	// quarter of the step's FLOPs; the planner decides when they fit).
	KeepActivations bool
	// Parallel, when it has more than one process, runs the step data
	// parallel: this process computes its share of the B windows
	// (ShareOf) and every gradient, and the loss, is summed over the
	// processes before the consumer sees it, so each one gets the gradient
	// of the whole step's mean loss.
	Parallel Reducer
	// Compute is the precision of the blocks' and the head's GEMMs
	// (kernels.ComputeBF16: bf16 operands, float32 accumulation).
	Compute kernels.Compute
}

// Reducer sums a data-parallel step's partial results over the processes
// in place (mpi.Comm): every process gets the same bits.
type Reducer interface {
	Rank() int
	Size() int
	SumFloat32(x []float32) error
	SumFloat64(x []float64) error
}

// ShareOf is the windows [lo, hi) of B that process rank of size computes:
// contiguous, sizes differing by at most one.
func ShareOf(B, rank, size int) (lo, hi int) { return rank * B / size, (rank + 1) * B / size }

// Weights supplies a gradient sweep's parameters. Head is called first,
// then Unit on the prefetch goroutine, once per unit and sweep, in sweep
// order (forward true for the forward sweep, false for the backward one),
// so an optimizer can apply its pending update to a unit just before the
// forward reads it; dst's slices for u are allocated and Unit fills them.
type Weights interface {
	HeadWeights
	Unit(u Unit, forward bool, dst *model.Block) error
}

// HeadWeights supplies the parameters outside the blocks, never whole.
type HeadWeights interface {
	// Head fills norm [D] with the final norm and rows [len(ids) × D] with
	// the unscaled embedding rows of ids (distinct, ascending).
	Head(ids []int, rows, norm []float32) error
	// LMHeadRows fills dst with lm_head rows [lo, hi) (the embedding's
	// when tied): one vocabulary chunk, once per chunk in each of the
	// head's passes, after the forward sweep.
	LMHeadRows(lo, hi int, dst []float32) error
}

// SweepResult is the loss of the step.
type SweepResult struct {
	SumNLL float64
	Tokens int
}

// GradientSweep runs one training step's forward and backward passes over B
// windows of T tokens (inputs and targets [B·T], targets < 0 ignored) in
// layer-outer order and hands every gradient of the mean NLL to consumer.
//
// Forward: all micro-batches through block 0, then block 1, ...; the input
// of every block is kept as a checkpoint (in RAM or spilled). Head: loss,
// head gradients and ∂L/∂x. Backward, last block first: each block is
// reloaded, recomputed from its checkpoint and differentiated per
// micro-batch, its gradient accumulated over all of them.
func (s *Sweeper) GradientSweep(ctx context.Context, inputs, targets []int, B, T int, opt SweepOptions, consumer GradConsumer) (SweepResult, error) {
	c := s.Cfg
	D, n := c.Hidden, B*T
	if len(inputs) != n || len(targets) != n {
		return SweepResult{}, fmt.Errorf("stream: GradientSweep: %d inputs and %d targets for %d windows of %d", len(inputs), len(targets), B, T)
	}
	// The step's distinct tokens, and its predicted ones, are the whole
	// batch's on every process (so the embedding gradient's rows line up
	// across them); the windows computed here are this process's share.
	ids, local := distinct(inputs)
	count := 0
	for _, t := range targets {
		if t >= 0 {
			count++
		}
	}
	if count == 0 {
		return SweepResult{}, fmt.Errorf("stream: no predicted tokens in the step")
	}
	par := opt.Parallel
	if par != nil && par.Size() > 1 {
		if B < par.Size() {
			return SweepResult{}, fmt.Errorf("stream: a step of %d windows cannot be shared by %d processes: raise --batch to at least %d", B, par.Size(), par.Size())
		}
		lo, hi := ShareOf(B, par.Rank(), par.Size())
		local, targets, B = local[lo*T:hi*T], targets[lo*T:hi*T], hi-lo
		n = B * T
		consumer = reducing{consumer, par, s.UnitParams}
	} else {
		par = nil
	}
	mb := opt.MicroBatch
	if mb <= 0 || mb > B {
		mb = B
	}
	load := func(forward bool) func(Unit, *model.Block) error { return nil } // the checkpoint
	var hw HeadWeights = checkpointHead{s}
	if opt.Weights != nil {
		hw = opt.Weights
		load = func(forward bool) func(Unit, *model.Block) error {
			return func(u Unit, dst *model.Block) error { return opt.Weights.Unit(u, forward, dst) }
		}
	}
	// The embedding rows of the step's distinct tokens, never the whole
	// embedding: local[t] is inputs[t]'s row among them.
	rows, norm := make([]float32, len(ids)*D), make([]float32, D)
	if err := hw.Head(ids, rows, norm); err != nil {
		return SweepResult{}, err
	}
	rope := model.NewRope(c, T)
	units := s.Units(opt.Granularity)
	ck, err := newCheckpoints(len(units), n*D, opt.SpillDir)
	if err != nil {
		return SweepResult{}, err
	}
	defer ck.close()

	x := make([]float32, n*D)
	c.Embed(x, local, rows)
	ws := &s.ws
	ws.Compute, s.hws.Compute = opt.Compute, opt.Compute
	index := map[Unit]int{}
	for i, u := range units {
		index[u] = i
	}
	// kept[i] holds unit i's activations, micro-batch after micro-batch
	// (per window: c.KeptFloats(u.Half, 1, T)).
	var kept [][]float32
	if opt.KeepActivations {
		kept = s.keptBuffers(units, B, T)
	}
	err = s.stream(ctx, units, load(true), func(u Unit, w *model.Block) error {
		if err := ck.put(index[u], x); err != nil {
			return err
		}
		per := c.KeptFloats(u.Half, 1, T)
		for b0 := 0; b0 < B; b0 += mb {
			nb := min(mb, B-b0)
			lc := c.ForLayer(u.Layer)
			lc.ForwardHalf(u.Half, w, rope, x[b0*T*D:(b0+nb)*T*D], nb, T, ws)
			if kept != nil {
				lc.KeepActivations(u.Half, ws, kept[index[u]][b0*per:(b0+nb)*per])
			}
		}
		return nil
	})
	if err != nil {
		return SweepResult{}, err
	}

	// Head: the loss is the mean over the step's predicted tokens, so every
	// gradient is scaled by 1/count.
	gNorm, dx := make([]float32, D), make([]float32, n*D)
	vc := opt.VocabChunk
	if vc <= 0 {
		vc = DefaultVocabChunk(c)
	}
	sum, _, err := c.HeadLossChunked(norm, x, targets, gNorm, dx, 1/float32(count), vc, hw.LMHeadRows, consumer.LMHead, &s.hws)
	if err != nil {
		return SweepResult{}, err
	}
	if par != nil {
		total := []float64{sum}
		if err := par.SumFloat64(total); err != nil {
			return SweepResult{}, err
		}
		sum = total[0]
	}

	order := make([]Unit, len(units))
	for i, u := range units {
		order[len(units)-1-i] = u
	}
	err = s.stream(ctx, order, load(false), func(u Unit, w *model.Block) error {
		if err := ck.get(index[u], x); err != nil {
			return err
		}
		g := s.bind(u, &s.grad)
		for _, p := range s.UnitParams(u) {
			clear(*p.Get(g))
		}
		per := c.KeptFloats(u.Half, 1, T)
		for b0 := 0; b0 < B; b0 += mb {
			nb := min(mb, B-b0)
			lo, hi := b0*T*D, (b0+nb)*T*D
			if kept != nil {
				c.ForLayer(u.Layer).BackwardHalfKept(u.Half, w, g, rope, x[lo:hi], dx[lo:hi], kept[index[u]][b0*per:(b0+nb)*per], nb, T, ws)
				continue
			}
			c.ForLayer(u.Layer).BackwardHalf(u.Half, w, g, rope, x[lo:hi], dx[lo:hi], nb, T, ws)
		}
		return consumer.Block(u, w, g)
	})
	if err != nil {
		return SweepResult{}, err
	}
	clear(rows) // now the embedding rows' gradient
	c.EmbedBackward(rows, dx, local)
	if err := consumer.Head(gNorm, ids, rows); err != nil {
		return SweepResult{}, err
	}
	return SweepResult{SumNLL: sum, Tokens: count}, nil
}

// keptBuffers returns one buffer per unit for its kept activations of B
// windows, reused across sweeps (a step allocates nothing large).
func (s *Sweeper) keptBuffers(units []Unit, B, T int) [][]float32 {
	if len(s.kept) != len(units) {
		s.kept = make([][]float32, len(units))
	}
	for i, u := range units {
		n := s.Cfg.KeptFloats(u.Half, B, T)
		if cap(s.kept[i]) < n {
			s.kept[i] = make([]float32, n)
		}
		s.kept[i] = s.kept[i][:n]
	}
	return s.kept
}

// reducing is a GradConsumer that sums every gradient over the processes
// before handing it on.
type reducing struct {
	GradConsumer
	par    Reducer
	params func(Unit) []model.Param
}

func (r reducing) LMHead(lo, hi int, g []float32) error {
	if err := r.par.SumFloat32(g); err != nil {
		return err
	}
	return r.GradConsumer.LMHead(lo, hi, g)
}

func (r reducing) Block(u Unit, w, g *model.Block) error {
	for _, p := range r.params(u) { // in the same order on every process
		if err := r.par.SumFloat32(*p.Get(g)); err != nil {
			return err
		}
	}
	return r.GradConsumer.Block(u, w, g)
}

func (r reducing) Head(norm []float32, ids []int, rows []float32) error {
	if err := r.par.SumFloat32(norm); err != nil {
		return err
	}
	if err := r.par.SumFloat32(rows); err != nil {
		return err
	}
	return r.GradConsumer.Head(norm, ids, rows)
}

// distinct returns the distinct values of ids in ascending order and, for
// every position, the index of its value among them.
func distinct(ids []int) (values, index []int) {
	values = slices.Clone(ids)
	slices.Sort(values)
	values = slices.Compact(values)
	index = make([]int, len(ids))
	for i, id := range ids {
		index[i], _ = slices.BinarySearch(values, id)
	}
	return values, index
}

// checkpoints hold the input activation of every block between the forward
// and backward sweeps, in RAM or in one spill file per layer.
type checkpoints struct {
	ram [][]float32
	dir string
}

// checkpointPrefix starts the name of a sweep's spill folder in the spill
// directory.
const checkpointPrefix = "checkpoints-"

// RemoveStaleCheckpoints deletes the activation spill folders that sweeps
// of dead processes left in dir and returns their paths. Call it only while
// no live sweep uses dir (its run holds the lock on it).
func RemoveStaleCheckpoints(dir string) ([]string, error) {
	return fsguard.RemoveStale(dir, checkpointPrefix)
}

func newCheckpoints(layers, size int, dir string) (*checkpoints, error) {
	ck := &checkpoints{}
	if dir == "" {
		ck.ram = make([][]float32, layers)
		return ck, nil
	}
	d, err := os.MkdirTemp(dir, checkpointPrefix)
	if err != nil {
		return nil, fmt.Errorf("activation spill: %w", err)
	}
	ck.dir = d
	return ck, nil
}

func f32Bytes(x []float32) []byte {
	if len(x) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&x[0])), 4*len(x))
}

func (ck *checkpoints) path(l int) string {
	return filepath.Join(ck.dir, fmt.Sprintf("layer-%05d.f32", l))
}

func (ck *checkpoints) put(l int, x []float32) error {
	if ck.dir == "" {
		ck.ram[l] = append(ck.ram[l][:0], x...)
		return nil
	}
	if err := os.WriteFile(ck.path(l), f32Bytes(x), 0o600); err != nil {
		return fmt.Errorf("activation spill: %w", err)
	}
	return nil
}

func (ck *checkpoints) get(l int, x []float32) error {
	if ck.dir == "" {
		copy(x, ck.ram[l])
		ck.ram[l] = nil // each checkpoint is read once, last layer first
		return nil
	}
	f, err := os.Open(ck.path(l))
	if err != nil {
		return fmt.Errorf("activation spill: %w", err)
	}
	defer f.Close()
	if _, err := f.ReadAt(f32Bytes(x), 0); err != nil {
		return fmt.Errorf("activation spill %s: %w", ck.path(l), err)
	}
	return os.Remove(ck.path(l))
}

func (ck *checkpoints) close() {
	if ck.dir != "" {
		os.RemoveAll(ck.dir)
	}
}
