#!/usr/bin/python3
"""Independent references for elsa-stream's Gemma-2 and Gemma-3 support:
random tiny Gemma2ForCausalLM and Gemma3ForCausalLM (text) checkpoints and
their golden logits, loss and gradient norms.

Written from the semantics of transformers' modeling_gemma2.py and
modeling_gemma3.py (not from the Go code):
- embeddings times the normalizer sqrt(hidden) as a tensor of the
  checkpoint's dtype; Gemma RMSNorm x * rsqrt(mean(x^2) + eps) * (1 + w);
- per layer x += post_attention_layernorm(o_proj(attn(input_layernorm(x))))
  and x += post_feedforward_layernorm(down(gelu_tanh(gate(h)) * up(h))) with
  h = pre_feedforward_layernorm(x);
- scores scaled by query_pre_attn_scalar^-0.5; sliding-window attention
  (query i sees keys i - W < j <= i) on the sliding layers, global on the
  others; tied embeddings;
- Gemma-2: scores soft-capped tanh(s / cap) * cap before the mask and the
  final logits soft-capped; layers slide when (i + 1) % 2 != 0;
- Gemma-3: q_norm / k_norm (Gemma RMSNorm over head_dim) before rotary
  embeddings, no soft-capping, layers slide when (i + 1) %
  sliding_window_pattern != 0 and rotate with rope_local_base_freq
  (unscaled), the global ones with rope_theta and linear rope scaling.
The shapes exercise head_dim (12) != hidden / heads (32 / 4), GQA, a window
(6) shorter than the sequence (16), and soft-caps small enough that tanh
bends. Autograd in float64.

Writes testdata/golden/gemma{2,3}-tiny/{config.json,model.safetensors}
(float32) and testdata/golden/gemma{2,3}_tiny.json (the schema of
stories260K.json).

Run: /usr/bin/python3 scripts/golden_gemma.py  (Debian python3-torch, python3-numpy)
"""
import math
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from golden_common import rotate_half, write_checkpoint, write_golden  # noqa: E402

torch.set_num_threads(1)

BASE = {
    "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 3, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 12, "vocab_size": 80, "rms_norm_eps": 1e-6, "max_position_embeddings": 64,
    "query_pre_attn_scalar": 10, "sliding_window": 6, "hidden_activation": "gelu_pytorch_tanh",
    "tie_word_embeddings": True, "torch_dtype": "float32", "bos_token_id": 2, "eos_token_id": 1,
}
VARIANTS = {
    "gemma2": (11, dict(BASE, architectures=["Gemma2ForCausalLM"], model_type="gemma2", rope_theta=10000.0,
                        attn_logit_softcapping=1.5, final_logit_softcapping=4.0)),
    "gemma3": (13, dict(BASE, architectures=["Gemma3ForCausalLM"], model_type="gemma3_text", rope_theta=1000000.0,
                        rope_local_base_freq=10000.0, rope_scaling={"rope_type": "linear", "factor": 8.0},
                        attn_logit_softcapping=None, final_logit_softcapping=None, sliding_window_pattern=2)),
}


def gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def build(name, seed, cfg):
    gemma3 = cfg["model_type"] == "gemma3_text"
    rng = np.random.default_rng(seed)
    D, F, L, H, KV, hd, V = (cfg[k] for k in ["hidden_size", "intermediate_size", "num_hidden_layers",
                                               "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size"])
    eps, W = cfg["rms_norm_eps"], cfg["sliding_window"]
    pattern = cfg.get("sliding_window_pattern", 2)
    tensors = {}

    def param(tname, shape, kind):
        if kind == "norm":  # Gemma norms are stored around 0: the scale is 1 + w
            a = 0.2 * rng.standard_normal(shape)
        elif kind == "embed":
            a = 0.5 * rng.standard_normal(shape)
        else:
            a = rng.standard_normal(shape) * (0.8 / np.sqrt(shape[1]))
        a = a.astype(np.float32)
        tensors[tname] = a
        return torch.tensor(a.astype(np.float64), requires_grad=True)

    Wt = {"model.embed_tokens.weight": param("model.embed_tokens.weight", (V, D), "embed")}
    for l in range(L):
        p = f"model.layers.{l}."
        layer = [
            ("input_layernorm.weight", (D,), "norm"),
            ("self_attn.q_proj.weight", (H * hd, D), "linear"),
            ("self_attn.k_proj.weight", (KV * hd, D), "linear"),
            ("self_attn.v_proj.weight", (KV * hd, D), "linear"),
            ("self_attn.o_proj.weight", (D, H * hd), "linear"),
        ]
        if gemma3:
            layer += [("self_attn.q_norm.weight", (hd,), "norm"), ("self_attn.k_norm.weight", (hd,), "norm")]
        layer += [
            ("post_attention_layernorm.weight", (D,), "norm"),
            ("pre_feedforward_layernorm.weight", (D,), "norm"),
            ("mlp.gate_proj.weight", (F, D), "linear"),
            ("mlp.up_proj.weight", (F, D), "linear"),
            ("mlp.down_proj.weight", (D, F), "linear"),
            ("post_feedforward_layernorm.weight", (D,), "norm"),
        ]
        for tname, shape, kind in layer:
            Wt[p + tname] = param(p + tname, shape, kind)
    Wt["model.norm.weight"] = param("model.norm.weight", (D,), "norm")

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (1.0 + w)

    T = 16
    ids = torch.tensor(rng.integers(0, V, T + 1))
    inputs, targets = ids[:-1], ids[1:]

    def rope_tables(theta, factor):
        inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)) / factor
        freqs = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()

    if gemma3:
        local_rope = rope_tables(cfg["rope_local_base_freq"], 1.0)
        global_rope = rope_tables(cfg["rope_theta"], cfg["rope_scaling"]["factor"])
    else:
        local_rope = global_rope = rope_tables(cfg["rope_theta"], 1.0)
    i_, j_ = torch.arange(T)[:, None], torch.arange(T)[None, :]
    causal = torch.where(j_ <= i_, 0.0, float("-inf")).double()
    sliding = torch.where((j_ <= i_) & (j_ > i_ - W), 0.0, float("-inf")).double()
    acap, fcap = cfg["attn_logit_softcapping"], cfg["final_logit_softcapping"]

    normalizer = float(np.float32(math.sqrt(D)))  # a tensor of the checkpoint's dtype
    x = Wt["model.embed_tokens.weight"][inputs] * normalizer
    for l in range(L):
        p = f"model.layers.{l}."
        is_sliding = (l + 1) % pattern != 0
        h = rms(x, Wt[p + "input_layernorm.weight"])
        q = (h @ Wt[p + "self_attn.q_proj.weight"].T).view(T, H, hd)
        k = (h @ Wt[p + "self_attn.k_proj.weight"].T).view(T, KV, hd)
        v = (h @ Wt[p + "self_attn.v_proj.weight"].T).view(T, KV, hd)
        if gemma3:
            q, k = rms(q, Wt[p + "self_attn.q_norm.weight"]), rms(k, Wt[p + "self_attn.k_norm.weight"])
        cos, sin = local_rope if is_sliding else global_rope
        q = q * cos[:, None, :] + rotate_half(q) * sin[:, None, :]
        k = k * cos[:, None, :] + rotate_half(k) * sin[:, None, :]
        k, v = k.repeat_interleave(H // KV, dim=1), v.repeat_interleave(H // KV, dim=1)
        s = torch.einsum("thd,shd->hts", q, k) * cfg["query_pre_attn_scalar"] ** -0.5
        if acap:
            s = torch.tanh(s / acap) * acap
        s = s + (sliding if is_sliding else causal)
        o = torch.einsum("hts,shd->thd", torch.softmax(s, dim=-1), v).reshape(T, H * hd)
        x = x + rms(o @ Wt[p + "self_attn.o_proj.weight"].T, Wt[p + "post_attention_layernorm.weight"])
        h2 = rms(x, Wt[p + "pre_feedforward_layernorm.weight"])
        m = (gelu_tanh(h2 @ Wt[p + "mlp.gate_proj.weight"].T) * (h2 @ Wt[p + "mlp.up_proj.weight"].T)) @ Wt[p + "mlp.down_proj.weight"].T
        x = x + rms(m, Wt[p + "post_feedforward_layernorm.weight"])
    logits = rms(x, Wt["model.norm.weight"]) @ Wt["model.embed_tokens.weight"].T
    if fcap:
        logits = torch.tanh(logits / fcap) * fcap
    loss = torch.nn.functional.cross_entropy(logits, targets)
    loss.backward()
    write_checkpoint(ROOT / f"testdata/golden/{name}-tiny", cfg, tensors)
    write_golden(ROOT / f"testdata/golden/{name}_tiny.json", inputs, targets, loss, logits, Wt)
    print(f"{name}: loss {loss.item():.6f}, {len(Wt)} tensors")


for name, (seed, cfg) in VARIANTS.items():
    build(name, seed, cfg)
