#!/usr/bin/python3
"""Train the second real test model: a character-level LLaMA on the TinyStories
train text elsa-stream ships (internal/defaultmodel/data/train_calib.txt), and
write it as a Hugging Face folder (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json).

Why: Elsa's defaults were chosen on stories260K alone; a second model with
another width, depth, context and vocabulary shows whether they travel.
Written from the LLaMA semantics (Hugging Face modeling_llama: RMSNorm,
rotate-half RoPE, SwiGLU, tied head), not from elsa-stream's Go code.

Tokenizer: one token per character (space as "▁", a "▁" prepended to every
text, as Llama's legacy SentencePiece does), <unk> <s> </s> first, no
merges: the vocabulary is the characters of the training text.

Protocol: each story is [<s>] + its characters; the stories are concatenated
and training windows of the context are drawn at random; evaluation (printed
at the end, the same "stream" protocol as elsa-stream's eval) splits the token
stream of the first 100 validation stories into windows of the context.

  /usr/bin/python3 scripts/train_char_llama.py --out testdata/charllama   # ~15 min on 2 cores

Deterministic for a given torch build and thread count (seed 0, 2 threads).
A test-material generator, never on the product's path.
"""
import argparse
import json
import math
import os
import struct
import time

import torch
import torch.nn.functional as F

SPACE = "\u2581"
SPECIALS = ["<unk>", "<s>", "</s>"]
END = "<|endoftext|>"


def stories(path):
    return [s.strip() for s in open(path, encoding="utf-8").read().split(END) if s.strip()]


def normalize(text):
    return SPACE + text.replace(" ", SPACE)


class CharLlama(torch.nn.Module):
    def __init__(self, vocab, hidden, layers, heads, mlp, context, eps=1e-5, theta=10000.0):
        super().__init__()
        self.heads, self.head_dim, self.eps = heads, hidden // heads, eps
        self.embed = torch.nn.Parameter(torch.randn(vocab, hidden) * 0.02)
        self.blocks = torch.nn.ModuleList()
        for _ in range(layers):
            b = torch.nn.ParameterDict({
                "input_layernorm": torch.nn.Parameter(torch.ones(hidden)),
                "q_proj": torch.nn.Parameter(torch.randn(hidden, hidden) * 0.02),
                "k_proj": torch.nn.Parameter(torch.randn(hidden, hidden) * 0.02),
                "v_proj": torch.nn.Parameter(torch.randn(hidden, hidden) * 0.02),
                "o_proj": torch.nn.Parameter(torch.randn(hidden, hidden) * 0.02 / math.sqrt(2 * layers)),
                "post_attention_layernorm": torch.nn.Parameter(torch.ones(hidden)),
                "gate_proj": torch.nn.Parameter(torch.randn(mlp, hidden) * 0.02),
                "up_proj": torch.nn.Parameter(torch.randn(mlp, hidden) * 0.02),
                "down_proj": torch.nn.Parameter(torch.randn(hidden, mlp) * 0.02 / math.sqrt(2 * layers)),
            })
            self.blocks.append(b)
        self.norm = torch.nn.Parameter(torch.ones(hidden))
        inv = 1.0 / theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim)
        ang = torch.outer(torch.arange(context, dtype=torch.float32), inv)
        emb = torch.cat([ang, ang], dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def rms(self, x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w

    def rope(self, x):
        t = x.shape[-2]
        half = x.shape[-1] // 2
        rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * self.cos[:t] + rot * self.sin[:t]

    def forward(self, ids):
        b, t = ids.shape
        x = self.embed[ids]
        mask = torch.full((t, t), float("-inf")).triu(1)
        for p in self.blocks:
            h = self.rms(x, p["input_layernorm"])
            q = (h @ p["q_proj"].T).view(b, t, self.heads, self.head_dim).transpose(1, 2)
            k = (h @ p["k_proj"].T).view(b, t, self.heads, self.head_dim).transpose(1, 2)
            v = (h @ p["v_proj"].T).view(b, t, self.heads, self.head_dim).transpose(1, 2)
            q, k = self.rope(q), self.rope(k)
            a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + mask, dim=-1) @ v
            x = x + a.transpose(1, 2).reshape(b, t, -1) @ p["o_proj"].T
            h = self.rms(x, p["post_attention_layernorm"])
            x = x + (F.silu(h @ p["gate_proj"].T) * (h @ p["up_proj"].T)) @ p["down_proj"].T
        return self.rms(x, self.norm) @ self.embed.T


def write_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name, t in tensors.items():
        b = t.detach().contiguous().to(torch.float32).numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--train", default="internal/defaultmodel/data/train_calib.txt")
    ap.add_argument("--valid", default="internal/defaultmodel/data/valid_first100.txt")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--mlp", type=int, default=344)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(a.threads)

    train = stories(a.train)
    chars = sorted(set("".join(normalize(s) for s in train)))
    vocab = SPECIALS + chars
    ids = {c: i for i, c in enumerate(vocab)}
    encode = lambda s: [ids.get(c, 0) for c in normalize(s)]
    stream = torch.tensor([t for s in train for t in [1] + encode(s)], dtype=torch.long)
    print(f"{len(train)} stories, {len(stream)} tokens, vocabulary {len(vocab)}")

    m = CharLlama(len(vocab), a.hidden, a.layers, a.heads, a.mlp, a.context)
    n = sum(p.numel() for p in m.parameters())
    print(f"{n} parameters")
    decay = [p for p in m.parameters() if p.dim() == 2]
    other = [p for p in m.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95))
    warm = 50
    t0 = time.time()
    for step in range(a.steps):
        lr = a.lr * min(1, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * step / a.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(stream) - a.context - 1, (a.batch,))
        x = torch.stack([stream[s:s + a.context] for s in starts])
        y = torch.stack([stream[s + 1:s + a.context + 1] for s in starts])
        loss = F.cross_entropy(m(x).view(-1, len(vocab)), y.view(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == a.steps - 1:
            print(f"step {step} loss {loss.item():.4f} lr {lr:.2e} {time.time() - t0:.0f}s", flush=True)

    # Evaluation: the "stream" protocol on the first 100 validation stories.
    valid = stories(a.valid)
    vs = torch.tensor([t for s in valid for t in [1] + encode(s)], dtype=torch.long)
    nll, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(vs) - 1, a.context):
            w = vs[s:s + a.context + 1]
            if len(w) < 2:
                break
            logits = m(w[:-1].unsqueeze(0))[0]
            nll += F.cross_entropy(logits, w[1:], reduction="sum").item()
            count += len(w) - 1
    print(f"validation (first {len(valid)} stories): {count} predicted tokens, ppl {math.exp(nll / count):.4f}")

    os.makedirs(a.out, exist_ok=True)
    tensors = {"model.embed_tokens.weight": m.embed}
    for i, p in enumerate(m.blocks):
        pre = f"model.layers.{i}."
        for k in ("q_proj", "k_proj", "v_proj", "o_proj"):
            tensors[pre + "self_attn." + k + ".weight"] = p[k]
        for k in ("gate_proj", "up_proj", "down_proj"):
            tensors[pre + "mlp." + k + ".weight"] = p[k]
        tensors[pre + "input_layernorm.weight"] = p["input_layernorm"]
        tensors[pre + "post_attention_layernorm.weight"] = p["post_attention_layernorm"]
    tensors["model.norm.weight"] = m.norm
    write_safetensors(os.path.join(a.out, "model.safetensors"), tensors)
    config = {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "bos_token_id": 1, "eos_token_id": 2,
        "head_dim": a.hidden // a.heads, "hidden_act": "silu", "hidden_size": a.hidden,
        "intermediate_size": a.mlp, "max_position_embeddings": a.context, "model_type": "llama",
        "num_attention_heads": a.heads, "num_hidden_layers": a.layers, "num_key_value_heads": a.heads,
        "rms_norm_eps": 1e-5, "rope_theta": 10000, "tie_word_embeddings": True, "torch_dtype": "float32",
        "vocab_size": len(vocab),
    }
    json.dump(config, open(os.path.join(a.out, "config.json"), "w"), indent=2)
    added = [{"content": t, "id": i, "lstrip": False, "normalized": False, "rstrip": False,
              "single_word": False, "special": True} for i, t in enumerate(SPECIALS)]
    tok = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": SPACE},
            {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}]},
        "pre_tokenizer": None,
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                                    {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(vocab)}, "merges": []},
    }
    json.dump(tok, open(os.path.join(a.out, "tokenizer.json"), "w", encoding="utf-8"), ensure_ascii=False, indent=1)
    json.dump({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
               "add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False},
              open(os.path.join(a.out, "tokenizer_config.json"), "w"), indent=2)


if __name__ == "__main__":
    main()
