package model

// Weights are all parameters of a model held in memory: the reference
// "all-resident" computation that streamed sweeps are checked against, and
// the form used for small models and tests.
type Weights struct {
	Head   Head
	Blocks []*Block
}

// NewWeights allocates zeroed weights (or gradients) for c. With tied
// embeddings LMHead aliases Embed.
func (c Config) NewWeights() *Weights {
	w := &Weights{Head: Head{
		Embed: make([]float32, c.Vocab*c.Hidden),
		Norm:  make([]float32, c.Hidden),
	}}
	if c.TiedEmbeddings {
		w.Head.LMHead = w.Head.Embed
	} else {
		w.Head.LMHead = make([]float32, c.Vocab*c.Hidden)
	}
	for i := 0; i < c.Layers; i++ {
		w.Blocks = append(w.Blocks, c.NewBlock())
	}
	return w
}

// Loss runs B windows of T tokens (inputs and targets [B·T], targets < 0
// ignored) through the whole model and returns Σ NLL and the count. With
// grads non-nil it adds ∂(scale·Σ NLL)/∂θ into grads.
func (c Config) Loss(w *Weights, rope *Rope, inputs, targets []int, B, T int, grads *Weights, scale float32) (float64, int) {
	D := c.Hidden
	n := B * T
	x := make([]float32, n*D)
	c.Embed(x, inputs, w.Head.Embed)
	var ws Workspace
	var hws HeadWorkspace
	var saved [][]float32
	for l, b := range w.Blocks {
		if grads != nil {
			saved = append(saved, append([]float32(nil), x...))
		}
		c.ForLayer(l).Forward(b, rope, x, B, T, &ws)
	}
	if grads == nil {
		return c.HeadLoss(&w.Head, x, targets, nil, nil, 0, &hws)
	}
	dx := make([]float32, n*D)
	sum, count := c.HeadLoss(&w.Head, x, targets, &grads.Head, dx, scale, &hws)
	for l := len(w.Blocks) - 1; l >= 0; l-- {
		c.ForLayer(l).Backward(w.Blocks[l], grads.Blocks[l], rope, saved[l], dx, B, T, &ws)
	}
	c.EmbedBackward(grads.Head.Embed, dx, inputs)
	return sum, count
}
