#!/usr/bin/python3
"""Independent reference for elsa-stream's Gemma-2 support: a random tiny
Gemma2ForCausalLM checkpoint and its golden logits, loss and gradient norms.

Written from the semantics of transformers' modeling_gemma2.py (not from
the Go code): embeddings times the normalizer sqrt(hidden) as a tensor of
the checkpoint's dtype; Gemma RMSNorm x * rsqrt(mean(x^2) + eps) * (1 + w);
per layer x += post_attention_layernorm(o_proj(attn(input_layernorm(x))))
and x += post_feedforward_layernorm(down(gelu_tanh(gate(h)) * up(h))) with
h = pre_feedforward_layernorm(x); scores scaled by
query_pre_attn_scalar^-0.5, soft-capped tanh(s / cap) * cap before the
mask; sliding-window attention (query i sees keys i - W < j <= i) on the
layers with (i + 1) % 2 != 0, global on the others; final logits
soft-capped; tied embeddings. The shapes exercise head_dim (12) != hidden /
heads (32 / 4), GQA, a window (6) shorter than the sequence (16), and
soft-caps small enough that tanh bends. Autograd in float64.

Writes testdata/golden/gemma2-tiny/{config.json,model.safetensors} (float32)
and testdata/golden/gemma2_tiny.json (the schema of stories260K.json).

Run: /usr/bin/python3 scripts/golden_gemma2.py  (Debian python3-torch, python3-numpy)
"""
import sys
import math
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from golden_common import rotate_half, write_checkpoint, write_golden  # noqa: E402

OUT = ROOT / "testdata/golden/gemma2-tiny"
torch.set_num_threads(1)
rng = np.random.default_rng(11)

cfg = {
    "architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "hidden_size": 32, "intermediate_size": 48,
    "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 12,
    "vocab_size": 80, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 64,
    "query_pre_attn_scalar": 10, "attn_logit_softcapping": 1.5, "final_logit_softcapping": 4.0,
    "sliding_window": 6, "hidden_activation": "gelu_pytorch_tanh", "tie_word_embeddings": True,
    "torch_dtype": "float32", "bos_token_id": 2, "eos_token_id": 1,
}
D, F, L, H, KV, hd, V = (cfg[k] for k in ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                           "num_key_value_heads", "head_dim", "vocab_size"])
eps, W = cfg["rms_norm_eps"], cfg["sliding_window"]
acap, fcap = cfg["attn_logit_softcapping"], cfg["final_logit_softcapping"]
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
inv_freq = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
freqs = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)
emb = torch.cat((freqs, freqs), dim=-1)
cos, sin = emb.cos(), emb.sin()
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
    q = q * cos[:, None, :] + rotate_half(q) * sin[:, None, :]
    k = k * cos[:, None, :] + rotate_half(k) * sin[:, None, :]
    k, v = k.repeat_interleave(H // KV, dim=1), v.repeat_interleave(H // KV, dim=1)
    s = torch.einsum("thd,shd->hts", q, k) * cfg["query_pre_attn_scalar"] ** -0.5
    s = torch.tanh(s / acap) * acap
    s = s + (sliding if (l + 1) % 2 != 0 else causal)
    o = torch.einsum("hts,shd->thd", torch.softmax(s, dim=-1), v).reshape(T, H * hd)
    x = x + rms(o @ Wt[p + "self_attn.o_proj.weight"].T, Wt[p + "post_attention_layernorm.weight"])
    h2 = rms(x, Wt[p + "pre_feedforward_layernorm.weight"])
    m = (gelu_tanh(h2 @ Wt[p + "mlp.gate_proj.weight"].T) * (h2 @ Wt[p + "mlp.up_proj.weight"].T)) @ Wt[p + "mlp.down_proj.weight"].T
    x = x + rms(m, Wt[p + "post_feedforward_layernorm.weight"])
logits = rms(x, Wt["model.norm.weight"]) @ Wt["model.embed_tokens.weight"].T
logits = torch.tanh(logits / fcap) * fcap
loss = torch.nn.functional.cross_entropy(logits, targets)
loss.backward()

write_checkpoint(OUT, cfg, tensors)
write_golden(ROOT / "testdata/golden/gemma2_tiny.json", inputs, targets, loss, logits, Wt)
print(f"loss {loss.item():.6f}, {len(Wt)} tensors")
