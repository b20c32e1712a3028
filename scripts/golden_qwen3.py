#!/usr/bin/python3
"""Independent reference for elsa-stream's Qwen3 support: a random tiny
Qwen3ForCausalLM checkpoint and its golden logits, loss and gradient norms.

Written from the semantics of transformers' modeling_qwen3.py (not from the
Go code): RMSNorm x * rsqrt(mean(x^2) + eps) * w; per layer
h = x + o_proj(attn(q, k, v)) with q = q_norm(q_proj(input_layernorm(x))
viewed per head), k = k_norm(k_proj(...)), both normalized over head_dim
*before* rotary embeddings (rotate_half convention, inv_freq =
theta^(-2i/head_dim)), GQA by repeating kv heads, causal softmax scaled by
head_dim^-0.5; y = h + down(silu(gate(post_attention_layernorm(h))) *
up(...)); final norm, untied lm_head. head_dim (16) differs from
hidden / heads (48 / 4 = 12), so o_proj maps 64 -> 48. Autograd in float64
gives the gradients.

Writes testdata/golden/qwen3-tiny/{config.json,model.safetensors} (float32)
and testdata/golden/qwen3_tiny.json (the schema of stories260K.json).

Run: /usr/bin/python3 scripts/golden_qwen3.py  (Debian python3-torch, python3-numpy)
"""
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from golden_common import rotate_half, write_checkpoint, write_golden  # noqa: E402

OUT = ROOT / "testdata/golden/qwen3-tiny"
torch.set_num_threads(1)
rng = np.random.default_rng(7)

cfg = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 48, "intermediate_size": 80,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "vocab_size": 96, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 64,
    "tie_word_embeddings": False, "attention_bias": False, "use_sliding_window": False, "sliding_window": None,
    "torch_dtype": "float32", "bos_token_id": None, "eos_token_id": 1,
}
D, F, L, H, KV, hd, V = (cfg[k] for k in ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                           "num_key_value_heads", "head_dim", "vocab_size"])
eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]

tensors = {}


def param(name, shape, kind):
    if kind == "norm":
        a = 1 + 0.1 * rng.standard_normal(shape)
    elif kind == "embed":
        a = rng.standard_normal(shape)
    else:
        a = rng.standard_normal(shape) * (0.6 / np.sqrt(shape[1]))
    a = a.astype(np.float32)
    tensors[name] = a
    return torch.tensor(a.astype(np.float64), requires_grad=True)


W = {"model.embed_tokens.weight": param("model.embed_tokens.weight", (V, D), "embed")}
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
        ("mlp.gate_proj.weight", (F, D), "linear"),
        ("mlp.up_proj.weight", (F, D), "linear"),
        ("mlp.down_proj.weight", (D, F), "linear"),
    ]:
        W[p + name] = param(p + name, shape, kind)
W["model.norm.weight"] = param("model.norm.weight", (D,), "norm")
W["lm_head.weight"] = param("lm_head.weight", (V, D), "linear")


def rms(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w




T = 24
ids = torch.tensor(rng.integers(0, V, T + 1))
inputs, targets = ids[:-1], ids[1:]
inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
freqs = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)
emb = torch.cat((freqs, freqs), dim=-1)
cos, sin = emb.cos(), emb.sin()
mask = torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)

x = W["model.embed_tokens.weight"][inputs]
for l in range(L):
    p = f"model.layers.{l}."
    h = rms(x, W[p + "input_layernorm.weight"])
    q = (h @ W[p + "self_attn.q_proj.weight"].T).view(T, H, hd)
    k = (h @ W[p + "self_attn.k_proj.weight"].T).view(T, KV, hd)
    v = (h @ W[p + "self_attn.v_proj.weight"].T).view(T, KV, hd)
    q, k = rms(q, W[p + "self_attn.q_norm.weight"]), rms(k, W[p + "self_attn.k_norm.weight"])
    q = q * cos[:, None, :] + rotate_half(q) * sin[:, None, :]
    k = k * cos[:, None, :] + rotate_half(k) * sin[:, None, :]
    k, v = k.repeat_interleave(H // KV, dim=1), v.repeat_interleave(H // KV, dim=1)
    s = torch.einsum("thd,shd->hts", q, k) * hd ** -0.5 + mask
    o = torch.einsum("hts,shd->thd", torch.softmax(s, dim=-1), v).reshape(T, H * hd)
    x = x + o @ W[p + "self_attn.o_proj.weight"].T
    h2 = rms(x, W[p + "post_attention_layernorm.weight"])
    g = torch.nn.functional.silu(h2 @ W[p + "mlp.gate_proj.weight"].T) * (h2 @ W[p + "mlp.up_proj.weight"].T)
    x = x + g @ W[p + "mlp.down_proj.weight"].T
logits = rms(x, W["model.norm.weight"]) @ W["lm_head.weight"].T
loss = torch.nn.functional.cross_entropy(logits, targets)
loss.backward()

write_checkpoint(OUT, cfg, tensors)
write_golden(ROOT / "testdata/golden/qwen3_tiny.json", inputs, targets, loss, logits, W)
print(f"loss {loss.item():.6f}, {len(W)} tensors")
