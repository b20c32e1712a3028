#!/usr/bin/python3
"""PyTorch CPU peer for BenchmarkBlock: one LLaMA block (HF semantics:
RMSNorm, half-split RoPE, causal attention, SwiGLU) forward and
forward+backward, float32 or under bf16 autocast (--dtype bf16: matmuls in
bf16 on oneDNN, the rest float32, as elsa-stream's --compute bf16), fixed
thread count. Prints lines in Go benchmark
format so scripts/bench_block.sh can tabulate both.

Usage: /usr/bin/python3 scripts/bench_block.py --threads 2 [--dtype fp32|bf16] [--hidden 4096 --mlp 11008 --heads 32 --tokens 512 --reps 3]
"""
import argparse
import statistics
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--mlp", type=int, default=11008)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--name", default="7B")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    D, F, H, T = a.hidden, a.mlp, a.heads, a.tokens
    hd = D // H
    lin = lambda o, i: torch.nn.Parameter(torch.randn(o, i) * 0.02)
    W = {k: lin(*s) for k, s in dict(q=(D, D), k=(D, D), v=(D, D), o=(D, D), g=(F, D), u=(F, D), d=(D, F)).items()}
    n1, n2 = torch.nn.Parameter(torch.ones(D)), torch.nn.Parameter(torch.ones(D))
    inv = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
    ang = torch.outer(torch.arange(T).float(), inv)
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    mask = torch.full((T, T), float("-inf")).triu(1)

    def rms(x, g):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * g

    def rot(x):
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        return torch.cat([-x2, x1], -1)

    def block(x):
        h = rms(x, n1)
        q = (h @ W["q"].T).view(T, H, hd).transpose(0, 1)
        k = (h @ W["k"].T).view(T, H, hd).transpose(0, 1)
        v = (h @ W["v"].T).view(T, H, hd).transpose(0, 1)
        q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
        p = torch.softmax(q @ k.transpose(1, 2) / hd ** 0.5 + mask, -1)
        x = x + (p @ v).transpose(0, 1).reshape(T, D) @ W["o"].T
        h = rms(x, n2)
        return x + (torch.nn.functional.silu(h @ W["g"].T) * (h @ W["u"].T)) @ W["d"].T

    x0 = torch.randn(T, D)
    params = D * D * 4 + 3 * D * F + 2 * D
    fwd = 2 * T * params + 2 * H * T * T * hd
    for mode in ("forward", "forward+backward"):
        times = []
        for _ in range(a.reps + 1):
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.dtype == "bf16"):
                if mode == "forward":
                    with torch.no_grad():
                        block(x0)
                else:
                    x = x0.clone().requires_grad_(True)
                    block(x).float().sum().backward()
            times.append(time.perf_counter() - t)
        s = statistics.median(times[1:])  # first rep warms up
        flops = fwd if mode == "forward" else 3 * fwd  # torch keeps activations: no recompute
        print(f"PyTorch/{a.name}/T={T}/{a.dtype}/{mode}-{a.threads}\t{a.reps}\t{s*1e9:.0f} ns/op\t{flops/s/1e9:.2f} GFLOP/s\t{T/s:.2f} tokens/s")


if __name__ == "__main__":
    main()
