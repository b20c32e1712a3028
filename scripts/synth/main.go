// Command synth writes a synthetic LLaMA-shaped Hugging Face checkpoint with
// random weights, for memory and speed tests of models that cannot be
// downloaded here. Tensors are generated and written one at a time through
// elsa-stream's streamed writer, so a checkpoint far larger than RAM can be
// made; shards follow HF naming with an index.
//
//	go run ./scripts/synth --out /tmp/synth-7b8 --preset llama-7b --layers 8
//	go run ./scripts/synth --out /tmp/s --hidden 2048 --intermediate 5632 --heads 16 --layers 16 --vocab 32000 --tied
//	go run ./scripts/synth --out /tmp/g27 --config configs/gemma-2-27b.json --layers 2
//
// With --config the architecture is a real config.json's (LLaMA, Qwen2/3,
// Gemma-2/3: every tensor its blocks have, real shapes and vocabulary),
// with num_hidden_layers replaced by --layers.
// Weights are uniform in ±√(3/fan_in) (unit-variance activations), norms
// are 1; dtype bf16 (default), f16 or f32.
package main

import (
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"

	"github.com/elsa-stream/elsa-stream/internal/budget"
	"github.com/elsa-stream/elsa-stream/internal/kernels"
	"github.com/elsa-stream/elsa-stream/model"
	"github.com/elsa-stream/elsa-stream/shard"
	"github.com/elsa-stream/elsa-stream/stream"
)

func main() {
	out := flag.String("out", "", "output folder (must not exist)")
	preset := flag.String("preset", "", "llama-7b: hidden 4096, MLP 11008, 32 heads, vocab 32000 (other flags override)")
	hidden := flag.Int("hidden", 0, "hidden size")
	inter := flag.Int("intermediate", 0, "MLP size")
	heads := flag.Int("heads", 0, "attention heads")
	kvHeads := flag.Int("kv-heads", 0, "kv heads (default: heads)")
	layers := flag.Int("layers", 0, "decoder layers")
	vocab := flag.Int("vocab", 0, "vocabulary size")
	ctx := flag.Int("context", 4096, "max_position_embeddings")
	tied := flag.Bool("tied", false, "tie lm_head to the embedding")
	dtype := flag.String("dtype", "bf16", "bf16, f16 or f32")
	maxShard := flag.String("max-shard-size", "5GB", "shard size limit")
	seed := flag.Uint64("seed", 1, "random seed")
	configPath := flag.String("config", "", "a config.json whose architecture and shapes to use (--layers overrides its layer count)")
	flag.Parse()
	if *out == "" {
		fail("--out is required")
	}
	c := model.Config{Hidden: 64, Intermediate: 172, Heads: 8, Layers: 2, Vocab: 512}
	var rawCfg map[string]any
	if *configPath != "" {
		hc, err := shard.ReadConfig(*configPath)
		if err != nil {
			fail("%v", err)
		}
		b, _ := os.ReadFile(*configPath)
		json.Unmarshal(b, &rawCfg)
		if *layers > 0 {
			hc.NumHiddenLayers = *layers
			rawCfg["num_hidden_layers"] = *layers
			if lt, ok := rawCfg["layer_types"].([]any); ok && len(lt) > *layers {
				rawCfg["layer_types"] = lt[:*layers]
			}
		}
		c = stream.ConfigFromHF(hc)
		*dtype = map[string]string{"float32": "f32", "float16": "f16"}[hc.TorchDType]
		if *dtype == "" {
			*dtype = "bf16"
		}
		rawCfg["torch_dtype"] = map[string]string{"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[*dtype]
	} else if *preset == "llama-7b" {
		c = model.Config{Hidden: 4096, Intermediate: 11008, Heads: 32, Layers: 32, Vocab: 32000}
	} else if *preset != "" {
		fail("unknown preset %q", *preset)
	}
	set := func(dst *int, v int) {
		if v > 0 {
			*dst = v
		}
	}
	if rawCfg == nil {
		set(&c.Hidden, *hidden)
		set(&c.Intermediate, *inter)
		set(&c.Heads, *heads)
		set(&c.Layers, *layers)
		set(&c.Vocab, *vocab)
		c.KVHeads = c.Heads
		set(&c.KVHeads, *kvHeads)
		c.HeadDim = c.Hidden / c.Heads
		c.TiedEmbeddings = *tied
	}
	if err := c.Validate(); err != nil {
		fail("%v", err)
	}
	dt := map[string]shard.DType{"bf16": shard.BF16, "f16": shard.F16, "f32": shard.F32}[*dtype]
	if dt == 0 && *dtype != "bf16" {
		fail("--dtype %q: want bf16, f16 or f32", *dtype)
	}
	limit, err := budget.ParseSize(*maxShard)
	if err != nil {
		fail("--max-shard-size: %v", err)
	}

	var specs []shard.Spec
	fanIn := map[string]int{}
	add := func(name string, shape []int, in int) {
		s := make([]int64, len(shape))
		for i, d := range shape {
			s[i] = int64(d)
		}
		specs = append(specs, shard.Spec{Name: name, DType: dt, Shape: s})
		fanIn[name] = in
	}
	add(stream.EmbedTensor, []int{c.Vocab, c.Hidden}, 2500) // std 0.02, as HF initialises embeddings
	for l := 0; l < c.Layers; l++ {
		for _, p := range c.BlockParams() {
			in := 0 // norm: ones
			if p.Linear {
				in = p.Shape[1]
			}
			add(stream.LayerTensor(l, p.Suffix), p.Shape, in)
		}
	}
	add(stream.NormTensor, []int{c.Hidden}, 0)
	if !c.TiedEmbeddings {
		add(stream.LMHeadTensor, []int{c.Vocab, c.Hidden}, c.Hidden)
	}
	w, err := shard.NewWriter(*out, specs, shard.WriterOptions{MaxShardSize: limit, Metadata: map[string]string{"source": "scripts/synth"}})
	if err != nil {
		fail("%v", err)
	}
	r := rand.New(rand.NewPCG(*seed, 7))
	var total int64
	for _, s := range specs {
		n := int64(1)
		for _, d := range s.Shape {
			n *= d
		}
		vals := make([]float32, n)
		if in := fanIn[s.Name]; in == 0 {
			for i := range vals {
				vals[i] = 1 - c.NormOffset // an effective scale of 1 (Gemma stores w of 1 + w)
			}
		} else {
			a := float32(math.Sqrt(3 / float64(in)))
			for i := range vals {
				vals[i] = a * (2*float32(r.Uint32()>>8)/(1<<24) - 1)
			}
		}
		if err := w.WriteTensor(s.Name, encode(vals, dt)); err != nil {
			fail("%v", err)
		}
		total += n
	}
	cfg := rawCfg
	if cfg == nil {
		cfg = map[string]any{
			"architectures": []string{"LlamaForCausalLM"}, "model_type": "llama",
			"hidden_size": c.Hidden, "intermediate_size": c.Intermediate, "num_hidden_layers": c.Layers,
			"num_attention_heads": c.Heads, "num_key_value_heads": c.KVHeads, "vocab_size": c.Vocab,
			"max_position_embeddings": *ctx, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
			"tie_word_embeddings": c.TiedEmbeddings, "torch_dtype": map[shard.DType]string{shard.BF16: "bfloat16", shard.F16: "float16", shard.F32: "float32"}[dt],
			"bos_token_id": 1, "eos_token_id": 2,
		}
	}
	b, _ := json.MarshalIndent(cfg, "", "  ")
	if err := w.AddFile(shard.ConfigFile, append(b, '\n')); err != nil {
		fail("%v", err)
	}
	if err := w.Commit(); err != nil {
		fail("%v", err)
	}
	fmt.Printf("wrote %s: %d parameters (%s as %s) in %d shard(s)\n", *out, total, budget.Format(total*dt.Size()), dt, w.ShardCount())
}

func encode(v []float32, dt shard.DType) []byte {
	switch dt {
	case shard.F32:
		b := make([]byte, 4*len(v))
		for i, x := range v {
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
		}
		return b
	}
	h := make([]uint16, len(v))
	if dt == shard.BF16 {
		kernels.F32ToBF16(h, v)
	} else {
		kernels.F32ToF16(h, v)
	}
	b := make([]byte, 2*len(h))
	for i, x := range h {
		binary.LittleEndian.PutUint16(b[2*i:], x)
	}
	return b
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "synth: "+format+"\n", args...)
	os.Exit(2)
}
