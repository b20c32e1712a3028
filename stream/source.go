// Package stream runs models block by block: it binds checkpoint tensors to
// model blocks, converts them to float32 one block at a time (prefetching
// the next block while the current one computes) and drives layer-outer
// sweeps over many windows.
package stream

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/elsa-stream/elsa-stream/internal/budget"
	"github.com/elsa-stream/elsa-stream/internal/kernels"
	"github.com/elsa-stream/elsa-stream/model"
	"github.com/elsa-stream/elsa-stream/shard"
)

// ConfigFromHF maps a Hugging Face config onto the model's hyper-parameters.
func ConfigFromHF(c *shard.Config) model.Config {
	mc := model.Config{
		Hidden: c.HiddenSize, Intermediate: c.IntermediateSize, Layers: c.NumHiddenLayers,
		Heads: c.NumAttentionHeads, KVHeads: c.NumKeyValueHeads, HeadDim: c.HeadDim,
		Vocab: c.VocabSize, MaxPositions: c.MaxPositionEmbeddings, Eps: float32(c.RMSNormEps),
		RopeTheta: c.RopeTheta, QKVBias: c.QKVBias(), OBias: c.OBias(), QKNorm: c.QKNorm(), TiedEmbeddings: c.TieWordEmbeddings,
		SlidingWindow: c.Window(), SlidingLayers: c.SlidingLayers(),
	}
	if c.IsGemma() {
		mc.NormOffset, mc.SandwichNorms, mc.GELU = 1, true, true
		mc.QKNorm = c.IsGemma3()
		if mc.SlidingWindow > 0 {
			mc.LocalRopeTheta = orZero(c.RopeLocalBaseFreq)
		}
		mc.QueryScale = 1 / math.Sqrt(orZero(c.QueryPreAttnScalar))
		mc.AttnSoftcap, mc.FinalSoftcap = float32(orZero(c.AttnLogitSoftcapping)), float32(orZero(c.FinalLogitSoftcapping))
		mc.EmbedScale = embedScale(math.Sqrt(float64(c.HiddenSize)), c.TorchDType)
	}
	if r := c.RopeScaling; r != nil {
		mc.RopeFactor = r.Factor
		if r.Kind() == "llama3" {
			mc.RopeLowFreq, mc.RopeHighFreq, mc.RopeOrigMax = r.LowFreqFactor, r.HighFreqFactor, r.OriginalMaxPositionEmbeddings
		}
	}
	return mc
}

func orZero(p *float64) float64 {
	if p == nil {
		return 0 // null: none
	}
	return *p
}

// embedScale is Gemma's embedding normalizer √hidden as transformers
// computes it: a tensor of the checkpoint's dtype (bf16: √4608 = 67.88
// becomes 68.0).
func embedScale(s float64, dtype string) float32 {
	switch dtype {
	case "bfloat16":
		return math.Float32frombits(uint32(kernels.BF16FromF32(float32(s))) << 16)
	case "float16":
		return kernels.F16ToF32One(kernels.F16FromF32(float32(s)))
	}
	return float32(s)
}

// Source is an opened checkpoint bound to the model's parameter layout. It
// does not change after Open: sweeps run on a Sweeper, which owns their
// buffers, so a Source can serve several at once.
type Source struct {
	Model *shard.Model
	Cfg   model.Config
	// Ledger, when set, accounts the mapped pages a block conversion keeps
	// resident (they count in the RSS until DontNeed drops them).
	Ledger *budget.Ledger
}

// Sweeper runs sweeps (Evaluate, GradientSweep, Stream) over a Source,
// one at a time, reusing its buffers across them so that a step allocates
// nothing large: the garbage of per-step allocations would count in the
// RSS.
type Sweeper struct {
	*Source
	// IOWait is the time sweeps spent waiting for the next unit to be read
	// and converted (compute stalled on I/O); callers reset it.
	IOWait time.Duration

	resident *model.Weights // set by MakeResident
	unitBufs [2]*unitBuf
	grad     unitBuf
	kept     [][]float32 // SweepOptions.KeepActivations
	ws       model.Workspace
	hws      model.HeadWorkspace
}

// Sweeper returns a new Sweeper over s.
func (s *Source) Sweeper() *Sweeper { return &Sweeper{Source: s} }

// Resident returns the weights MakeResident loaded (nil before): sweeps use
// them in place, so an optimizer may update them between sweeps.
func (s *Sweeper) Resident() *model.Weights { return s.resident }

// MakeResident converts the whole model to float32 once and serves every
// later sweep of s from memory: the all-resident baseline streamed sweeps
// are compared with (only for models that fit in RAM).
func (s *Sweeper) MakeResident() error {
	w, err := s.LoadAll()
	if err != nil {
		return err
	}
	s.resident = w
	return nil
}

// checkpointHead serves a sweep without Weights the head of the
// checkpoint (or of the resident model), a chunk at a time like a
// trainer's.
type checkpointHead struct{ *Sweeper }

func (h checkpointHead) Head(ids []int, rows, norm []float32) error {
	if h.resident != nil {
		copy(norm, h.resident.Head.Norm)
		D := h.Cfg.Hidden
		for i, id := range ids {
			copy(rows[i*D:(i+1)*D], h.resident.Head.Embed[id*D:(id+1)*D])
		}
		return nil
	}
	if err := h.ReadRange(NormTensor, 0, norm); err != nil {
		return err
	}
	return h.ReadRows(EmbedTensor, ids, rows)
}

func (h checkpointHead) LMHeadRows(lo, hi int, dst []float32) error { return h.lmHeadRows(lo, hi, dst) }

// Options select how a Source reads its checkpoint.
type Options struct {
	// NoMmap reads tensors with pread (for network filesystems).
	NoMmap bool
	Ledger *budget.Ledger
}

// LayerTensor is the HF name of a block parameter.
func LayerTensor(layer int, suffix string) string {
	return fmt.Sprintf("model.layers.%d.%s", layer, suffix)
}

// TensorLayer is the layer index of a block tensor name
// ("model.layers.7.mlp.up_proj.weight": 7), or -1.
func TensorLayer(name string) int {
	rest, ok := strings.CutPrefix(name, "model.layers.")
	if !ok {
		return -1
	}
	idx, _, _ := strings.Cut(rest, ".")
	l, err := strconv.Atoi(idx)
	if err != nil {
		return -1
	}
	return l
}

// PrunedTensors lists the names of the tensors pruning sparsifies: every
// linear weight of every block, in layer order.
func (s *Source) PrunedTensors() []string {
	var names []string
	for l := 0; l < s.Cfg.Layers; l++ {
		for _, p := range s.Cfg.BlockParams() {
			if p.Linear {
				names = append(names, LayerTensor(l, p.Suffix))
			}
		}
	}
	return names
}

// HeadTensors are the HF names of the parameters outside the blocks.
const (
	EmbedTensor  = "model.embed_tokens.weight"
	NormTensor   = "model.norm.weight"
	LMHeadTensor = "lm_head.weight"
)

// LMHeadName is the tensor the head's logits are computed with: lm_head,
// or the embedding when they are tied.
func (s *Source) LMHeadName() string {
	if s.Cfg.TiedEmbeddings {
		return EmbedTensor
	}
	return LMHeadTensor
}

// Open opens a model folder and checks that its tensors are exactly the ones
// the architecture needs, with the right shapes; every missing, misshapen
// and unused tensor is reported at once.
func Open(dir string) (*Source, error) { return OpenWith(dir, Options{}) }

// OpenWith is Open with read options and a ledger.
func OpenWith(dir string, opt Options) (*Source, error) {
	m, err := shard.OpenWith(dir, shard.Options{NoMmap: opt.NoMmap, Ledger: opt.Ledger})
	if err != nil {
		return nil, err
	}
	s := &Source{Model: m, Cfg: ConfigFromHF(m.Config), Ledger: opt.Ledger}
	if err := s.Cfg.Validate(); err != nil {
		m.Close()
		return nil, err
	}
	if err := s.checkLayers(); err != nil {
		m.Close()
		return nil, err
	}
	if err := s.check(); err != nil {
		m.Close()
		return nil, err
	}
	return s, nil
}

// checkLayers compares num_hidden_layers with the layers the checkpoint
// holds before anything per layer is built: a config that claims a
// billion layers is refused at once, not after filling memory.
func (s *Source) checkLayers() error {
	n := 0 // 1 + the highest layer index among the tensor names
	for _, name := range s.Model.Names {
		n = max(n, TensorLayer(name)+1)
	}
	if n != s.Cfg.Layers {
		return fmt.Errorf("%s: config.json says num_hidden_layers %d, but the checkpoint holds tensors of %d layers", s.Model.Dir, s.Cfg.Layers, n)
	}
	return nil
}

// Close unmaps the checkpoint.
func (s *Source) Close() error { return s.Model.Close() }

// expected lists every tensor name with its shape.
func (s *Source) expected() map[string][]int {
	c := s.Cfg
	want := map[string][]int{
		EmbedTensor: {c.Vocab, c.Hidden},
		NormTensor:  {c.Hidden},
	}
	if !c.TiedEmbeddings {
		want[LMHeadTensor] = []int{c.Vocab, c.Hidden}
	}
	for l := 0; l < c.Layers; l++ {
		for _, p := range c.BlockParams() {
			want[LayerTensor(l, p.Suffix)] = p.Shape
		}
	}
	return want
}

func (s *Source) check() error {
	want := s.expected()
	var problems []string
	for name, shape := range want {
		t, ok := s.Model.Tensor(name)
		if !ok {
			problems = append(problems, fmt.Sprintf("missing %s %v", name, shape))
			continue
		}
		if !t.DType.IsFloat() {
			problems = append(problems, fmt.Sprintf("%s has dtype %s, want F32, F16 or BF16", name, t.DType))
		}
		if !sameShape(t.Shape, shape) {
			problems = append(problems, fmt.Sprintf("%s has shape %v, want %v", name, t.Shape, shape))
		}
	}
	for _, name := range s.Model.Names {
		if _, ok := want[name]; !ok && !ignorable(name) {
			problems = append(problems, fmt.Sprintf("unused tensor %s", name))
		}
	}
	if len(problems) == 0 {
		return nil
	}
	sort.Strings(problems)
	return fmt.Errorf("%s: tensors do not match %s: %s", s.Model.Dir, s.Model.Config.Architecture(), strings.Join(problems, "; "))
}

// ignorable tensors carry no parameters we use: RoPE caches some exporters
// write, and an lm_head duplicated next to tied embeddings.
func ignorable(name string) bool {
	return strings.HasSuffix(name, "rotary_emb.inv_freq") || name == LMHeadTensor
}

func sameShape(a []int64, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != int64(b[i]) {
			return false
		}
	}
	return true
}

// ReadTensor converts the checkpoint tensor name into dst (resized),
// reserving its mapped pages in the ledger while it reads.
func (s *Source) ReadTensor(name string, dst *[]float32) error { return s.read(name, dst) }

// read converts one tensor into dst. Its mapped pages are reserved in the
// ledger while they are resident and dropped (DontNeed) afterwards; with
// pread a bounce buffer of the same size is what gets reserved.
func (s *Source) read(name string, dst *[]float32) error {
	t, ok := s.Model.Tensor(name)
	if !ok {
		return fmt.Errorf("%s: missing tensor %s", s.Model.Dir, name)
	}
	n := int(t.NumElements())
	if cap(*dst) < n {
		*dst = make([]float32, n)
	}
	*dst = (*dst)[:n]
	var r *budget.Reservation
	if s.Ledger != nil && (t.DType != shard.F32 || t.File.Mapped()) {
		var err error
		if r, err = s.Ledger.Reserve("mapped pages", t.NumBytes()); err != nil {
			return err
		}
		defer r.Release()
	}
	if err := t.ReadFloat32(*dst); err != nil {
		return err
	}
	if err := t.CheckFinite(f32Bytes(*dst), shard.F32); err != nil {
		return err
	}
	return t.Advise(shard.DontNeed)
}

// ReadRaw copies the checkpoint tensor name's bytes into dst (its NumBytes
// long) for a verbatim copy into an output, refusing non-finite values as
// read does: a model that holds them is refused, never passed on.
func (s *Source) ReadRaw(name string, dst []byte) error {
	t, ok := s.Model.Tensor(name)
	if !ok {
		return fmt.Errorf("%s: missing tensor %s", s.Model.Dir, name)
	}
	if err := t.ReadBytes(dst); err != nil {
		return err
	}
	if err := t.CheckFinite(dst, t.DType); err != nil {
		return err
	}
	return t.Advise(shard.DontNeed)
}

// RawPiece is the most bytes CopyRaw reads at once.
const RawPiece = 4 << 20

// CopyRaw hands tensor name's raw bytes to emit in consecutive pieces of
// at most RawPiece bytes (whole elements), each checked finite, its
// mapped pages reserved while read and dropped after: a tensor copied
// to the output unchanged is never whole in memory.
func (s *Source) CopyRaw(name string, emit func([]byte) error) error {
	t, ok := s.Model.Tensor(name)
	if !ok {
		return fmt.Errorf("%s: missing tensor %s", s.Model.Dir, name)
	}
	size := t.DType.Size()
	piece := max(size, RawPiece/size*size)
	r, err := s.reserveRange(t, int(piece/size), "mapped pages of a tensor copied")
	if err != nil {
		return err
	}
	defer r.Release()
	buf := make([]byte, min(piece, t.NumBytes()))
	for off := int64(0); off < t.NumBytes(); off += piece {
		b := buf[:min(piece, t.NumBytes()-off)]
		if err := t.ReadRangeBytes(b, off); err != nil {
			return err
		}
		if err := t.CheckFiniteAt(b, t.DType, off/size); err != nil {
			return err
		}
		t.AdviseRange(shard.DontNeed, off/size, int64(len(b))/size) // a hint: failure only costs memory
		if err := emit(b); err != nil {
			return err
		}
	}
	return t.Advise(shard.DontNeed)
}

// Unit is what a sweep loads at once: a whole layer, or one of its halves
// when a whole layer does not fit the budget.
type Unit struct {
	Layer int
	Half  model.Half
}

// Units lists a sweep's units in forward order at granularity g (Whole, or
// Attention meaning "halves").
func (s *Source) Units(g model.Half) []Unit {
	var us []Unit
	for l := 0; l < s.Cfg.Layers; l++ {
		if g == model.Whole {
			us = append(us, Unit{l, model.Whole})
		} else {
			us = append(us, Unit{l, model.Attention}, Unit{l, model.MLP})
		}
	}
	return us
}

// UnitParams are the parameters of u.
func (s *Source) UnitParams(u Unit) []model.Param {
	var ps []model.Param
	for _, p := range s.Cfg.BlockParams() {
		if u.Half == model.Whole || p.Half == u.Half {
			ps = append(ps, p)
		}
	}
	return ps
}

// advise hints the kernel about all tensors of unit u.
func (s *Source) advise(u Unit, a shard.Advice) {
	for _, p := range s.UnitParams(u) {
		if t, ok := s.Model.Tensor(LayerTensor(u.Layer, p.Suffix)); ok {
			t.Advise(a) // a hint: failure only costs speed
		}
	}
}

// LoadBlock converts layer l's parameters to float32 into dst, reusing its
// buffers.
func (s *Source) LoadBlock(l int, dst *model.Block) error {
	return s.LoadUnit(Unit{l, model.Whole}, dst)
}

// LoadUnit converts the parameters of u into dst, reusing its buffers (the
// other half's slices are left as they were).
func (s *Source) LoadUnit(u Unit, dst *model.Block) error {
	for _, p := range s.UnitParams(u) {
		if err := s.read(LayerTensor(u.Layer, p.Suffix), p.Get(dst)); err != nil {
			return err
		}
	}
	return nil
}

// unitBuf holds one unit's float32 parameters in a single arena sized for
// the largest unit, so that alternating attention and MLP halves reuse the
// same memory instead of keeping both halves' slices alive.
type unitBuf struct {
	arena []float32
	b     model.Block
}

// bind points b's slices for u into the arena and nils the rest.
func (s *Source) bind(u Unit, ub *unitBuf) *model.Block {
	ps := s.UnitParams(u)
	n := 0
	for _, p := range ps {
		n += p.Numel()
	}
	if cap(ub.arena) < n {
		ub.arena = make([]float32, n)
	}
	ub.b = model.Block{}
	off := 0
	for _, p := range ps {
		m := p.Numel()
		*p.Get(&ub.b) = ub.arena[off : off+m : off+m]
		off += m
	}
	return &ub.b
}

// LoadHead converts the embedding, final norm and lm_head to float32.
func (s *Source) LoadHead(dst *model.Head) error {
	if err := s.read(EmbedTensor, &dst.Embed); err != nil {
		return err
	}
	if err := s.read(NormTensor, &dst.Norm); err != nil {
		return err
	}
	if s.Cfg.TiedEmbeddings {
		dst.LMHead = dst.Embed
		return nil
	}
	return s.read(LMHeadTensor, &dst.LMHead)
}

// LoadAll converts the whole model to float32 (for small models and tests).
func (s *Source) LoadAll() (*model.Weights, error) {
	w := &model.Weights{}
	if err := s.LoadHead(&w.Head); err != nil {
		return nil, err
	}
	for l := 0; l < s.Cfg.Layers; l++ {
		b := &model.Block{}
		if err := s.LoadBlock(l, b); err != nil {
			return nil, err
		}
		w.Blocks = append(w.Blocks, b)
	}
	return w, nil
}
