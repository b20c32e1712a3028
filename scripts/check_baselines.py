#!/usr/bin/python3
"""Independent numpy implementation of the one-shot baselines, as golden
fixtures for admm's Go code (testdata/golden/baselines.json).

Weights: the first 32 rows of layer 0's gate projection (w1) of the real
stories260K checkpoint, read from the llama2.c file; calibration inputs X:
512 seeded Gaussian rows (64 features, a few features scaled up so Wanda and
magnitude disagree). Written from the papers' reference code:
- magnitude: prune round(n*s) smallest |W| over the tensor;
- Wanda: score |W_ij| * ||X_j||_2, prune the lowest per row (round(n*s) in all,
  row r taking floor((r+1)k/rows) - floor(rk/rows)), or M-N lowest of every M
  consecutive columns per row;
- SparseGPT: H = X^T X / n, dead columns, 1% mean-diagonal damping,
  U = upper Cholesky of inv(H), 128-column blocks, per-block mask from
  w^2 / U_jj^2 (unstructured: the block's share of round(n*s), shares summing
  to exactly round(n*s); N:M: per row at each group start), OBS error
  propagation inside the block and to later blocks through U.
Ties break by flat index (stable sort), as in Go.

Run: /usr/bin/python3 scripts/check_baselines.py
"""
import json
import struct
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def gate_rows():
    raw = (ROOT / "testdata/stories260K/stories260K.bin").read_bytes()
    dim, hidden, L, H, KV, V, S = struct.unpack("<7i", raw[:28])
    f = np.frombuffer(raw[28:], dtype="<f4").astype(np.float64)
    hd = dim // H
    off = V * dim + L * dim + L * dim * dim + 2 * L * KV * hd * dim + L * dim * dim + L * dim
    w1 = f[off:off + L * hidden * dim].reshape(L, hidden, dim)[0]
    return w1[:32].copy()


def prune_count(n, s):
    return int(n * s + 0.5)


def lowest(score, c):
    order = np.argsort(score, kind="stable")
    m = np.zeros(score.shape, dtype=bool)
    m[order[:c]] = True
    return m


def magnitude(W, s):
    m = lowest(np.abs(W).ravel(), prune_count(W.size, s)).reshape(W.shape)
    return np.where(m, 0.0, W)


def wanda(W, X, s, nm=None):
    score = np.abs(W) * np.sqrt((X * X).sum(0))[None, :]
    out = W.copy()
    rows = W.shape[0]
    total = prune_count(W.size, s)
    for r in range(rows):
        if nm:
            n, M = nm
            for g in range(0, W.shape[1] - M + 1, M):
                m = lowest(score[r, g:g + M], M - n)
                out[r, g:g + M][m] = 0
        else:
            out[r][lowest(score[r], (r + 1) * total // rows - r * total // rows)] = 0
    return out


def sparsegpt(W, X, s, nm=None, bs=128, damp=0.01):
    W = W.copy()
    rows, cols = W.shape
    Hm = X.T @ X / X.shape[0]
    dead = np.diag(Hm) == 0
    Hm[dead, dead] = 1
    W[:, dead] = 0
    Hm = Hm + damp * np.mean(np.diag(Hm)) * np.eye(cols)
    U = np.linalg.cholesky(np.linalg.inv(Hm)).T  # upper
    total = prune_count(W.size, s)
    mask = np.zeros(W.shape, dtype=bool)
    for i1 in range(0, cols, bs):
        i2 = min(i1 + bs, cols)
        count = i2 - i1
        Err = np.zeros((rows, count))
        if not nm:
            c = total * i2 // cols - total * i1 // cols
            d = np.diag(U)[i1:i2]
            score = (W[:, i1:i2] ** 2 / d[None, :] ** 2).ravel()
            mask[:, i1:i2] = lowest(score, c).reshape(rows, count)
        for j in range(i1, i2):
            if nm and (j - i1) % nm[1] == 0 and j + nm[1] <= i2:
                n, M = nm
                d = np.diag(U)[j:j + M]
                for r in range(rows):
                    mask[r, j:j + M] = lowest(W[r, j:j + M] ** 2 / d ** 2, M - n)
            d = U[j, j]
            q = np.where(mask[:, j], 0.0, W[:, j])
            e = (W[:, j] - q) / d
            W[:, j] = q
            Err[:, j - i1] = e
            W[:, j + 1:i2] -= np.outer(e, U[j, j + 1:i2])
        W[:, i2:] -= Err @ U[i1:i2, i2:]
    return np.where(mask, 0.0, W)


def main():
    W = gate_rows()
    rng = np.random.default_rng(0)
    X = rng.standard_normal((512, W.shape[1]))
    X[:, ::7] *= 4.0  # outlier features
    cases = {
        "magnitude_50": magnitude(W, 0.5),
        "wanda_50": wanda(W, X, 0.5),
        "wanda_2:4": wanda(W, X, 0.5, (2, 4)),
        "sparsegpt_50": sparsegpt(W, X, 0.5),
        "sparsegpt_70": sparsegpt(W, X, 0.7, bs=16),
        "sparsegpt_2:4": sparsegpt(W, X, 0.5, (2, 4)),
    }
    out = {"rows": W.shape[0], "cols": W.shape[1], "W": W.ravel().tolist(), "X": X.ravel().tolist(),
           "results": {k: v.ravel().tolist() for k, v in cases.items()}}
    dst = ROOT / "testdata/golden/baselines.json"
    dst.write_text(json.dumps(out) + "\n")
    print("wrote", dst)


if __name__ == "__main__":
    main()
