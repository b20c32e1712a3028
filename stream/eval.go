package stream

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/elsa-stream/elsa-stream/dataset"
	"github.com/elsa-stream/elsa-stream/internal/budget"
	"github.com/elsa-stream/elsa-stream/internal/kernels"
	"github.com/elsa-stream/elsa-stream/model"
	"github.com/elsa-stream/elsa-stream/shard"
)

// EvalOptions bound the memory of an evaluation sweep.
type EvalOptions struct {
	// ActivationBytes bounds the block-boundary activations held at once
	// (0: 1 GiB). Windows are evaluated in groups that fit; each group
	// streams every block once.
	ActivationBytes int64
	// WorkspaceBytes bounds one block forward's working memory, which sets
	// the micro-batch size (0: 256 MiB).
	WorkspaceBytes int64
	// Progress, if set, is called after each unit of each group.
	Progress func(done, total int)
	// Granularity is model.Whole (a layer at a time) or model.Attention
	// (half a layer at a time).
	Granularity model.Half
	// VocabChunk is the lm_head rows converted at once (0: DefaultVocabChunk).
	VocabChunk int
	// Compute is the precision of the GEMMs (kernels.ComputeBF16: bf16
	// operands, float32 accumulation; the log-softmax stays float64).
	Compute kernels.Compute
}

// DefaultVocabChunk is the lm_head rows an eval converts at once: 4 Mi
// floats (16 MiB) at most, big enough for full-speed GEMMs.
func DefaultVocabChunk(c model.Config) int { return max(1, min(c.Vocab, (4<<20)/c.Hidden)) }

// EvalResult is the outcome of an evaluation sweep.
type EvalResult struct {
	SumNLL  float64 // Σ −log p(target) in nats
	Tokens  int     // predicted tokens
	Seconds float64
}

// Loss is the mean NLL per predicted token.
func (r EvalResult) Loss() float64 { return r.SumNLL / float64(r.Tokens) }

// PPL is exp(Loss).
func (r EvalResult) PPL() float64 { return math.Exp(r.Loss()) }

// TokensPerSecond is predicted tokens over wall time.
func (r EvalResult) TokensPerSecond() float64 { return float64(r.Tokens) / r.Seconds }

// Evaluate computes the summed NLL of windows in layer-outer order: all
// windows of a group through block 0, then block 1, ..., so at most one
// block's weights (plus the prefetched next one) and the group's
// activations are in memory.
func (s *Sweeper) Evaluate(ctx context.Context, stream *dataset.IDs, windows []dataset.Window, opt EvalOptions) (EvalResult, error) {
	start := time.Now()
	c := s.Cfg
	if opt.ActivationBytes <= 0 {
		opt.ActivationBytes = 1 << 30
	}
	if opt.WorkspaceBytes <= 0 {
		opt.WorkspaceBytes = 256 << 20
	}
	// The embedding and the lm_head are never converted whole: rows of
	// the tokens at hand, and the vocabulary in chunks with an online
	// log-sum-exp (model.HeadNLL). Only the final norm is loaded.
	var norm []float32
	if s.resident != nil {
		norm = s.resident.Head.Norm
	} else if err := s.ReadTensor(NormTensor, &norm); err != nil {
		return EvalResult{}, err
	}
	vc := opt.VocabChunk
	if vc <= 0 {
		vc = DefaultVocabChunk(c)
	}
	maxT := 0
	for _, w := range windows {
		maxT = max(maxT, w.Len)
	}
	rope := model.NewRope(c, maxT)
	groups := groupWindows(windows, evalTokenBytes(c), opt.ActivationBytes)
	var res EvalResult
	ws := &s.ws
	ws.Compute = opt.Compute
	hws := model.HeadWorkspace{Compute: opt.Compute}
	units := s.Units(opt.Granularity)
	total, done := len(groups)*len(units), 0
	for _, g := range groups {
		T := g[0].Len
		B := len(g)
		mb := microBatch(c, opt.Granularity, T, B, opt.WorkspaceBytes)
		x := make([]float32, B*T*c.Hidden)
		ids := make([]int, 0, B*T)
		targets := make([]int, 0, B*T)
		for _, w := range g {
			in, tg := stream.Window(w)
			ids = append(ids, in...)
			targets = append(targets, tg...)
		}
		if err := s.embed(x, ids); err != nil {
			return res, err
		}
		err := s.Stream(ctx, units, func(u Unit, blk *model.Block) error {
			for b0 := 0; b0 < B; b0 += mb {
				nb := min(mb, B-b0)
				c.ForLayer(u.Layer).ForwardHalf(u.Half, blk, rope, x[b0*T*c.Hidden:(b0+nb)*T*c.Hidden], nb, T, ws)
			}
			done++
			if opt.Progress != nil {
				opt.Progress(done, total)
			}
			return nil
		})
		if err != nil {
			return res, err
		}
		sum, n, err := c.HeadNLL(norm, x, targets, vc, s.lmHeadRows, &hws)
		if err != nil {
			return res, err
		}
		res.SumNLL += sum
		res.Tokens += n
	}
	res.Seconds = time.Since(start).Seconds()
	if math.IsNaN(res.SumNLL) || math.IsInf(res.SumNLL, 0) {
		// Finite weights can still overflow (activations past float32's
		// range): a perplexity of NaN is no result.
		return res, fmt.Errorf("%s: the loss over %d tokens is %v: the model's activations overflow float32", s.Model.Dir, res.Tokens, res.SumNLL)
	}
	return res, nil
}

// embed is Embed from the resident model or the checkpoint's rows.
func (s *Sweeper) embed(x []float32, ids []int) error {
	if s.resident != nil {
		s.Cfg.Embed(x, ids, s.resident.Head.Embed)
		return nil
	}
	return s.EmbedRows(x, ids)
}

// evalTokenBytes is what an eval group holds per token: its activation
// row, its input and target id, HeadNLL's running values.
func evalTokenBytes(c model.Config) int64 {
	return 4*int64(c.Hidden) + 16 + model.HeadNLLTokenBytes
}

// groupWindows splits windows into groups of equal length whose tokens
// (perToken bytes each) fit in budget bytes.
func groupWindows(windows []dataset.Window, perToken int64, budget int64) [][]dataset.Window {
	var groups [][]dataset.Window // slices of windows, not copies: a file's windows are many
	start := 0
	var bytes int64
	for i, w := range windows {
		wb := int64(w.Len) * perToken
		if i > start && (w.Len != windows[start].Len || bytes+wb > budget) {
			groups = append(groups, windows[start:i])
			start, bytes = i, 0
		}
		bytes += wb
	}
	if start < len(windows) {
		groups = append(groups, windows[start:])
	}
	return groups
}

// microBatch is the largest number of windows of T tokens (at most B) whose
// block forward fits in budget bytes of workspace (at least 1).
func microBatch(c model.Config, g model.Half, T, B int, budget int64) int {
	mb := 1
	for mb < B && c.UnitBytes(g, mb+1, T, false) <= budget {
		mb++
	}
	return mb
}

// Blocks calls fn for layers 0..L−1 in order with that layer's float32
// weights; see Stream.
func (s *Sweeper) Blocks(ctx context.Context, fn func(l int, b *model.Block) error) error {
	return s.Stream(ctx, s.Units(model.Whole), func(u Unit, b *model.Block) error { return fn(u.Layer, b) })
}

// Stream calls fn for the units in order with their float32 weights. The
// next unit is read and converted on another goroutine while fn runs on
// the current one (its pages are hinted WillNeed one further ahead), so I/O
// and conversion overlap compute; at most two units are resident. Not
// re-entrant: a Source runs one sweep at a time. A cancelled ctx stops it
// before the next unit, returning ctx's error; it returns only once the
// unit being read ahead is done.
func (s *Sweeper) Stream(ctx context.Context, order []Unit, fn func(u Unit, b *model.Block) error) error {
	return s.stream(ctx, order, nil, fn)
}

// stream is Stream with the units read by load (nil: from the checkpoint,
// or the resident weights).
func (s *Sweeper) stream(ctx context.Context, order []Unit, load func(Unit, *model.Block) error, fn func(u Unit, b *model.Block) error) error {
	if load == nil && s.resident != nil {
		for _, u := range order {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := fn(u, s.resident.Blocks[u.Layer]); err != nil {
				return err
			}
		}
		return nil
	}
	type loaded struct {
		ub  *unitBuf
		err error
	}
	free := make(chan *unitBuf, 2)
	for i := range s.unitBufs {
		if s.unitBufs[i] == nil {
			s.unitBufs[i] = &unitBuf{}
		}
		free <- s.unitBufs[i]
	}
	checkpoint := load == nil
	if checkpoint {
		load = s.LoadUnit
	}
	ready := make(chan loaded, 1)
	stop := make(chan struct{})
	// Returning early (an error, a cancelled ctx) must also wait for the
	// loader: a load in progress writes the unit buffers and, for a
	// gradient sweep, the caller's state store, which the caller owns again
	// once stream returns.
	loaderDone := make(chan struct{})
	defer func() { close(stop); <-loaderDone }()
	go func() {
		defer close(loaderDone)
		for i, u := range order {
			var ub *unitBuf
			select {
			case ub = <-free:
			case <-stop:
				return
			}
			if checkpoint && i+1 < len(order) {
				s.advise(order[i+1], shard.WillNeed)
			}
			err := load(u, s.bind(u, ub))
			select {
			case ready <- loaded{ub, err}:
			case <-stop:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	for _, u := range order {
		t := time.Now()
		r := <-ready
		s.IOWait += time.Since(t)
		if r.err != nil {
			return r.err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(u, &r.ub.b); err != nil {
			return err
		}
		free <- r.ub
	}
	return nil
}

// ReadRows fills dst [len(ids) × cols] with rows ids of the 2-D tensor
// name (an embedding) as float32, converting only those rows; each row's
// mapped pages are dropped as soon as it is converted, so at most one
// row's pages are resident (and reserved) at a time.
func (s *Source) ReadRows(name string, ids []int, dst []float32) error {
	t, ok := s.Model.Tensor(name)
	if !ok || len(t.Shape) != 2 {
		return fmt.Errorf("%s: missing 2-D tensor %s", s.Model.Dir, name)
	}
	D := int(t.Shape[1])
	r, err := s.reserveRange(t, D, "mapped pages of a tensor row")
	if err != nil {
		return err
	}
	defer r.Release()
	done := map[int]int{} // id -> the first position holding its row
	for i, id := range ids {
		row := dst[i*D : (i+1)*D]
		if j, ok := done[id]; ok {
			copy(row, dst[j*D:(j+1)*D])
			continue
		}
		if id < 0 || int64(id) >= t.Shape[0] {
			return fmt.Errorf("%s: row %d of %s, which has %d", s.Model.Dir, id, name, t.Shape[0])
		}
		if err := readRange(t, row, int64(id)*int64(D)); err != nil {
			return err
		}
		done[id] = i
	}
	return t.Advise(shard.DontNeed) // also the pages fault-around and readahead brought in
}

// EmbedRows is Embed from the checkpoint: x [len(ids) × D] gets the
// (scaled) embedding rows of ids, and only those rows are converted (the
// embedding is never whole in fp32).
func (s *Source) EmbedRows(x []float32, ids []int) error {
	if err := s.ReadRows(EmbedTensor, ids, x); err != nil {
		return err
	}
	s.Cfg.ScaleEmbedding(x[:len(ids)*s.Cfg.Hidden])
	return nil
}

// reserveRange reserves the mapped pages a read of n elements of t keeps
// resident (nil without a ledger or a mapping).
func (s *Source) reserveRange(t *shard.Tensor, n int, what string) (*budget.Reservation, error) {
	if s.Ledger == nil || !t.File.Mapped() {
		return nil, nil
	}
	return s.Ledger.Reserve(what, min(t.NumBytes(), int64(n)*t.DType.Size()+rangeSlack))
}

// rangeSlack is the partial pages at either end of a mapped range.
const rangeSlack = 2 * 4096

// readRange converts elements [off, off+len(dst)) of t, refuses
// non-finite values, and drops the range's mapped pages at once.
func readRange(t *shard.Tensor, dst []float32, off int64) error {
	if err := t.ReadRangeFloat32(dst, off); err != nil {
		return err
	}
	if err := t.CheckFiniteAt(f32Bytes(dst), shard.F32, off); err != nil {
		return err
	}
	t.AdviseRange(shard.DontNeed, off, int64(len(dst))) // a hint: failure only costs memory
	return nil
}

// lmHeadRows fills dst with lm_head rows [lo, hi) as float32 (the
// embedding's when tied): HeadNLL's source of vocabulary chunks.
func (s *Sweeper) lmHeadRows(lo, hi int, dst []float32) error {
	D := s.Cfg.Hidden
	if s.resident != nil {
		copy(dst, s.resident.Head.LMHead[lo*D:hi*D])
		return nil
	}
	return s.ReadRange(s.LMHeadName(), lo*D, dst)
}

// ReadRange converts elements [off, off+len(dst)) of tensor name to
// float32 (refusing non-finite values) without converting the rest: a
// vocabulary chunk of the head, a part of a large dense tensor. Its mapped
// pages are reserved while read and dropped after.
func (s *Source) ReadRange(name string, off int, dst []float32) error {
	t, ok := s.Model.Tensor(name)
	if !ok {
		return fmt.Errorf("%s: missing tensor %s", s.Model.Dir, name)
	}
	if end := int64(off) + int64(len(dst)); off < 0 || end > t.NumElements() {
		return fmt.Errorf("%s: %s has %d elements, cannot read [%d, %d)", s.Model.Dir, name, t.NumElements(), off, end)
	}
	r, err := s.reserveRange(t, len(dst), "mapped pages of a tensor range")
	if err != nil {
		return err
	}
	defer r.Release()
	if err := readRange(t, dst, int64(off)); err != nil {
		return err
	}
	return t.Advise(shard.DontNeed) // readahead runs past the range
}
