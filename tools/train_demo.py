"""Train fastdiff's bundled demo model: a small LLaDA-architecture masked diffusion LM on the
Python standard library's source (dllm-spec.md section 2 for the architecture and format).

Not part of the installed package. Self-contained: its own nn.Module of the LLaDA math, a
byte-level BPE tokenizer trained with `tokenizers`, LLaDA's objective (t ~ U(eps, 1], mask each
token with probability t, cross-entropy on masked positions weighted by 1/t, normalized by the
number of tokens). Deterministic given --seed and the thread count (1).

    python tools/train_demo.py pin    # write tools/demo_corpus/{files.sha256,heldout.txt}
    python tools/train_demo.py train  # tokenizer + training + checkpoint -> fastdiff/assets/demo
    python tools/train_demo.py card   # held-out accuracy, prompt completions, MODEL_CARD.md
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import math
import os
import random
import sys
import sysconfig
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # tokenizers' thread pool, before its import
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tools" / "demo_corpus"
OUT = ROOT / "fastdiff" / "assets" / "demo"
PINNED_PYTHON = "3.11.7"
sys.path.insert(0, str(ROOT))
from fastdiff.models.writer import CHAT_TEMPLATE  # noqa: E402  (the loader's chat template)
from fastdiff.models.writer import SPECIALS as _SPECIALS  # noqa: E402

SPECIALS = list(_SPECIALS)  # ids vocab_size-6 .. vocab_size-1, in this order
ARCH = dict(d_model=256, n_layers=4, n_heads=4, mlp_hidden_size=688, vocab_size=4096,
            rope_theta=10000.0, rms_norm_eps=1e-5, max_sequence_length=512)
SKIP_DIRS = {"site-packages", "test", "tests", "idle_test", "__pycache__", "encodings"}
SKIP_FILES = {"pydoc_data/topics.py"}  # 0.5 MB of prose in one string


# ----------------------------------------------------------------------------- corpus


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pin(stdlib: Path, heldout_share: float, seed: int) -> None:
    """List the stdlib's .py files (minus tests, vendored packages, codec tables) with hashes."""
    files = sorted(p.relative_to(stdlib).as_posix() for p in stdlib.rglob("*.py")
                   if not SKIP_DIRS & set(p.relative_to(stdlib).parts[:-1])
                   and not p.relative_to(stdlib).parts[0].startswith("config-"))
    files = [f for f in files if f not in SKIP_FILES]
    CORPUS.mkdir(parents=True, exist_ok=True)
    with open(CORPUS / "files.sha256", "w") as f:
        f.write(f"# Python {sys.version.split()[0]} stdlib ({stdlib}), sha256sum format\n")
        for rel in files:
            f.write(f"{sha256(stdlib / rel)}  {rel}\n")
    held = sorted(random.Random(seed).sample(files, max(1, round(heldout_share * len(files)))))
    (CORPUS / "heldout.txt").write_text("".join(h + "\n" for h in held))
    print(f"pinned {len(files)} files, {len(held)} held out -> {CORPUS}")


def load_corpus(stdlib: Path) -> tuple[list[str], list[str]]:
    """Verify the pinned list against this machine's stdlib -> (train texts, held-out texts)."""
    held = set((CORPUS / "heldout.txt").read_text().split())
    train, test, bad = [], [], []
    for line in (CORPUS / "files.sha256").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        digest, rel = line.split("  ", 1)
        p = stdlib / rel
        if not p.is_file() or sha256(p) != digest:
            bad.append(rel)
            continue
        (test if rel in held else train).append(p.read_text(encoding="utf-8"))
    total = len(train) + len(test) + len(bad)
    if bad:
        print(f"warning: {len(bad)}/{total} pinned files are missing or differ here (the corpus "
              f"is pinned to Python {PINNED_PYTHON}); skipped, e.g. {bad[:3]}", file=sys.stderr)
    if len(bad) > 0.05 * total:
        sys.exit(f"error: too many mismatches; run with --stdlib pointing at a Python "
                 f"{PINNED_PYTHON} lib/python3.11 folder to reproduce the bundled model")
    return train, test


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE with vocab_size - 6 learned tokens and the specials at the top ids."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    if tok.get_vocab_size() != vocab_size - len(SPECIALS):
        raise RuntimeError(f"BPE learned {tok.get_vocab_size()} tokens, expected "
                           f"{vocab_size - len(SPECIALS)}")
    tok.add_special_tokens(SPECIALS)
    bos = tok.token_to_id(SPECIALS[0])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SPECIALS[0]} $A", pair=f"{SPECIALS[0]} $A $B:1",
        special_tokens=[(SPECIALS[0], bos)])
    for i, s in enumerate(SPECIALS):
        assert tok.token_to_id(s) == vocab_size - len(SPECIALS) + i, s
    return tok


def encode_files(tok: Tokenizer, texts: list[str]) -> np.ndarray:
    """Each file as BOS + tokens + EOS, concatenated -> int32 stream."""
    bos, eos = tok.token_to_id(SPECIALS[0]), tok.token_to_id(SPECIALS[1])
    encs = tok.encode_batch(texts, add_special_tokens=False)
    return np.concatenate([np.array([bos] + e.ids + [eos], dtype=np.int32) for e in encs])


# ----------------------------------------------------------------------------- model


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()  # normalize in fp32, cast back, then times weight
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) \
            * self.weight


def rope(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """t [B, S, H, hd], cos/sin [S, hd] fp32 -> rotate-half RoPE in t.dtype."""
    tf = t.float()
    half = tf.shape[-1] // 2
    rot = torch.cat([-tf[..., half:], tf[..., :half]], dim=-1)
    return (tf * cos[:, None] + rot * sin[:, None]).to(t.dtype)


class Block(nn.Module):
    def __init__(self, d: int, h: int, m: int, eps: float) -> None:
        super().__init__()
        self.h = h
        self.attn_norm, self.ff_norm = RMSNorm(d, eps), RMSNorm(d, eps)
        self.q_proj, self.k_proj, self.v_proj, self.attn_out = (
            nn.Linear(d, d, bias=False) for _ in range(4))
        self.ff_proj, self.up_proj = nn.Linear(d, m, bias=False), nn.Linear(d, m, bias=False)
        self.ff_out = nn.Linear(m, d, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, S, d = x.shape
        n = self.attn_norm(x)
        q, k, v = (p(n).view(B, S, self.h, d // self.h) for p in
                   (self.q_proj, self.k_proj, self.v_proj))
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                           v.transpose(1, 2))  # bidirectional
        h = x + self.attn_out(a.transpose(1, 2).reshape(B, S, d))
        m = self.ff_norm(h)
        return h + self.ff_out(F.silu(self.ff_proj(m)) * self.up_proj(m))


class LLaDA(nn.Module):
    """Parameter names are LLaDA's checkpoint names (model.transformer....)."""

    def __init__(self, cfg: dict) -> None:
        super().__init__()
        d, L, V = cfg["d_model"], cfg["n_layers"], cfg["vocab_size"]
        self.cfg = cfg
        self.model = nn.Module()
        self.model.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(V, d),
            blocks=nn.ModuleList(Block(d, cfg["n_heads"], cfg["mlp_hidden_size"],
                                       cfg["rms_norm_eps"]) for _ in range(L)),
            ln_f=RMSNorm(d, cfg["rms_norm_eps"]),
            ff_out=nn.Linear(d, V, bias=False)))
        for name, p in self.named_parameters():
            if p.dim() == 2:  # residual-branch outputs scaled down by depth (GPT-2 style)
                out = name.endswith("attn_out.weight") or ("blocks" in name and ".ff_out." in name)
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * L) if out else 0.02)

    def forward(self, ids: torch.Tensor, select: torch.Tensor | None = None) -> torch.Tensor:
        """ids [B, S] -> logits [B, S, V], or [N, V] at the True positions of select [B, S]."""
        t = self.model.transformer
        hd = self.cfg["d_model"] // self.cfg["n_heads"]
        inv = self.cfg["rope_theta"] ** (-torch.arange(0, hd, 2, dtype=torch.float32) / hd)
        ang = torch.arange(ids.shape[1], dtype=torch.float32)[:, None] * inv
        ang = torch.cat([ang, ang], -1)
        x = t.wte(ids)
        for blk in t.blocks:
            x = blk(x, ang.cos(), ang.sin())
        x = t.ln_f(x)
        return t.ff_out(x if select is None else x[select])


def diffusion_loss(net: LLaDA, x: torch.Tensor, mask_id: int, gen: torch.Generator,
                   stratified: bool, eps: float = 1e-3) -> torch.Tensor:
    """LLaDA pretraining loss on x [B, S]: t ~ U(eps, 1] per row, mask w.p. t, CE / t / (B*S).
    stratified: u_i = (u + i/B) mod 1, each row's t still uniform, the batch's spread even."""
    B, S = x.shape
    u = torch.rand(B, generator=gen)
    if stratified:
        u = (u[0] + torch.arange(B) / B) % 1.0
    t = (1 - eps) * u + eps  # [B]
    masked = torch.rand(B, S, generator=gen) < t[:, None]
    logits = net(torch.where(masked, mask_id, x), select=masked).float()  # [N, V]
    ce = F.cross_entropy(logits, x[masked], reduction="none")
    w = (1.0 / t)[:, None].expand(B, S)[masked]
    return (ce * w).sum() / (B * S)


@torch.no_grad()
def masked_accuracy(net: LLaDA, ids: torch.Tensor, mask: torch.Tensor, mask_id: int,
                    batch: int = 16) -> float:
    """ids, mask [N, S]: argmax accuracy at the masked positions with them replaced by MASK."""
    right = total = 0
    for i in range(0, len(ids), batch):
        x, m = ids[i:i + batch], mask[i:i + batch]
        pred = net(torch.where(m, mask_id, x), select=m).argmax(-1)
        right += int((pred == x[m]).sum())
        total += int(m.sum())
    return right / total


@torch.no_grad()
def generate(net: LLaDA, prompt: list[int], mask_id: int, gen_length: int = 64,
             block_length: int = 32, steps: int = 64) -> list[int]:
    """LLaDA's reference sampler (dllm-spec.md section 3): low_confidence, temperature 0."""
    x = torch.tensor([prompt + [mask_id] * gen_length])
    P, nb = len(prompt), gen_length // block_length
    spb = steps // nb
    for b in range(nb):
        end = P + (b + 1) * block_length
        M = int((x[0, end - block_length:end] == mask_id).sum())
        for i in range(spb):
            k = M // spb + (1 if i < M % spb else 0)
            p = net(x)[0].float().softmax(-1)  # [S, V]
            conf, x0 = p.max(-1)
            conf[end:] = -math.inf
            conf[x[0] != mask_id] = -math.inf
            idx = conf.topk(k).indices
            x[0, idx] = x0[idx]
    return x[0, P:].tolist()


# ----------------------------------------------------------------------------- commands


def model_config(tok: Tokenizer, arch: dict) -> dict:
    from fastdiff.config import ModelConfig
    eos = tok.token_to_id("<|endoftext|>")
    return ModelConfig(**arch, mask_token_id=tok.token_to_id("<|mdm_mask|>"), eos_token_id=eos,
                       pad_token_id=eos).to_dict()


def heldout_sample(stream: np.ndarray, n: int, seq: int, seed: int):
    """n windows of the held-out stream, each with exactly seq/2 masked positions (fixed seed)."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(stream) - seq, (n,), generator=g)
    ids = torch.stack([torch.from_numpy(stream[s:s + seq].astype(np.int64)) for s in starts])
    mask = torch.zeros(n, seq, dtype=torch.bool)
    for i in range(n):
        mask[i, torch.randperm(seq, generator=g)[: seq // 2]] = True
    return ids, mask


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup))))


def cmd_train(a: argparse.Namespace) -> None:
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    train_texts, test_texts = load_corpus(Path(a.stdlib))
    tok = train_tokenizer(train_texts, ARCH["vocab_size"])
    cfg = model_config(tok, ARCH)
    mask_id = cfg["mask_token_id"]
    train, test = encode_files(tok, train_texts), encode_files(tok, test_texts)
    counts = np.bincount(train, minlength=ARCH["vocab_size"])
    unigram = int(counts.argmax())
    print(f"corpus: {len(train_texts)} train files, {len(train)} tokens; {len(test_texts)} "
          f"held-out files, {len(test)} tokens; tokenizer+encode {time.time() - t0:.0f}s",
          flush=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": SPECIALS[0], "eos_token": SPECIALS[1], "mask_token": SPECIALS[5],
         "chat_template": CHAT_TEMPLATE, "model_max_length": ARCH["max_sequence_length"],
         "tokenizer_class": "PreTrainedTokenizerFast"}, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    ids, mask = heldout_sample(test, a.sample_rows, a.seq, a.seed + 1)
    save_file({"input_ids": ids, "mask": mask}, str(out / "heldout_sample.safetensors"))

    net = LLaDA(cfg)
    decay = [p for p in net.parameters() if p.dim() == 2]
    other = [p for p in net.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": other, "weight_decay": 0.0}], lr=a.lr, betas=(0.9, 0.95))
    rng = np.random.default_rng(a.seed)
    gen = torch.Generator().manual_seed(a.seed + 2)
    log = {"loss": [], "eval": [], "args": vars(a), "unigram_token": unigram,
           "train_tokens": int(len(train)), "heldout_tokens": int(len(test))}
    long_from = int(a.steps * (1 - a.long_share))
    t_train, run = time.time(), 0.0
    for step in range(a.steps):
        seq, batch = (a.seq, a.batch) if step < long_from else (2 * a.seq, a.batch // 2)
        starts = rng.integers(0, len(train) - seq, batch)
        x = torch.from_numpy(np.stack([train[s:s + seq] for s in starts]).astype(np.int64))
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a.steps, a.lr, a.warmup)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = diffusion_loss(net, x, mask_id, gen, a.t_sampling == "stratified")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        run += loss.item()
        if (step + 1) % 10 == 0:
            log["loss"].append([step + 1, run / 10])
            run = 0.0
        if (step + 1) % a.eval_every == 0 or step + 1 == a.steps:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                acc = masked_accuracy(net, ids[:32], mask[:32], mask_id)
            el = time.time() - t_train
            log["eval"].append([step + 1, acc, el])
            print(f"step {step + 1}/{a.steps} loss {log['loss'][-1][1]:.3f} heldout-acc "
                  f"{acc:.3f} {el / 60:.1f} min", flush=True)
            if el > a.max_minutes * 60 and step + 1 < a.steps:
                log["stopped_early_at"] = step + 1
                print(f"time guard: stopping after {step + 1} steps", flush=True)
                break
    log["train_seconds"] = time.time() - t_train
    log["threads"] = torch.get_num_threads()
    sd = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in net.state_dict().items()}
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    Path(a.log).write_text(json.dumps(log, indent=1) + "\n")
    print(f"done in {(time.time() - t0) / 60:.1f} min -> {out}", flush=True)


def load_trained(out: Path) -> tuple[LLaDA, dict, Tokenizer]:
    """The exported checkpoint as an fp32 training-side model (weights as stored, bf16-rounded)."""
    cfg = json.loads((out / "config.json").read_text())
    net = LLaDA(cfg)
    net.load_state_dict({k: v.float() for k, v in load_file(str(out / "model.safetensors")).items()})
    return net.eval(), cfg, Tokenizer.from_file(str(out / "tokenizer.json"))


def parses(prompt: str, completion: str, ended: bool) -> bool:
    """ast.parse on prompt + completion, trimmed to its last complete line (all of it after EOS);
    a text with no complete line past the prompt counts as a failure."""
    text = prompt + completion
    if not ended:
        text = text[: text.rfind("\n")] if "\n" in text else ""
    if len(text.rstrip()) <= len(prompt.rstrip()):
        return False
    try:
        ast.parse(text)
        return True
    except SyntaxError:
        return False


def engine_check(out: Path, prompts: list[str], ours: list[list[int]],
                 a: argparse.Namespace) -> str:
    """The same prompts through fastdiff.Engine (one batch, CPU, fp32): a card sentence."""
    try:
        from fastdiff import Engine
        eng = Engine.from_pretrained(out, device="cpu", dtype="float32",
                                     max_batch_size=len(prompts))
        t0 = time.time()
        comps = eng.generate(prompts, gen_length=a.gen_length, block_length=a.block_length,
                             steps=a.gen_steps, temperature=0.0)
        dt = time.time() - t0
    except Exception as e:  # the card says so rather than failing
        return f"The fastdiff engine could not be run on it here ({type(e).__name__}: {e})."
    same = sum(c.full_ids == o for c, o in zip(comps, ours))
    parse = sum(parses(p, c.text, c.finish_reason == "eos") for p, c in zip(prompts, comps))
    return (f"Cross-check: `fastdiff.Engine.from_pretrained(..., device='cpu', dtype='float32')"
            f".generate(prompts, gen_length={a.gen_length}, block_length={a.block_length}, "
            f"steps={a.gen_steps})` on all {len(prompts)} prompts as one batch produced the same "
            f"{a.gen_length} tokens as the script's sampler for {same}/{len(prompts)} prompts; "
            f"its completions parse for {parse}/{len(prompts)} ({dt:.1f} s for the batch).")


def plot_curve(log: dict, uni_acc: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (l, r) = plt.subplots(1, 2, figsize=(10, 3.6))
    s, v = zip(*log["loss"])
    l.plot(s, v, lw=0.8)
    l.set(xlabel="step", ylabel="LLaDA loss (1/t-weighted CE per token)", yscale="log",
          title="training loss (10-step means)")
    e = log["eval"]
    r.plot([x[0] for x in e], [x[1] for x in e], marker="o", ms=3, label="model (bf16 autocast)")
    r.axhline(uni_acc, ls="--", c="gray", label="unigram baseline")
    r.set(xlabel="step", ylabel="accuracy", ylim=(0, None),
          title="held-out masked-token acc, mask ratio 0.5")
    r.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def cmd_card(a: argparse.Namespace) -> None:
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    net, cfg, tok = load_trained(out)
    log = json.loads(Path(a.log).read_text())
    sample = load_file(str(out / "heldout_sample.safetensors"))
    ids, mask = sample["input_ids"], sample["mask"]
    acc = masked_accuracy(net, ids, mask, cfg["mask_token_id"])  # fp32, no autocast
    uni = log["unigram_token"]
    uni_acc = float((ids[mask] == uni).float().mean())
    meta = {"accuracy": f"{acc:.6f}", "unigram_accuracy": f"{uni_acc:.6f}",
            "unigram_token": str(uni), "mask_ratio": "0.5"}
    save_file({"input_ids": ids, "mask": mask}, str(out / "heldout_sample.safetensors"), meta)
    stops = {cfg["eos_token_id"], tok.token_to_id("<|eot_id|>")}
    prompts = [p for p in (out / "prompts.txt").read_text().splitlines() if p.strip()]
    rows, ok = [], 0
    t0 = time.time()
    for p in prompts:
        gen = generate(net, tok.encode(p).ids, cfg["mask_token_id"], a.gen_length,
                       a.block_length, a.gen_steps)
        cut = next((i for i, t in enumerate(gen) if t in stops), len(gen))
        text = tok.decode(gen[:cut])
        good = parses(p, text, cut < len(gen))
        ok += good
        rows.append((p, text, good, gen))
    gen_s = time.time() - t0
    engine = engine_check(out, prompts, [r[3] for r in rows], a)
    plot_curve(log, uni_acc, out / "training_curve.png")
    write_card(out, cfg, log, acc, uni_acc, uni, tok, ok, len(prompts), rows, gen_s, engine, a)
    print(f"held-out acc {acc:.4f}, unigram {uni_acc:.4f} ({acc / uni_acc:.2f}x), "
          f"ast.parse {ok}/{len(prompts)}, generation {gen_s:.0f}s")


def write_card(out: Path, cfg: dict, log: dict, acc: float, uni_acc: float, uni: int,
               tok: Tokenizer, ok: int, n: int, rows: list, gen_s: float, engine: str,
               a: argparse.Namespace) -> None:
    ta = log["args"]
    n_params = sum(v.numel() for v in load_file(str(out / "model.safetensors")).values())
    size_mb = (out / "model.safetensors").stat().st_size / 1e6
    stopped = (f" (time guard stopped it at step {log['stopped_early_at']})"
               if "stopped_early_at" in log else "")
    long_from = int(ta["steps"] * (1 - ta["long_share"]))
    rows_n, seq_n = load_file(str(out / "heldout_sample.safetensors"))["input_ids"].shape
    strat = (" (stratified over the batch: U_i = (U + i/B) mod 1, so each row's t is uniform "
             "and the batch covers (0, 1] evenly, which lowers the variance of the 1/t weights)"
             if ta.get("t_sampling") == "stratified" else ", independently per row")
    examples = "\n".join(
        f"#### `{p}` ({'parses' if g else 'does not parse'})\n```python\n{p}{t}\n```\n"
        for p, t, g, _ in rows)
    text = f"""# fastdiff demo model: a small LLaDA-architecture code model

A masked diffusion LM (LLaDA architecture and checkpoint format, dllm-spec.md section 2) trained
by `tools/train_demo.py` on the Python standard library's source. It exists so that fastdiff
runs offline on a laptop CPU with no download; it writes Python-looking code, it is not useful
as an assistant.

## Model
| | |
|---|---|
| parameters | {n_params / 1e6:.2f} M ({n_params:,}), stored bf16, {size_mb:.1f} MB |
| d_model / layers / heads / MLP | {cfg['d_model']} / {cfg['n_layers']} / {cfg['n_heads']} / {cfg['mlp_hidden_size']} (SwiGLU) |
| vocabulary | {cfg['vocab_size']}: byte-level BPE ({cfg['vocab_size'] - 6} learned) + 6 specials at the top ids |
| specials | BOS `<|startoftext|>` {tok.token_to_id('<|startoftext|>')}, EOS `<|endoftext|>` {cfg['eos_token_id']}, EoT `<|eot_id|>` {tok.token_to_id('<|eot_id|>')}, `<|start_header_id|>` {tok.token_to_id('<|start_header_id|>')}, `<|end_header_id|>` {tok.token_to_id('<|end_header_id|>')}, MASK `<|mdm_mask|>` {cfg['mask_token_id']} |
| RoPE theta / max_sequence_length | {cfg['rope_theta']} / {cfg['max_sequence_length']} (trained on windows of {ta['seq']} and {2 * ta['seq']} tokens) |

The tokenizer prepends BOS to plain prompts (as at training, where each file is BOS + text +
EOS). tokenizer_config.json carries a Llama-3-style chat template, but the model never saw chat
data: the template exists so the chat code path has something to render.

## Corpus
The `.py` files of CPython {PINNED_PYTHON}'s standard library, without `test/`, `tests/`,
`idle_test/`, `site-packages/`, `encodings/` (codec tables) and `pydoc_data/topics.py` (prose).
The list with sha256 hashes is `tools/demo_corpus/files.sha256`; the held-out files (not seen by
the tokenizer or the model) are `tools/demo_corpus/heldout.txt`. Other Python versions differ:
the script skips files whose hash does not match and refuses to train when more than 5% differ.
Training stream: {log['train_tokens']:,} tokens; held-out stream: {log['heldout_tokens']:,} tokens.

## Recipe
LLaDA's pretraining objective: per sequence t = (1 - 1e-3) U + 1e-3, U ~ U[0, 1){strat}; each
token is replaced by MASK with probability t; loss = sum over masked positions of CE / t, divided
by the number of tokens. Random windows of the concatenated training stream (files joined as
BOS + text + EOS, so the model learns to emit EOS), batch {ta['batch']} x {ta['seq']} tokens for
steps 1-{long_from}, then {ta['batch'] // 2} x {2 * ta['seq']} up to step {ta['steps']}{stopped}.
AdamW (betas 0.9, 0.95; weight decay 0.1 on matrices), peak LR {ta['lr']}, {ta['warmup']} warmup
steps, cosine decay to 10%, gradient clip 1.0, bf16 autocast on the CPU (weights and optimizer
in fp32), seed {ta['seed']}. Trained on {log['threads']} CPU thread(s) (torch.set_num_threads) of an
AMD EPYC (AVX-512 BF16) 2-core VM shared with other jobs, in {log['train_seconds'] / 60:.1f} minutes of
wall time ({ta['steps']} steps; {ta['steps'] * ta['batch'] * ta['seq']:,} training tokens). Reproduce (deterministic
given seed and thread count; two 20-step runs gave bitwise-identical weights and tokenizer):

```
python tools/train_demo.py train   # defaults: --threads {log['threads']} --seed {ta['seed']} --steps {ta['steps']} --lr {ta['lr']}
python tools/train_demo.py card
```

![training curve](training_curve.png)

The curve's accuracy points use the first 32 rows of the committed sample under bf16 autocast;
the table below uses all rows in float32.

## Evaluation
Held-out masked-token accuracy at mask ratio 0.5 on the committed sample
`heldout_sample.safetensors` ({rows_n} windows of {seq_n} tokens at random offsets of the
held-out stream; exactly half the positions of each window masked, fixed seed); argmax
prediction at every masked position from one forward pass, in float32 from the stored bf16
weights.

| | accuracy |
|---|---|
| this model | **{acc:.4f}** |
| unigram baseline (always the most frequent training token, id {uni} = `{tok.id_to_token(uni)}`) | {uni_acc:.4f} |
| ratio | {acc / uni_acc:.2f}x |

`tests/test_demo_model.py` reloads the model through `fastdiff.models.load_checkpoint` and
reproduces the accuracy on the same sample within 0.005 (absolute).

Prompt completions: the {n} prompts of `prompts.txt`, generated with the script's own
implementation of LLaDA's reference sampler (low-confidence remasking, temperature 0,
gen_length {a.gen_length}, block_length {a.block_length}, steps {a.gen_steps}, float32), cut at
the first EOS/EoT, trimmed to the last complete line (kept whole when EOS was emitted), then
`ast.parse(prompt + completion)`: **{ok}/{n} = {ok / n:.0%}** parse. A prompt whose trimmed text
adds no complete line counts as a failure. ({gen_s:.0f} s for all {n} with {torch.get_num_threads()} thread(s).)
{engine}

## Limitations
A few million parameters trained for about 40 minutes on a 2-core CPU: it has learned Python's
surface (indentation, names, keywords, `self`, docstrings) but not programs. Masked-token
accuracy is well above the baseline, yet free generation is weak: greedy low-confidence
remasking tends to commit easy filler (blank lines, `#`, repeated identifiers) across the
window, so most completions do not parse. `ast.parse` checks syntax only (it accepts, e.g.,
`return` at class level, a compile-time error). Use it to see fastdiff run, not to judge
diffusion decoding quality.

<details><summary>All {n} completions</summary>

{examples}
</details>
"""
    (out / "MODEL_CARD.md").write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["pin", "train", "card"])
    ap.add_argument("--stdlib", default=sysconfig.get_paths()["stdlib"])
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--log", default=str(CORPUS / "train_log.json"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--heldout-share", type=float, default=0.04)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--long-share", type=float, default=0.15, help="final share at 2*seq")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--t-sampling", choices=["iid", "stratified"], default="iid")
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--sample-rows", type=int, default=64)
    ap.add_argument("--max-minutes", type=float, default=42.0)
    ap.add_argument("--gen-length", type=int, default=64)
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--gen-steps", type=int, default=64)
    a = ap.parse_args()
    if a.command == "pin":
        pin(Path(a.stdlib), a.heldout_share, a.seed)
    elif a.command == "train":
        cmd_train(a)
    else:
        cmd_card(a)


if __name__ == "__main__":
    main()
