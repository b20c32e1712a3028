#!/usr/bin/python3
"""Independent reference for elsa-stream's model: golden fixtures for stories260K.

Reads the llama2.c checkpoint directly (NOT elsa-stream's HF import) and runs
llama2.c's own formulation of the model in PyTorch: interleaved RoPE pairs
(2i, 2i+1) as complex rotations, GQA by repeating kv heads, RMSNorm eps 1e-5,
SwiGLU, tied classifier. Autograd gives the gradients. Agreement with the Go
implementation therefore checks the importer's q/k permutation, the HF
half-split RoPE, and every op's forward and backward.

Writes testdata/golden/stories260K.json: the window, per-position logits of
the first and last rows (full rows), a checksum of all logits, the mean
cross-entropy, and the gradient Frobenius norm of every tensor (HF names).

Run: /usr/bin/python3 scripts/golden_stories260k.py  (Debian python3-torch, python3-numpy)
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
torch.manual_seed(0)
torch.set_num_threads(1)


def load_llama2c(path):
    raw = Path(path).read_bytes()
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq = struct.unpack("<7i", raw[:28])
    shared = vocab > 0
    vocab = abs(vocab)
    f = np.frombuffer(raw[28:], dtype="<f4")
    hd = dim // n_heads
    off = 0

    def take(*shape):
        nonlocal off
        n = int(np.prod(shape))
        a = f[off:off + n].reshape(shape).copy()
        off += n
        return torch.tensor(a, dtype=torch.float64, requires_grad=True)

    w = {"emb": take(vocab, dim), "att_norm": take(n_layers, dim),
         "wq": take(n_layers, dim, dim), "wk": take(n_layers, n_kv * hd, dim),
         "wv": take(n_layers, n_kv * hd, dim), "wo": take(n_layers, dim, dim),
         "ffn_norm": take(n_layers, dim), "w1": take(n_layers, hidden, dim),
         "w2": take(n_layers, dim, hidden), "w3": take(n_layers, hidden, dim),
         "norm": take(dim)}
    assert shared
    p = dict(dim=dim, hidden=hidden, n_layers=n_layers, n_heads=n_heads, n_kv=n_kv, vocab=vocab, hd=hd)
    return p, w


def rmsnorm(x, g, eps=1e-5):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * g


def rope_interleaved(x, T, hd):
    # x: [T, heads, hd]; pairs (2i, 2i+1) rotated by angle t * 10000^(-2i/hd)
    i = torch.arange(0, hd, 2, dtype=torch.float64)
    freq = 1.0 / (10000.0 ** (i / hd))
    ang = torch.outer(torch.arange(T, dtype=torch.float64), freq)  # [T, hd/2]
    cos, sin = torch.cos(ang)[:, None, :], torch.sin(ang)[:, None, :]
    xr, xi = x[..., 0::2], x[..., 1::2]
    out = torch.stack([xr * cos - xi * sin, xr * sin + xi * cos], dim=-1)
    return out.flatten(-2)


def forward(p, w, ids):
    T = len(ids)
    H, KV, hd = p["n_heads"], p["n_kv"], p["hd"]
    x = w["emb"][ids]
    mask = torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)
    for l in range(p["n_layers"]):
        h = rmsnorm(x, w["att_norm"][l])
        q = (h @ w["wq"][l].T).view(T, H, hd)
        k = (h @ w["wk"][l].T).view(T, KV, hd)
        v = (h @ w["wv"][l].T).view(T, KV, hd)
        q, k = rope_interleaved(q, T, hd), rope_interleaved(k, T, hd)
        rep = H // KV
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        s = torch.einsum("thd,shd->hts", q, k) / hd ** 0.5 + mask
        a = torch.einsum("hts,shd->thd", torch.softmax(s, -1), v).reshape(T, H * hd)
        x = x + a @ w["wo"][l].T
        h = rmsnorm(x, w["ffn_norm"][l])
        x = x + (torch.nn.functional.silu(h @ w["w1"][l].T) * (h @ w["w3"][l].T)) @ w["w2"][l].T
    return rmsnorm(x, w["norm"]) @ w["emb"].T


def main():
    p, w = load_llama2c(ROOT / "testdata/stories260K/stories260K.bin")
    toks = np.fromfile(ROOT / "testdata/tinystories-valid-1000/stories260K_tok512.u16.bin", dtype="<u2")
    T = 128
    ids = torch.tensor(toks[:T].astype(np.int64))
    tgt = torch.tensor(toks[1:T + 1].astype(np.int64))
    logits = forward(p, w, ids)
    loss = torch.nn.functional.cross_entropy(logits, tgt)
    loss.backward()
    hf = {"emb": "model.embed_tokens.weight", "norm": "model.norm.weight"}
    per_layer = {"att_norm": "input_layernorm", "wq": "self_attn.q_proj", "wk": "self_attn.k_proj",
                 "wv": "self_attn.v_proj", "wo": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
                 "w1": "mlp.gate_proj", "w2": "mlp.down_proj", "w3": "mlp.up_proj"}
    norms = {}
    for k, t in w.items():
        if k in hf:
            norms[hf[k]] = float(t.grad.norm())
        else:
            for l in range(p["n_layers"]):
                norms[f"model.layers.{l}.{per_layer[k]}.weight"] = float(t.grad[l].norm())
    lg = logits.detach()
    out = {
        "source": "scripts/golden_stories260k.py (PyTorch %s, float64, llama2.c formulation)" % torch.__version__,
        "input_ids": ids.tolist(), "targets": tgt.tolist(),
        "loss": float(loss),
        "logits_row0": lg[0].tolist(), "logits_last": lg[-1].tolist(),
        "logits_sum": float(lg.sum()), "logits_abs_sum": float(lg.abs().sum()),
        "grad_norms": norms,
    }
    dst = ROOT / "testdata/golden/stories260K.json"
    dst.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {dst}: loss {float(loss):.6f}", file=sys.stderr)


if __name__ == "__main__":
    main()
