// Package llama2c converts llama2.c checkpoints (the legacy "v0" layout and
// the version-1 "ak42" layout) into Hugging Face LlamaForCausalLM folders.
package llama2c

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"

	mmap "github.com/edsrzf/mmap-go"

	"github.com/elsa-stream/elsa-stream/shard"
	"github.com/elsa-stream/elsa-stream/tokenizer"
)

// Magic is the version-1 header magic, "ak42" read as a little-endian uint32.
const Magic = 0x616b3432

// v1HeaderSize is the padded size of the version-1 header.
const v1HeaderSize = 256

// Params are the hyper-parameters in a llama2.c header.
type Params struct {
	Dim, HiddenDim, NLayers, NHeads, NKVHeads, VocabSize, SeqLen int
	SharedClassifier                                             bool
	Version                                                      int // 0 (legacy) or 1
}

// HeadDim is Dim / NHeads.
func (p Params) HeadDim() int { return p.Dim / p.NHeads }

func (p Params) validate(path string) error {
	for _, f := range []struct {
		name string
		v    int
	}{{"dim", p.Dim}, {"hidden_dim", p.HiddenDim}, {"n_layers", p.NLayers}, {"n_heads", p.NHeads},
		{"n_kv_heads", p.NKVHeads}, {"vocab_size", p.VocabSize}, {"seq_len", p.SeqLen}} {
		if f.v <= 0 || f.v > 1<<24 {
			return fmt.Errorf("%s: header %s = %d, want a positive dimension", path, f.name, f.v)
		}
	}
	if p.Dim%p.NHeads != 0 || p.HeadDim()%2 != 0 {
		return fmt.Errorf("%s: dim %d is not an even multiple of n_heads %d", path, p.Dim, p.NHeads)
	}
	if p.NHeads%p.NKVHeads != 0 {
		return fmt.Errorf("%s: n_heads %d is not a multiple of n_kv_heads %d", path, p.NHeads, p.NKVHeads)
	}
	return nil
}

// tensor is one weight in llama2.c order: its HF name, shape, and whether its
// rows are permuted from interleaved to half-split RoPE pairs (heads > 0).
type tensor struct {
	name  string
	shape []int64
	heads int
}

func (t tensor) numel() int64 {
	n := int64(1)
	for _, d := range t.shape {
		n *= d
	}
	return n
}

// layout lists the file's float32 arrays in file order. Per-layer kinds are
// stored for all layers before the next kind. Arrays named "" are skipped
// (v0's legacy RoPE tables).
func layout(p Params) []tensor {
	d, h, kv := int64(p.Dim), int64(p.HiddenDim), int64(p.NKVHeads*p.HeadDim())
	L := p.NLayers
	perLayer := func(kind string, shape []int64, heads int) []tensor {
		out := make([]tensor, L)
		for l := range out {
			out[l] = tensor{fmt.Sprintf("model.layers.%d.%s.weight", l, kind), shape, heads}
		}
		return out
	}
	attnNorm := perLayer("input_layernorm", []int64{d}, 0)
	ffnNorm := perLayer("post_attention_layernorm", []int64{d}, 0)
	wq := perLayer("self_attn.q_proj", []int64{d, d}, p.NHeads)
	wk := perLayer("self_attn.k_proj", []int64{kv, d}, p.NKVHeads)
	wv := perLayer("self_attn.v_proj", []int64{kv, d}, 0)
	wo := perLayer("self_attn.o_proj", []int64{d, d}, 0)
	w1 := perLayer("mlp.gate_proj", []int64{h, d}, 0)
	w2 := perLayer("mlp.down_proj", []int64{d, h}, 0)
	w3 := perLayer("mlp.up_proj", []int64{h, d}, 0)
	emb := tensor{"model.embed_tokens.weight", []int64{int64(p.VocabSize), d}, 0}
	norm := tensor{"model.norm.weight", []int64{d}, 0}
	var out []tensor
	cat := func(ts ...[]tensor) {
		for _, t := range ts {
			out = append(out, t...)
		}
	}
	if p.Version == 0 {
		cat([]tensor{emb}, attnNorm, wq, wk, wv, wo, ffnNorm, w1, w2, w3, []tensor{norm})
		rope := int64(p.SeqLen * p.HeadDim() / 2)
		cat([]tensor{{"", []int64{rope}, 0}, {"", []int64{rope}, 0}})
	} else {
		cat(attnNorm, ffnNorm, []tensor{norm, emb}, wq, wk, wv, wo, w1, w2, w3)
	}
	if !p.SharedClassifier {
		out = append(out, tensor{"lm_head.weight", []int64{int64(p.VocabSize), d}, 0})
	}
	return out
}

// ReadParams parses the header of a llama2.c checkpoint and checks the file
// size against it. It returns the params and the offset of the first weight.
func ReadParams(path string, b []byte) (Params, int64, error) {
	var p Params
	if len(b) < 28 {
		return p, 0, fmt.Errorf("%s: %d bytes, too short for a llama2.c header", path, len(b))
	}
	i32 := func(off int) int { return int(int32(binary.LittleEndian.Uint32(b[off:]))) }
	off := int64(28)
	if binary.LittleEndian.Uint32(b) == Magic {
		if len(b) < v1HeaderSize {
			return p, 0, fmt.Errorf("%s: truncated version-1 header (%d bytes)", path, len(b))
		}
		if v := i32(4); v != 1 {
			return p, 0, fmt.Errorf("%s: llama2.c format version %d is not supported (want 1; version 2 is int8-quantized)", path, v)
		}
		p = Params{Dim: i32(8), HiddenDim: i32(12), NLayers: i32(16), NHeads: i32(20), NKVHeads: i32(24),
			VocabSize: i32(28), SeqLen: i32(32), SharedClassifier: b[36] != 0, Version: 1}
		off = v1HeaderSize
	} else {
		p = Params{Dim: i32(0), HiddenDim: i32(4), NLayers: i32(8), NHeads: i32(12), NKVHeads: i32(16),
			VocabSize: i32(20), SeqLen: i32(24)}
		// v0 marks an unshared classifier with a negative vocab_size.
		p.SharedClassifier = p.VocabSize > 0
		if p.VocabSize < 0 {
			p.VocabSize = -p.VocabSize
		}
	}
	if err := p.validate(path); err != nil {
		return p, 0, err
	}
	want := off
	for _, t := range layout(p) {
		want += 4 * t.numel()
	}
	if int64(len(b)) != want {
		return p, 0, fmt.Errorf("%s: file is %d bytes, but its header (dim %d, hidden %d, %d layers, %d heads, %d kv heads, vocab %d, seq %d, shared classifier %v) implies %d",
			path, len(b), p.Dim, p.HiddenDim, p.NLayers, p.NHeads, p.NKVHeads, p.VocabSize, p.SeqLen, p.SharedClassifier, want)
	}
	return p, off, nil
}

// Options for Import.
type Options struct {
	Force bool
}

// Import converts the llama2.c checkpoint at modelPath with its tokenizer
// into a HF LlamaForCausalLM folder at outDir: HF tensor names, q/k rows
// permuted per head from llama2.c's interleaved RoPE pairs (2i, 2i+1) to HF's
// half-split convention (i, i + head_dim/2), a shared classifier expressed as
// tie_word_embeddings, and the llama2.c tokenizer converted to the two
// standard HF forms, tokenizer.json and a SentencePiece tokenizer.model
// (both encode exactly as llama2.c does; see package tokenizer's tests).
func Import(modelPath, tokPath, outDir string, opt Options) (Params, error) {
	f, err := os.Open(modelPath)
	if err != nil {
		return Params{}, err
	}
	defer f.Close()
	m, err := mmap.Map(f, mmap.RDONLY, 0)
	if err != nil {
		return Params{}, fmt.Errorf("%s: mmap: %w", modelPath, err)
	}
	defer m.Unmap()
	p, off, err := ReadParams(modelPath, m)
	if err != nil {
		return p, err
	}
	tok, err := tokenizer.LoadLlama2C(tokPath, p.VocabSize)
	if err != nil {
		return p, err
	}
	tokJSON, err := tok.HFJSON()
	if err != nil {
		return p, err
	}
	var specs []shard.Spec
	for _, t := range layout(p) {
		if t.name != "" {
			specs = append(specs, shard.Spec{Name: t.name, DType: shard.F32, Shape: t.shape})
		}
	}
	w, err := shard.NewWriter(outDir, specs, shard.WriterOptions{Force: opt.Force,
		Metadata: map[string]string{"source": "llama2.c import"}})
	if err != nil {
		return p, err
	}
	for _, t := range layout(p) {
		n := 4 * t.numel()
		raw := m[off : off+n]
		off += n
		if t.name == "" {
			continue
		}
		if t.heads > 0 {
			raw = permuteRows(raw, int(t.shape[0]), int(t.shape[1]), t.heads)
		}
		if err := w.WriteTensor(t.name, raw); err != nil {
			return p, err
		}
	}
	cfg, err := configJSON(p)
	if err != nil {
		w.Abort()
		return p, err
	}
	if err := w.AddFile(shard.ConfigFile, cfg); err != nil {
		return p, err
	}
	for _, f := range []struct {
		name string
		data []byte
	}{
		{tokenizer.HFFile, tokJSON},
		{tokenizer.SentencePieceFile, tok.SentencePieceModel()},
		{tokenizer.HFConfigFile, []byte(tokenizerConfig)},
	} {
		if err := w.AddFile(f.name, f.data); err != nil {
			return p, err
		}
	}
	return p, w.Commit()
}

// tokenizerConfig makes transformers load the tokenizer as LLaMA's (BOS
// added, no EOS), matching llama2.c's encode(bos=1, eos=0).
const tokenizerConfig = `{
  "tokenizer_class": "LlamaTokenizer",
  "bos_token": "<s>",
  "eos_token": "</s>",
  "unk_token": "<unk>",
  "add_bos_token": true,
  "add_eos_token": false,
  "legacy": true,
  "clean_up_tokenization_spaces": false,
  "model_max_length": 1000000000000000019884624838656
}
`

// permuteRows maps row h*hd + 2i + j of a [rows x cols] float32 matrix to row
// h*hd + j*hd/2 + i (hd = rows/heads): llama2.c's interleaved RoPE pairs
// become HF's rotate_half layout (the permutation llama2.c's export.py and
// transformers' convert_llama_weights_to_hf.py apply).
func permuteRows(raw []byte, rows, cols, heads int) []byte {
	hd := rows / heads
	out := make([]byte, len(raw))
	rb := 4 * cols
	for h := 0; h < heads; h++ {
		for i := 0; i < hd/2; i++ {
			for j := 0; j < 2; j++ {
				src := h*hd + 2*i + j
				dst := h*hd + j*hd/2 + i
				copy(out[dst*rb:(dst+1)*rb], raw[src*rb:(src+1)*rb])
			}
		}
	}
	return out
}

func configJSON(p Params) ([]byte, error) {
	cfg := map[string]any{
		"architectures":           []string{"LlamaForCausalLM"},
		"model_type":              "llama",
		"hidden_size":             p.Dim,
		"intermediate_size":       p.HiddenDim,
		"num_hidden_layers":       p.NLayers,
		"num_attention_heads":     p.NHeads,
		"num_key_value_heads":     p.NKVHeads,
		"head_dim":                p.HeadDim(),
		"vocab_size":              p.VocabSize,
		"max_position_embeddings": p.SeqLen,
		"rms_norm_eps":            1e-5, // llama2.c's RMSNorm epsilon
		"rope_theta":              10000.0,
		"tie_word_embeddings":     p.SharedClassifier,
		"attention_bias":          false,
		"hidden_act":              "silu",
		"torch_dtype":             "float32",
		"bos_token_id":            1,
		"eos_token_id":            2,
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}
