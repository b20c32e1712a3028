#!/usr/bin/python3
"""Independent reference for elsa-stream's Gemma-3 support: a random tiny
Gemma3ForCausalLM (text) checkpoint and its golden logits, loss and
gradient norms.

Written from the semantics of transformers' modeling_gemma3.py (not from
the Go code): as Gemma-2 (scaled embeddings, (1 + w) sandwich norms, GeGLU,
query_pre_attn_scalar, tied embeddings) but without soft-capping, with
q_norm / k_norm (Gemma RMSNorm over head_dim) before rotary embeddings, and
local / global layers: layer i slides (window 6 < 16 tokens) when
(i + 1) % sliding_window_pattern != 0 and rotates with
rope_local_base_freq (10000, unscaled), the global layers with rope_theta
(1e6) and linear rope scaling (factor 8). Autograd in float64.

Writes testdata/golden/gemma3-tiny/{config.json,model.safetensors} (float32)
and testdata/golden/gemma3_tiny.json (the schema of stories260K.json).

Run: /usr/bin/python3 scripts/golden_gemma3.py  (Debian python3-torch, python3-numpy)
"""
import sys
import math
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from golden_common import rotate_half, write_checkpoint, write_golden  # noqa: E402

OUT = ROOT / "testdata/golden/gemma3-tiny"
torch.set_num_threads(1)
rng = np.random.default_rng(13)

cfg = {
    "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "hidden_size": 32, "intermediate_size": 48,
    "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 12,
    "vocab_size": 80, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
    "rope_scaling": {"rope_type": "linear", "factor": 8.0}, "max_position_embeddings": 64,
    "query_pre_attn_scalar": 10, "attn_logit_softcapping": None, "final_logit_softcapping": None,
    "sliding_window": 6, "sliding_window_pattern": 2, "hidden_activation": "gelu_pytorch_tanh", "tie_word_embeddings": True,
    "torch_dtype": "float32", "bos_token_id": 2, "eos_token_id": 1,
}
D, F, L, H, KV, hd, V = (cfg[k] for k in ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                           "num_key_value_heads", "head_dim", "vocab_size"])
eps, W = cfg["rms_norm_eps"], cfg["sliding_window"]
pattern = cfg["sliding_window_pattern"]
tensors = {}


def param(name, shape, kind):
    if kind == "norm":  # Gemma norms are stored around 0: the scale is 1 + w
        a = 0.2 * rng.standard_normal(shape)
    elif kind == "embed":
        a = 0.5 * rng.standard_normal(shape)
    else:
        a = rng.standard_normal(shape) * (0.8 / np.sqrt(shape[1]))
    a = a.astype(np.float32)
    tensors[name] = a
    return torch.tensor(a.astype(np.float64), requires_grad=True)


Wt = {"model.embed_tokens.weight": param("model.embed_tokens.weight", (V, D), "embed")}
for l in range(L):
    p = f"model.layers.{l}."
    for name, shape, kind in [
        ("input_layernorm.weight", (D,), "norm"),
        ("self_attn.q_proj.weight", (H * hd, D), "linear"),
        ("self_attn.k_proj.weight", (KV * hd, D), "linear"),
        ("self_attn.v_proj.weight", (KV * hd, D), "linear"),
        ("self_attn.o_proj.weight", (D, H * hd), "linear"),
        ("self_attn.q_norm.weight", (hd,), "norm"),
        ("self_attn.k_norm.weight", (hd,), "norm"),
        ("post_attention_layernorm.weight", (D,), "norm"),
        ("pre_feedforward_layernorm.weight", (D,), "norm"),
        ("mlp.gate_proj.weight", (F, D), "linear"),
        ("mlp.up_proj.weight", (F, D), "linear"),
        ("mlp.down_proj.weight", (D, F), "linear"),
        ("post_feedforward_layernorm.weight", (D,), "norm"),
    ]:
        Wt[p + name] = param(p + name, shape, kind)
Wt["model.norm.weight"] = param("model.norm.weight", (D,), "norm")


def rms(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (1.0 + w)




def gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


T = 16
ids = torch.tensor(rng.integers(0, V, T + 1))
inputs, targets = ids[:-1], ids[1:]


def rope_tables(theta, factor):
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)) / factor
    freqs = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


local_rope = rope_tables(cfg["rope_local_base_freq"], 1.0)
global_rope = rope_tables(cfg["rope_theta"], cfg["rope_scaling"]["factor"])
i_, j_ = torch.arange(T)[:, None], torch.arange(T)[None, :]
causal = torch.where(j_ <= i_, 0.0, float("-inf")).double()
sliding = torch.where((j_ <= i_) & (j_ > i_ - W), 0.0, float("-inf")).double()

normalizer = float(np.float32(math.sqrt(D)))  # a tensor of the checkpoint's dtype
x = Wt["model.embed_tokens.weight"][inputs] * normalizer
for l in range(L):
    p = f"model.layers.{l}."
    h = rms(x, Wt[p + "input_layernorm.weight"])
    q = (h @ Wt[p + "self_attn.q_proj.weight"].T).view(T, H, hd)
    k = (h @ Wt[p + "self_attn.k_proj.weight"].T).view(T, KV, hd)
    v = (h @ Wt[p + "self_attn.v_proj.weight"].T).view(T, KV, hd)
    q, k = rms(q, Wt[p + "self_attn.q_norm.weight"]), rms(k, Wt[p + "self_attn.k_norm.weight"])
    is_sliding = (l + 1) % pattern != 0
    cos, sin = local_rope if is_sliding else global_rope
    q = q * cos[:, None, :] + rotate_half(q) * sin[:, None, :]
    k = k * cos[:, None, :] + rotate_half(k) * sin[:, None, :]
    k, v = k.repeat_interleave(H // KV, dim=1), v.repeat_interleave(H // KV, dim=1)
    s = torch.einsum("thd,shd->hts", q, k) * cfg["query_pre_attn_scalar"] ** -0.5
    s = s + (sliding if is_sliding else causal)
    o = torch.einsum("hts,shd->thd", torch.softmax(s, dim=-1), v).reshape(T, H * hd)
    x = x + rms(o @ Wt[p + "self_attn.o_proj.weight"].T, Wt[p + "post_attention_layernorm.weight"])
    h2 = rms(x, Wt[p + "pre_feedforward_layernorm.weight"])
    m = (gelu_tanh(h2 @ Wt[p + "mlp.gate_proj.weight"].T) * (h2 @ Wt[p + "mlp.up_proj.weight"].T)) @ Wt[p + "mlp.down_proj.weight"].T
    x = x + rms(m, Wt[p + "post_feedforward_layernorm.weight"])
logits = rms(x, Wt["model.norm.weight"]) @ Wt["model.embed_tokens.weight"].T
loss = torch.nn.functional.cross_entropy(logits, targets)
loss.backward()

write_checkpoint(OUT, cfg, tensors)
write_golden(ROOT / "testdata/golden/gemma3_tiny.json", inputs, targets, loss, logits, Wt)
print(f"loss {loss.item():.6f}, {len(Wt)} tensors")
