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
    """Reads a legacy (v0) or version-1 ("ak42") llama2.c checkpoint."""
    raw = Path(path).read_bytes()
    v1 = struct.unpack("<I", raw[:4])[0] == 0x616B3432
    if v1:
        dim, hidden, n_layers, n_heads, n_kv, vocab, seq = struct.unpack("<7i", raw[8:36])
        shared = raw[36] != 0
        f = np.frombuffer(raw[256:], dtype="<f4")
    else:
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

    w = {}
    if v1:
        w["att_norm"], w["ffn_norm"], w["norm"] = take(n_layers, dim), take(n_layers, dim), take(dim)
        w["emb"] = take(vocab, dim)
        w["wq"], w["wk"] = take(n_layers, dim, dim), take(n_layers, n_kv * hd, dim)
        w["wv"], w["wo"] = take(n_layers, n_kv * hd, dim), take(n_layers, dim, dim)
        w["w1"], w["w2"], w["w3"] = take(n_layers, hidden, dim), take(n_layers, dim, hidden), take(n_layers, hidden, dim)
    else:
        w["emb"], w["att_norm"] = take(vocab, dim), take(n_layers, dim)
        w["wq"], w["wk"] = take(n_layers, dim, dim), take(n_layers, n_kv * hd, dim)
        w["wv"], w["wo"] = take(n_layers, n_kv * hd, dim), take(n_layers, dim, dim)
        w["ffn_norm"], w["w1"] = take(n_layers, dim), take(n_layers, hidden, dim)
        w["w2"], w["w3"] = take(n_layers, dim, hidden), take(n_layers, hidden, dim)
        w["norm"] = take(dim)
        off += 2 * seq * hd // 2  # legacy RoPE tables
    if not shared:
        w["out"] = take(vocab, dim)
    assert off == len(f), (off, len(f))
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
    return rmsnorm(x, w["norm"]) @ w.get("out", w["emb"]).T


def write_random_v1(path, tok_path, dim=48, hidden=100, n_layers=3, n_heads=6, n_kv=2, vocab=300, seq=64):
    """A random version-1 checkpoint with other shapes, an unshared classifier
    and a matching llama2.c tokenizer (control pieces, 256 byte pieces, then
    two-letter merges), to show nothing is special-cased for stories260K."""
    rng = np.random.default_rng(1)
    hd = dim // n_heads
    out = bytearray(struct.pack("<Ii7iB", 0x616B3432, 1, dim, hidden, n_layers, n_heads, n_kv, vocab, seq, 0))
    out += b"\0" * (256 - len(out))
    shapes = [(n_layers, dim), (n_layers, dim), (dim,), (vocab, dim), (n_layers, dim, dim),
              (n_layers, n_kv * hd, dim), (n_layers, n_kv * hd, dim), (n_layers, dim, dim),
              (n_layers, hidden, dim), (n_layers, dim, hidden), (n_layers, hidden, dim), (vocab, dim)]
    for i, sh in enumerate(shapes):
        a = (1 + 0.1 * rng.standard_normal(sh)) if i < 3 else rng.standard_normal(sh) / np.sqrt(sh[-1])
        out += a.astype("<f4").tobytes()
    Path(path).write_bytes(bytes(out))
    pieces = ["<unk>", "\n<s>\n", "\n</s>\n"] + ["<0x%02X>" % b for b in range(256)]
    letters = "etaoinshrdlu "
    extra = [a + b for a in letters for b in letters][: vocab - len(pieces)]
    pieces += extra
    tb = bytearray(struct.pack("<i", max(len(pc.encode()) for pc in pieces)))
    for i, pc in enumerate(pieces):
        b = pc.encode()
        tb += struct.pack("<fi", -float(i), len(b)) + b
    Path(tok_path).write_bytes(bytes(tb))


def reference(p, w, ids, tgt):
    logits = forward(p, w, ids)
    loss = torch.nn.functional.cross_entropy(logits, tgt)
    loss.backward()
    hf = {"emb": "model.embed_tokens.weight", "norm": "model.norm.weight", "out": "lm_head.weight"}
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
    return {
        "source": "scripts/golden_stories260k.py (PyTorch %s, float64, llama2.c formulation)" % torch.__version__,
        "input_ids": ids.tolist(), "targets": tgt.tolist(),
        "loss": float(loss),
        "logits_row0": lg[0].tolist(), "logits_last": lg[-1].tolist(),
        "logits_sum": float(lg.sum()), "logits_abs_sum": float(lg.abs().sum()),
        "grad_norms": norms,
    }


def main():
    gold = ROOT / "testdata/golden"
    p, w = load_llama2c(ROOT / "testdata/stories260K/stories260K.bin")
    toks = np.fromfile(ROOT / "testdata/tinystories-valid-1000/stories260K_tok512.u16.bin", dtype="<u2")
    T = 128
    ids = torch.tensor(toks[:T].astype(np.int64))
    tgt = torch.tensor(toks[1:T + 1].astype(np.int64))
    out = reference(p, w, ids, tgt)
    (gold / "stories260K.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"stories260K: loss {out['loss']:.6f}", file=sys.stderr)

    write_random_v1(gold / "random_v1.bin", gold / "random_v1_tok.bin")
    p, w = load_llama2c(gold / "random_v1.bin")
    rng = np.random.default_rng(2)
    seq = rng.integers(0, p["vocab"], size=49)
    out = reference(p, w, torch.tensor(seq[:-1]), torch.tensor(seq[1:]))
    (gold / "random_v1.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"random_v1: loss {out['loss']:.6f}", file=sys.stderr)

    # Llama-3 rope_scaling, written from transformers' _compute_llama3_parameters.
    base, dim, factor, low, high, orig = 500000.0, 128, 8.0, 1.0, 4.0, 8192
    inv = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    low_wl, high_wl = orig / low, orig / high
    wl = 2 * np.pi / inv
    scaled = np.where(wl > low_wl, inv / factor, inv)
    smooth = (orig / wl - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wl < high_wl) & ~(wl > low_wl)
    scaled = np.where(medium, smoothed, scaled)
    (gold / "rope_llama3.json").write_text(json.dumps({
        "rope_theta": base, "head_dim": dim, "factor": factor, "low_freq_factor": low,
        "high_freq_factor": high, "original_max_position_embeddings": orig,
        "inv_freq": scaled.tolist()}, indent=1) + "\n")


if __name__ == "__main__":
    main()
