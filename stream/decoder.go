package stream

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"time"
	"unsafe"

	"github.com/elsa-stream/elsa-stream/internal/budget"
	"github.com/elsa-stream/elsa-stream/internal/kernels"
	"github.com/elsa-stream/elsa-stream/model"
	"github.com/elsa-stream/elsa-stream/shard"
)

// Decoder generates tokens from a dense or packed checkpoint. Every matrix
// is read in place from the mapping at each token (dense rows in their
// dtype, or the packed bitmap or gap-coded form), so a token costs one
// read of the weights: their bytes, not their count, set the speed.
type Decoder struct {
	src    *Source
	cfg    model.Config
	blocks []*model.DecodeBlock
	head   model.DecodeHead
	rope   *model.Rope
	kv     *model.KVCache
	ws     model.DecodeWorkspace
	x      []float32
	logits []float32
	held   []*budget.Reservation
	// WeightBytes is what one token reads of the matrices (lm_head included).
	WeightBytes int64
	// Packed counts the matrices read in a packed (bitmap or gap-coded) form.
	Packed, Matrices int
}

// NewDecoder binds s's tensors for decoding up to context tokens (0: the
// model's context). With a ledger on s, the matrices' mapped pages (they
// stay resident: every token reads them) and the KV cache are reserved
// first: a model that does not fit its budget is refused before anything
// is read.
func NewDecoder(s *Source, context int) (*Decoder, error) {
	c := s.Cfg
	if context <= 0 || context > c.MaxPositions {
		context = c.MaxPositions
	}
	d := &Decoder{src: s, cfg: c, rope: model.NewRope(c, context)}
	// The matrices, each bound to its tensor.
	type binding struct {
		name string
		dst  *model.Linear
	}
	var lins []binding
	for l := 0; l < c.Layers; l++ {
		b := &model.DecodeBlock{}
		d.blocks = append(d.blocks, b)
		for _, m := range []binding{{"self_attn.q_proj.weight", &b.Wq}, {"self_attn.k_proj.weight", &b.Wk},
			{"self_attn.v_proj.weight", &b.Wv}, {"self_attn.o_proj.weight", &b.Wo}, {"mlp.gate_proj.weight", &b.Wgate},
			{"mlp.up_proj.weight", &b.Wup}, {"mlp.down_proj.weight", &b.Wdown}} {
			lins = append(lins, binding{LayerTensor(l, m.name), m.dst})
		}
	}
	lins = append(lins, binding{s.LMHeadName(), &d.head.LMHead})
	// Gap-coded matrices wider than x's share of L1 are read from a copy
	// in column blocks (kernels.GapsBlocks), made once the ledger holds
	// its bytes; their mapped pages then leave the RSS.
	var wide []binding
	for _, li := range lins {
		lin, n, packed, err := linearOf(s.Model, li.name)
		if err != nil {
			d.Close()
			return nil, err
		}
		*li.dst = lin
		if g, ok := lin.(*kernels.GapsRows); ok && g.Cols > gapsBlockCols {
			n = g.ColumnBlocksBytes(gapsBlockCols)
			wide = append(wide, li)
		}
		d.WeightBytes += n
		d.Matrices++
		if packed {
			d.Packed++
		}
	}
	if s.Ledger != nil {
		for _, r := range []struct {
			what string
			n    int64
		}{{"weights (decoding reads all of them per token: mapped, or copied in column blocks)", d.WeightBytes}, {"KV cache", c.KVCacheBytes(context)}, {"decoding buffers", c.DecodeWorkspaceBytes(context) + 4*int64(kernels.BatchTokens*c.Hidden+c.Vocab)}} {
			res, err := s.Ledger.Reserve(r.what, r.n)
			if err != nil {
				d.Close()
				return nil, err
			}
			d.held = append(d.held, res)
		}
	}
	for _, li := range wide {
		g := (*li.dst).(*kernels.GapsRows)
		blocks := g.ColumnBlocks(gapsBlockCols)
		*li.dst = blocks
		d.WeightBytes += blocks.Bytes() - g.ColumnBlocksBytes(gapsBlockCols)
		if t, ok := s.Model.Tensor(li.name); ok {
			if err := t.Advise(shard.DontNeed); err != nil {
				d.Close()
				return nil, err
			}
		}
	}
	for l, b := range d.blocks {
		var vec model.Block // the norms and biases, as float32
		for _, p := range c.BlockParams() {
			if !p.Linear {
				if err := s.ReadTensor(LayerTensor(l, p.Suffix), p.Get(&vec)); err != nil {
					d.Close()
					return nil, err
				}
			}
		}
		b.AttnNorm, b.MLPNorm, b.QNorm, b.KNorm, b.PostAttnNorm, b.PostFFNorm = vec.AttnNorm, vec.MLPNorm, vec.QNorm, vec.KNorm, vec.PostAttnNorm, vec.PostFFNorm
		b.Bq, b.Bk, b.Bv, b.Bo = vec.Bq, vec.Bk, vec.Bv, vec.Bo
	}
	if err := s.ReadTensor(NormTensor, &d.head.Norm); err != nil {
		d.Close()
		return nil, err
	}
	d.kv = c.NewKVCache(context)
	d.x = make([]float32, kernels.BatchTokens*c.Hidden)
	d.logits = make([]float32, c.Vocab)
	return d, nil
}

// linearOf views tensor name as a Linear over its mapped bytes: the
// bitmap or gap-coded form of a packed tensor (checked before any kernel
// reads it), or dense rows of F32, BF16 or F16 values. Without a mapping
// (--no-mmap) the bytes are read into memory. It returns the bytes one
// product reads.
func linearOf(m *shard.Model, name string) (model.Linear, int64, bool, error) {
	t, ok := m.Tensor(name)
	if !ok || len(t.Shape) != 2 {
		return nil, 0, false, fmt.Errorf("%s: missing 2-D tensor %s", m.Dir, name)
	}
	e, ok := map[shard.DType]kernels.Elem{shard.F32: kernels.F32, shard.BF16: kernels.BF16, shard.F16: kernels.F16}[t.DType]
	if !ok {
		return nil, 0, false, fmt.Errorf("%s: tensor %s is %s; decoding reads F32, BF16 and F16 weights", m.Dir, name, t.DType)
	}
	rows, cols := int(t.Shape[0]), int(t.Shape[1])
	bytesOf := func(t *shard.Tensor) ([]byte, error) {
		if b := t.Bytes(); b != nil || t.NumBytes() == 0 {
			return b, nil
		}
		b := make([]byte, t.NumBytes())
		return b, t.ReadBytes(b)
	}
	if p, packed := t.Packed(); packed {
		raw := make([][]byte, 3)
		for i, c := range []*shard.Tensor{p.RowPtr, p.Index, p.Values} {
			var err error
			if raw[i], err = bytesOf(c); err != nil {
				return nil, 0, false, err
			}
		}
		var sparse interface {
			model.Linear
			Check() error
			Bytes() int64
		}
		if p.Encoding == shard.EncodingGaps {
			sparse = &kernels.GapsRows{Rows: rows, Cols: cols, Elem: e, RowPtr: viewAs[int64](raw[0]), Gaps: raw[1], Values: raw[2]}
		} else {
			sparse = &kernels.BitmapRows{Rows: rows, Cols: cols, Elem: e, RowPtr: viewAs[int64](raw[0]), Bitmap: viewAs[uint32](raw[1]), Values: raw[2]}
		}
		if err := sparse.Check(); err != nil {
			return nil, 0, false, fmt.Errorf("%s: tensor %s: %v: the packed file is damaged", m.Dir, name, err)
		}
		if err := p.Values.CheckFinite(raw[2], t.DType); err != nil {
			return nil, 0, false, err
		}
		return sparse, sparse.Bytes(), true, nil
	}
	b, err := bytesOf(t)
	if err != nil {
		return nil, 0, false, err
	}
	if err := t.CheckFinite(b, t.DType); err != nil {
		return nil, 0, false, err
	}
	dr := &kernels.DenseRows{Rows: rows, Cols: cols, Elem: e, Data: b}
	return dr, dr.Bytes(), false, nil
}

// gapsBlockCols is kernels.GapsBlockCols, a variable so a test can take
// stories260K's narrow matrices in column blocks.
var gapsBlockCols = kernels.GapsBlockCols

// viewAs reinterprets little-endian bytes as []E (the packed layout orders
// components so each is aligned; a copy is made if one is not).
func viewAs[E any](b []byte) []E {
	var zero E
	size := int(unsafe.Sizeof(zero))
	if len(b) == 0 {
		return []E{}
	}
	if uintptr(unsafe.Pointer(&b[0]))%uintptr(size) != 0 {
		b = append([]byte(nil), b...)
	}
	return unsafe.Slice((*E)(unsafe.Pointer(&b[0])), len(b)/size)
}

// Close releases the reservations (the Source stays open).
func (d *Decoder) Close() {
	for _, r := range d.held {
		r.Release()
	}
	d.held = nil
}

// Step feeds token id at the next position and returns the logits of the
// token after it (valid until the next Step).
func (d *Decoder) Step(id int) ([]float32, error) { return d.Feed([]int{id}) }

// Feed runs ids at the next positions, kernels.BatchTokens at a time (each
// matrix read once per batch: a prompt's prefill), and returns the logits
// of the token after the last (valid until the next Feed).
func (d *Decoder) Feed(ids []int) ([]float32, error) {
	for _, id := range ids {
		if id < 0 || id >= d.cfg.Vocab {
			return nil, fmt.Errorf("token id %d is outside the vocabulary [0, %d)", id, d.cfg.Vocab)
		}
	}
	if len(ids) == 0 || len(ids) > d.kv.Cap-d.kv.Len {
		return nil, fmt.Errorf("%d tokens do not fit the %d positions left of the context of %d", len(ids), d.kv.Cap-d.kv.Len, d.kv.Cap)
	}
	for len(ids) > 0 {
		n := min(len(ids), kernels.BatchTokens)
		x := d.x[:n*d.cfg.Hidden]
		if err := d.src.ReadRows(EmbedTensor, ids[:n], x); err != nil {
			return nil, err
		}
		d.cfg.ScaleEmbedding(x)
		d.cfg.DecodeTokens(d.blocks, &d.head, d.rope, d.kv, x, n, d.logits, &d.ws)
		ids = ids[n:]
	}
	return d.logits, nil
}

// Sampling chooses the next token from logits: greedy (Temperature 0), or
// from softmax(logits/Temperature) restricted to the smallest set of most
// likely tokens whose probability reaches TopP (1: all), drawn with Rand.
type Sampling struct {
	Temperature, TopP float64
	Rand              *rand.Rand
}

// Next draws the next token.
func (s Sampling) Next(logits []float32) int {
	best := 0
	for i, v := range logits {
		if v > logits[best] {
			best = i
		}
	}
	if s.Temperature <= 0 {
		return best
	}
	type cand struct {
		id int
		p  float64
	}
	cs := make([]cand, len(logits))
	var sum float64
	for i, v := range logits {
		p := math.Exp(float64(v-logits[best]) / s.Temperature)
		cs[i] = cand{i, p}
		sum += p
	}
	sort.Slice(cs, func(i, j int) bool { return cs[i].p > cs[j].p || cs[i].p == cs[j].p && cs[i].id < cs[j].id })
	top := s.TopP
	if top <= 0 || top > 1 {
		top = 1
	}
	n, acc := 0, 0.0
	for n < len(cs) && (n == 0 || acc < top*sum) {
		acc += cs[n].p
		n++
	}
	u := s.Rand.Float64() * acc
	for _, c := range cs[:n] {
		if u -= c.p; u < 0 {
			return c.id
		}
	}
	return cs[n-1].id
}

// Generation is what Generate produced.
type Generation struct {
	Prompt, Tokens                []int
	PrefillSeconds, DecodeSeconds float64
}

// PrefillTokensPerSecond and DecodeTokensPerSecond are the two phases' rates.
func (g *Generation) PrefillTokensPerSecond() float64 {
	return float64(len(g.Prompt)) / math.Max(g.PrefillSeconds, 1e-9)
}

// DecodeTokensPerSecond: see PrefillTokensPerSecond.
func (g *Generation) DecodeTokensPerSecond() float64 {
	return float64(len(g.Tokens)) / math.Max(g.DecodeSeconds, 1e-9)
}

// Generate feeds prompt and then samples up to maxTokens tokens (fewer
// when stop says so after one, or at the end of the context), calling emit
// with each as it comes.
func (d *Decoder) Generate(ctx context.Context, prompt []int, maxTokens int, s Sampling, stop func(id int) bool, emit func(id int)) (*Generation, error) {
	if len(prompt) == 0 {
		return nil, fmt.Errorf("an empty prompt: give at least one token (e.g. BOS)")
	}
	if len(prompt) > d.kv.Cap-d.kv.Len {
		return nil, fmt.Errorf("a prompt of %d tokens does not fit the context of %d", len(prompt), d.kv.Cap-d.kv.Len)
	}
	g := &Generation{Prompt: prompt}
	t := time.Now()
	logits, err := d.Feed(prompt)
	if err != nil {
		return nil, err
	}
	g.PrefillSeconds = time.Since(t).Seconds()
	t = time.Now()
	for len(g.Tokens) < maxTokens {
		if err := ctx.Err(); err != nil {
			return g, err
		}
		id := s.Next(logits)
		g.Tokens = append(g.Tokens, id)
		if emit != nil {
			emit(id)
		}
		if (stop != nil && stop(id)) || d.kv.Len >= d.kv.Cap || len(g.Tokens) == maxTokens {
			break
		}
		var err error
		if logits, err = d.Step(id); err != nil {
			return g, err
		}
	}
	g.DecodeSeconds = time.Since(t).Seconds()
	return g, nil
}
