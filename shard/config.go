package shard

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"

	"github.com/elsa-stream/elsa-stream/internal/fsguard"
)

// SupportedArchitectures are the HF architectures elsa-stream runs: all are
// the LLaMA decoder (RMSNorm, RoPE, GQA attention, SwiGLU MLP), Qwen2 with
// q/k/v biases, Qwen3 with per-head q/k norms and an explicit head_dim.
var SupportedArchitectures = []string{"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM"}

// RopeScaling is HF's rope_scaling block. Type is "llama3" or "linear".
type RopeScaling struct {
	Type                          string  `json:"type"`
	RopeType                      string  `json:"rope_type"`
	Factor                        float64 `json:"factor"`
	LowFreqFactor                 float64 `json:"low_freq_factor"`
	HighFreqFactor                float64 `json:"high_freq_factor"`
	OriginalMaxPositionEmbeddings int     `json:"original_max_position_embeddings"`
}

// Kind returns the scaling type ("llama3", "linear", ...), whichever key names it.
func (r *RopeScaling) Kind() string {
	if r.RopeType != "" {
		return r.RopeType
	}
	return r.Type
}

// Config is the part of a Hugging Face config.json that defines a
// LLaMA-family decoder. Defaults follow transformers' LlamaConfig.
type Config struct {
	Architectures         []string     `json:"architectures"`
	ModelType             string       `json:"model_type"`
	HiddenSize            int          `json:"hidden_size"`
	IntermediateSize      int          `json:"intermediate_size"`
	NumHiddenLayers       int          `json:"num_hidden_layers"`
	NumAttentionHeads     int          `json:"num_attention_heads"`
	NumKeyValueHeads      int          `json:"num_key_value_heads"`
	HeadDim               int          `json:"head_dim"`
	VocabSize             int          `json:"vocab_size"`
	RMSNormEps            float64      `json:"rms_norm_eps"`
	RopeTheta             float64      `json:"rope_theta"`
	RopeScaling           *RopeScaling `json:"rope_scaling"`
	MaxPositionEmbeddings int          `json:"max_position_embeddings"`
	TieWordEmbeddings     bool         `json:"tie_word_embeddings"`
	AttentionBias         bool         `json:"attention_bias"`
	TorchDType            string       `json:"torch_dtype"`
	BOSTokenID            *int         `json:"bos_token_id"`
	EOSTokenID            any          `json:"eos_token_id"`
	SlidingWindow         *int         `json:"sliding_window"`
	UseSlidingWindow      *bool        `json:"use_sliding_window"`
	// Gemma-2: scores scaled by query_pre_attn_scalar^-1/2 and soft-capped,
	// logits soft-capped, GELU (tanh) MLP, sliding layers by layer_types or
	// every even layer.
	QueryPreAttnScalar    *float64 `json:"query_pre_attn_scalar"`
	AttnLogitSoftcapping  *float64 `json:"attn_logit_softcapping"`
	FinalLogitSoftcapping *float64 `json:"final_logit_softcapping"`
	HiddenActivation      string   `json:"hidden_activation"`
	HiddenAct             string   `json:"hidden_act"`
	LayerTypes            []string `json:"layer_types"`
	// Gemma-3: local RoPE base of the sliding layers, 5 local : 1 global.
	RopeLocalBaseFreq    *float64 `json:"rope_local_base_freq"`
	SlidingWindowPattern *int     `json:"sliding_window_pattern"`
}

// IsGemma3 reports a Gemma-3 text decoder (Gemma3ForCausalLM).
func (c *Config) IsGemma3() bool { return c.Architecture() == "Gemma3ForCausalLM" }

// IsGemma reports Gemma-2 or Gemma-3: (1 + w) and sandwich norms, GeGLU,
// query_pre_attn_scalar, scaled embeddings.
func (c *Config) IsGemma() bool { return c.IsGemma2() || c.IsGemma3() }

// IsGemma2 reports a Gemma-2 decoder (docs/design.md, Other architectures).
func (c *Config) IsGemma2() bool { return c.Architecture() == "Gemma2ForCausalLM" }

// SlidingLayers marks the layers that attend within Window(): layer_types'
// "sliding_attention" entries, Gemma-2's even layers without them, or nil
// (every layer, as Mistral's sliding_window means).
func (c *Config) SlidingLayers() []bool {
	if c.Window() == 0 {
		return nil
	}
	if len(c.LayerTypes) == c.NumHiddenLayers {
		out := make([]bool, c.NumHiddenLayers)
		for i, t := range c.LayerTypes {
			out[i] = t == "sliding_attention"
		}
		return out
	}
	if c.IsGemma() {
		pattern := 2 // Gemma-2: not bool(layer_idx % 2)
		if c.IsGemma3() {
			pattern = 6
			if c.SlidingWindowPattern != nil {
				pattern = *c.SlidingWindowPattern
			}
		}
		out := make([]bool, c.NumHiddenLayers)
		for i := range out {
			out[i] = (i+1)%pattern != 0
		}
		return out
	}
	return nil
}

// Bounds on config dimensions, far above any released model (Llama-3.1-405B:
// hidden 16384, MLP 53248, 126 layers, vocab 128256; Gemma-3: vocab
// 262208), so that a damaged or hostile config is refused before anything
// sized by it is allocated, and products of dimensions cannot overflow.
const (
	maxWidth   = 1 << 20 // hidden_size, intermediate_size, head_dim x heads
	maxLayers  = 1 << 12
	maxHeads   = 1 << 12
	maxVocab   = 1 << 24
	maxContext = 1 << 24
	// maxParams bounds the parameter count the config implies (2^44, ~17.6
	// trillion): every byte count derived from it stays far below 2^63.
	maxParams = 1 << 44
)

// Window is the sliding attention window the config asks for: 0 when
// attention is global (no sliding_window, null, use_sliding_window false,
// or a window at least as long as the context).
func (c *Config) Window() int {
	if c.SlidingWindow == nil || *c.SlidingWindow <= 0 || (c.UseSlidingWindow != nil && !*c.UseSlidingWindow) {
		return 0
	}
	if *c.SlidingWindow >= c.MaxPositionEmbeddings {
		return 0
	}
	return *c.SlidingWindow
}

// Architecture is the single entry of Architectures.
func (c *Config) Architecture() string {
	if len(c.Architectures) == 0 {
		return ""
	}
	return c.Architectures[0]
}

// QKVBias reports whether q, k and v projections carry a bias (always for Qwen2).
func (c *Config) QKVBias() bool { return c.AttentionBias || c.Architecture() == "Qwen2ForCausalLM" }

// OBias reports whether the output projection carries a bias (LLaMA's attention_bias).
func (c *Config) OBias() bool { return c.AttentionBias && c.Architecture() != "Qwen2ForCausalLM" }

// QKNorm reports whether q and k are RMS-normalized per head before RoPE
// (Qwen3's q_norm and k_norm).
func (c *Config) QKNorm() bool { return c.Architecture() == "Qwen3ForCausalLM" }

// ReadConfig reads and validates a config.json.
func ReadConfig(path string) (*Config, error) {
	b, err := fsguard.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseConfig(path, b)
}

// ParseConfig parses config.json bytes, applies LlamaConfig defaults and
// validates the shapes. Another architecture is refused with the list of
// supported ones.
func ParseConfig(path string, b []byte) (*Config, error) {
	c := &Config{RMSNormEps: 1e-6, RopeTheta: 10000, MaxPositionEmbeddings: 2048}
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(c); err != nil {
		return nil, invalid(path, "", "not a valid config.json: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, invalid(path, "", "not a valid config.json: data after the JSON object at byte %d", dec.InputOffset())
	}
	arch := c.Architecture()
	supported := false
	for _, a := range SupportedArchitectures {
		supported = supported || a == arch
	}
	if len(c.Architectures) != 1 || !supported {
		return nil, invalid(path, "", "architecture %q is not supported (supported: %s)",
			strings.Join(c.Architectures, ","), strings.Join(SupportedArchitectures, ", "))
	}
	if c.NumKeyValueHeads == 0 {
		c.NumKeyValueHeads = c.NumAttentionHeads
	}
	if c.IsGemma() {
		if err := c.gemmaDefaults(path, b); err != nil {
			return nil, err
		}
	}
	if c.HeadDim == 0 && c.NumAttentionHeads > 0 {
		c.HeadDim = c.HiddenSize / c.NumAttentionHeads
	}
	for _, f := range []struct {
		name string
		v    int
	}{
		{"hidden_size", c.HiddenSize}, {"intermediate_size", c.IntermediateSize},
		{"num_hidden_layers", c.NumHiddenLayers}, {"num_attention_heads", c.NumAttentionHeads},
		{"num_key_value_heads", c.NumKeyValueHeads}, {"head_dim", c.HeadDim},
		{"vocab_size", c.VocabSize}, {"max_position_embeddings", c.MaxPositionEmbeddings},
	} {
		if f.v <= 0 {
			return nil, invalid(path, "", "%s is %d, want a positive integer", f.name, f.v)
		}
	}
	for _, f := range []struct {
		name   string
		v, max int
	}{
		{"hidden_size", c.HiddenSize, maxWidth}, {"intermediate_size", c.IntermediateSize, maxWidth},
		{"num_hidden_layers", c.NumHiddenLayers, maxLayers}, {"num_attention_heads", c.NumAttentionHeads, maxHeads},
		{"num_key_value_heads", c.NumKeyValueHeads, maxHeads}, {"head_dim", c.HeadDim, maxWidth},
		{"vocab_size", c.VocabSize, maxVocab}, {"max_position_embeddings", c.MaxPositionEmbeddings, maxContext},
	} {
		if f.v > f.max {
			return nil, invalid(path, "", "%s is %d, beyond the largest this tool accepts (%d): a damaged config?", f.name, f.v, f.max)
		}
	}
	if c.NumAttentionHeads*c.HeadDim > maxWidth {
		return nil, invalid(path, "", "num_attention_heads x head_dim is %d, beyond %d", c.NumAttentionHeads*c.HeadDim, maxWidth)
	}
	if n := c.approxParams(); n > maxParams {
		return nil, invalid(path, "", "the dimensions imply %.3g parameters, beyond the %.3g this tool accepts", n, float64(maxParams))
	}
	if c.NumAttentionHeads%c.NumKeyValueHeads != 0 {
		return nil, invalid(path, "", "num_attention_heads %d is not a multiple of num_key_value_heads %d", c.NumAttentionHeads, c.NumKeyValueHeads)
	}
	if c.HeadDim%2 != 0 {
		return nil, invalid(path, "", "head_dim %d is odd; RoPE rotates pairs", c.HeadDim)
	}
	if !(c.RMSNormEps > 0) || !(c.RopeTheta > 0) || math.IsInf(c.RMSNormEps, 0) || math.IsInf(c.RopeTheta, 0) {
		return nil, invalid(path, "", "rms_norm_eps and rope_theta must be positive")
	}
	if r := c.RopeScaling; r != nil {
		switch r.Kind() {
		case "llama3":
			if r.Factor <= 0 || r.LowFreqFactor <= 0 || r.HighFreqFactor <= r.LowFreqFactor || r.OriginalMaxPositionEmbeddings <= 0 {
				return nil, invalid(path, "", "rope_scaling llama3 needs factor > 0, 0 < low_freq_factor < high_freq_factor and original_max_position_embeddings > 0")
			}
		case "linear":
			if r.Factor <= 0 {
				return nil, invalid(path, "", "rope_scaling linear needs factor > 0")
			}
		case "default", "":
			c.RopeScaling = nil
		default:
			return nil, invalid(path, "", "rope_scaling type %q is not supported (supported: llama3, linear)", r.Kind())
		}
	}
	return c, nil
}

// gemmaDefaults applies Gemma2Config's and Gemma3TextConfig's defaults
// (tied embeddings; Gemma-2's soft-caps 50 / 30, Gemma-3 none;
// query_pre_attn_scalar 256; sliding window 4096; Gemma-3's local RoPE base
// 10000 and window pattern 6) and checks the activation and layer types.
func (c *Config) gemmaDefaults(path string, b []byte) error {
	var raw map[string]json.RawMessage
	json.Unmarshal(b, &raw)
	if _, ok := raw["tie_word_embeddings"]; !ok {
		c.TieWordEmbeddings = true
	}
	def := func(p **float64, key string, v float64) {
		if _, ok := raw[key]; !ok && *p == nil {
			*p = &v
		}
	}
	def(&c.QueryPreAttnScalar, "query_pre_attn_scalar", 256)
	if c.IsGemma2() {
		def(&c.AttnLogitSoftcapping, "attn_logit_softcapping", 50)
		def(&c.FinalLogitSoftcapping, "final_logit_softcapping", 30)
	} else {
		def(&c.RopeLocalBaseFreq, "rope_local_base_freq", 10000)
		if _, ok := raw["rope_theta"]; !ok {
			c.RopeTheta = 1000000
		}
		if c.SlidingWindowPattern != nil && *c.SlidingWindowPattern <= 0 {
			return invalid(path, "", "sliding_window_pattern must be positive")
		}
	}
	if _, ok := raw["sliding_window"]; !ok {
		w := 4096
		c.SlidingWindow = &w
	}
	act := c.HiddenActivation
	if act == "" {
		act = c.HiddenAct
	}
	if act != "" && act != "gelu_pytorch_tanh" && act != "gelu_tanh" {
		return invalid(path, "", "hidden_activation %q is not supported for Gemma (want gelu_pytorch_tanh)", act)
	}
	for _, f := range []*float64{c.QueryPreAttnScalar, c.AttnLogitSoftcapping, c.FinalLogitSoftcapping, c.RopeLocalBaseFreq} {
		if f != nil && !(*f >= 0 && !math.IsInf(*f, 0)) {
			return invalid(path, "", "query_pre_attn_scalar and the soft-cappings must be finite and not negative")
		}
	}
	if c.QueryPreAttnScalar != nil && *c.QueryPreAttnScalar == 0 {
		return invalid(path, "", "query_pre_attn_scalar must be positive")
	}
	for i, t := range c.LayerTypes {
		if t != "sliding_attention" && t != "full_attention" {
			return invalid(path, "", "layer_types[%d] is %q (want sliding_attention or full_attention)", i, t)
		}
	}
	if len(c.LayerTypes) > 0 && len(c.LayerTypes) != c.NumHiddenLayers {
		return invalid(path, "", "layer_types has %d entries for %d layers", len(c.LayerTypes), c.NumHiddenLayers)
	}
	return nil
}

// approxParams is the parameter count the dimensions imply, in float64 so
// that hostile values cannot overflow.
func (c *Config) approxParams() float64 {
	h, m, l := float64(c.HiddenSize), float64(c.IntermediateSize), float64(c.NumHiddenLayers)
	q, kv := float64(c.NumAttentionHeads*c.HeadDim), float64(c.NumKeyValueHeads*c.HeadDim)
	return l*(2*h*q+2*h*kv+3*h*m) + 2*float64(c.VocabSize)*h
}

// String is a one-line architecture summary.
func (c *Config) String() string {
	return fmt.Sprintf("%s: %d layers, hidden %d, MLP %d, %d heads (%d kv, head_dim %d), vocab %d, context %d",
		c.Architecture(), c.NumHiddenLayers, c.HiddenSize, c.IntermediateSize, c.NumAttentionHeads,
		c.NumKeyValueHeads, c.HeadDim, c.VocabSize, c.MaxPositionEmbeddings)
}
