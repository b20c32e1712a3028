#!/usr/bin/python3
"""Independent reference for elsa-stream's Elsa: the method of
../shared/DESIGN.md §3 (docs/design.md, "Elsa") written from its
semantics in PyTorch float32, never from the Go code. Never on the
product's path.

The model is a LLaMA-architecture decoder read from a Hugging Face folder
(config.json + model.safetensors, float32) and run as transformers'
modeling_llama does: RMSNorm, HF RoPE (rotate_half), GQA, SwiGLU, tied or
untied lm_head; autograd gives the gradients. Elsa then runs exactly:

  init: z = Proj(W0; |W0|), u = 0 for every linear weight of the blocks
  every step s = 0..S-1, on the windows given for that step:
    mean token cross-entropy of the full model, backward
    clip the global gradient norm over every trainable tensor to `clip`
    then g_W += lam * (W - z + u) for the pruned tensors (never clipped)
    torch.optim.Adam (betas 0.9/0.95, eps 1e-8, no weight decay),
      lr * (1 - s/S) (linear decay to 0, no warm-up)
    if s % interval == 0: v = W + u; z = Proj(v; score); u = v - z
      score = |v| (magnitude) or exp_avg_sq * v^2 (objective; Adam's raw
      second moment, no bias correction, after this step's update)
  Proj keeps the top entries by score per tensor: the round(n * sparsity)
  lowest are zeroed, ties broken by position.

Input (--job JSON): model folder, "dtype" (float32, or float64 to measure
how far float32 rounding alone moves the trajectory), the calibration ids (a little-endian u16
or u32 file), the hyper-parameters and, for every step, the start of each
window (the Go trainer's draws). Output (--out DIR): for every trained
tensor <name>.{w,m,v}.f32 and for pruned ones <name>.{z,u}.f32 after the
last step (before the final projection), raw little-endian float32, and
losses.json (the loss of every step). With --save DIR it also writes the
pruned model (W = Proj(W; score) for the pruned tensors, the final
projection) as a Hugging Face folder, to be evaluated like any other.

Run: /usr/bin/python3 scripts/elsa_reference.py --job job.json --out DIR
(Debian python3-torch and python3-numpy).
"""
import argparse
import json
import struct
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)


def read_safetensors(path):
    raw = Path(path).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", (name, t["dtype"])
        a, b = t["data_offsets"]
        out[name] = torch.tensor(np.frombuffer(raw[8 + n + a:8 + n + b], dtype="<f4").reshape(t["shape"]).copy())
    return out


def rmsnorm(x, g, eps):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * g


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def forward(cfg, w, ids):
    """Logits [B, T, V] for ids [B, T] (modeling_llama's math)."""
    B, T = ids.shape
    D, H, KV = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or D // H
    eps = cfg["rms_norm_eps"]
    dt = w["model.embed_tokens.weight"].dtype
    inv = 1.0 / (cfg.get("rope_theta", 10000.0) ** (torch.arange(0, hd, 2, dtype=dt) / hd))
    ang = torch.outer(torch.arange(T, dtype=dt), inv)
    ang = torch.cat((ang, ang), dim=-1)
    cos, sin = ang.cos()[None, :, None, :], ang.sin()[None, :, None, :]
    mask = torch.full((T, T), float("-inf"), dtype=dt).triu(1)
    x = w["model.embed_tokens.weight"][ids]
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = rmsnorm(x, w[p + "input_layernorm.weight"], eps)
        q = (h @ w[p + "self_attn.q_proj.weight"].T).view(B, T, H, hd)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).view(B, T, KV, hd)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).view(B, T, KV, hd)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = k.repeat_interleave(H // KV, dim=2), v.repeat_interleave(H // KV, dim=2)
        s = torch.einsum("bthd,bshd->bhts", q, k) / hd ** 0.5 + mask
        a = torch.einsum("bhts,bshd->bthd", torch.softmax(s, -1), v).reshape(B, T, H * hd)
        x = x + a @ w[p + "self_attn.o_proj.weight"].T
        h = rmsnorm(x, w[p + "post_attention_layernorm.weight"], eps)
        g = torch.nn.functional.silu(h @ w[p + "mlp.gate_proj.weight"].T) * (h @ w[p + "mlp.up_proj.weight"].T)
        x = x + g @ w[p + "mlp.down_proj.weight"].T
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return rmsnorm(x, w["model.norm.weight"], eps) @ head.T


def project(x, score, sparsity, nm=None):
    """x with the round(n * sparsity) lowest-scoring entries zeroed (ties by position), or, for
    nm = (N, M), with the M - N lowest-scoring of every M consecutive input columns of each row
    zeroed (x is [out, in], groups run along a row)."""
    if nm:
        n, m = nm
        rows, cols = x.shape
        g = score.reshape(rows, cols // m, m)
        drop = torch.argsort(g, dim=-1, stable=True)[..., : m - n]
        keep = torch.ones_like(g, dtype=torch.bool).scatter_(-1, drop, False)
        return x * keep.reshape(rows, cols)
    n = x.numel()
    c = max(0, min(n, int(n * sparsity + 0.5)))
    out = x.clone().flatten()
    out[torch.argsort(score.flatten(), stable=True)[:c]] = 0
    return out.view_as(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--job", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--save", help="write the pruned model here (HF folder)")
    args = ap.parse_args()
    job = json.loads(Path(args.job).read_text())
    model = Path(job["model"])
    cfg = json.loads((model / "config.json").read_text())
    dtype = {"float32": torch.float32, "float64": torch.float64}[job.get("dtype", "float32")]
    w = {n: t.to(dtype) for n, t in read_safetensors(model / "model.safetensors").items()}
    if cfg.get("tie_word_embeddings"):
        w.pop("lm_head.weight", None)
    ids = torch.tensor(np.fromfile(job["calib"], dtype="<u%d" % job["token_bytes"]).astype(np.int64))
    pruned = [n for n in w if n.startswith("model.layers.") and n.endswith("_proj.weight")]
    trained = list(w) if job["train_dense"] else pruned
    for n in trained:
        w[n].requires_grad_(True)
    opt = torch.optim.Adam([w[n] for n in trained], lr=job["lr"], betas=(0.9, 0.95), eps=1e-8, weight_decay=0)
    sp, lam, S, T = job["sparsity"], job["lambda"], job["steps"], job["seqlen"]
    nm = job.get("nm")  # [N, M] for N:M, absent or null for unstructured
    with torch.no_grad():
        z = {n: project(w[n], w[n].abs(), sp, nm) for n in pruned}
        u = {n: torch.zeros_like(w[n]) for n in pruned}
    losses = []
    for s in range(S):
        starts = job["starts"][s]
        batch = torch.stack([ids[a:a + T + 1] for a in starts])
        logits = forward(cfg, w, batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        losses.append(loss.item())
        torch.nn.utils.clip_grad_norm_([w[n] for n in trained], job["clip"])
        with torch.no_grad():
            for n in pruned:
                w[n].grad += lam * (w[n] - z[n] + u[n])
        for g in opt.param_groups:
            g["lr"] = job["lr"] * (1 - s / S)
        opt.step()
        if s % job["interval"] == 0:
            with torch.no_grad():
                for n in pruned:
                    v = w[n] + u[n]
                    score = opt.state[w[n]]["exp_avg_sq"] * v * v if job["projection"] == "objective" else v.abs()
                    z[n] = project(v, score, sp, nm)
                    u[n] = v - z[n]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for n in trained:
        st = opt.state[w[n]]
        fields = {"w": w[n], "m": st["exp_avg"], "v": st["exp_avg_sq"]}
        if n in pruned:
            fields.update(z=z[n], u=u[n])
        for f, t in fields.items():
            t.detach().numpy().astype("<f4").tofile(out / f"{n}.{f}.f32")  # float64 runs rounded once here
    (out / "losses.json").write_text(json.dumps(losses) + "\n")
    if args.save:
        import sys
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from golden_common import write_checkpoint
        with torch.no_grad():
            final = {}
            for n, t in w.items():
                if n in pruned:
                    score = opt.state[t]["exp_avg_sq"] * t * t if job["projection"] == "objective" else t.abs()
                    t = project(t, score, sp, nm)
                final[n] = t.detach().numpy().astype("<f4")
        write_checkpoint(Path(args.save), cfg, final)


if __name__ == "__main__":
    main()
