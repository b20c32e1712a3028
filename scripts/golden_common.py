"""Shared pieces of the golden-fixture scripts (scripts/golden_*.py): the
safetensors writer and the golden JSON the Go tests read (the schema of
testdata/golden/stories260K.json). Never on the product's path."""
import json
import struct


def rotate_half(x):
    """HF's RoPE convention: the two halves of head_dim are the pair."""
    import torch
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def write_checkpoint(out, cfg, tensors):
    """Writes out/config.json and out/model.safetensors (float32, sorted names)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    header, off, blobs = {}, 0, []
    for name in sorted(tensors):
        b = tensors[name].astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * ((8 - len(hj) % 8) % 8)
    (out / "model.safetensors").write_bytes(struct.pack("<Q", len(hj)) + hj + b"".join(blobs))


def write_golden(path, inputs, targets, loss, logits, weights):
    """Writes the window, loss, logits summary and every tensor's gradient norm."""
    lg = logits.detach()
    golden = {
        "input_ids": inputs.tolist(), "targets": targets.tolist(), "loss": loss.item(),
        "logits_row0": lg[0].tolist(), "logits_last": lg[-1].tolist(),
        "logits_sum": lg.sum().item(), "logits_abs_sum": lg.abs().sum().item(),
        "grad_norms": {n: w.grad.norm().item() for n, w in weights.items()},
    }
    path.write_text(json.dumps(golden, indent=1) + "\n")
