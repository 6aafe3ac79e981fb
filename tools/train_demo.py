"""Train fastdiff's bundled demo model: a small LLaDA-architecture masked diffusion LM on the
Python standard library's source (dllm-spec.md section 2 for the architecture and format).

Not part of the installed package. Self-contained: its own nn.Module of the LLaDA math, a
byte-level BPE tokenizer trained with `tokenizers`, LLaDA's objective (t ~ U(eps, 1], mask each
token with probability t, cross-entropy on masked positions weighted by 1/t, normalized by the
number of tokens), plus the options the card's recipe describes. Deterministic given --seed and
the thread count (1).

    python tools/train_demo.py pin     # write tools/demo_corpus/{files.sha256,heldout.txt}
    python tools/train_demo.py train --run RUN   # tokenizer + training; RUN/checkpoint.pt every
                                       # --ckpt-minutes and on SIGTERM, RUN/export = the model
    python tools/train_demo.py train --resume RUN/checkpoint.pt   # continue, bit for bit
    python tools/train_demo.py teacher --teacher-from RUN/export --teacher RUN2/teacher.safetensors
                                       # the model's own 1/step decodes, kept if they end + parse
    python tools/train_demo.py train --run RUN2 --init RUN/export --teacher RUN2/teacher.safetensors
                                       # self-distillation (MODEL_CARD.md: the full settings)
    python tools/train_demo.py export --run RUN  # RUN/export -> fastdiff/assets/demo (+ log)
    python tools/train_demo.py card    # held-out accuracy, completions, engine figures, card

RUN (default /work/demo_train/run) holds the 60+ MB checkpoint: keep it out of git.
"""
from __future__ import annotations

import argparse
import ast
import bisect
import hashlib
import json
import math
import os
import random
import signal
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


def top_level_units(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the top-level def/class statements of a module: from the
    `def`/`class` keyword (decorators excluded) to the end of the statement's last line."""
    lines = text.split("\n")  # ast's line numbers (the pinned files use \n only)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line) + 1)
    try:
        body = ast.parse(text).body
    except SyntaxError:
        return []
    return [(starts[n.lineno - 1], starts[n.end_lineno - 1] + len(lines[n.end_lineno - 1]))
            for n in body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and text.startswith(("def ", "class "), starts[n.lineno - 1])]


def encode_files(tok: Tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Each file as BOS + tokens + EOS, concatenated -> (int32 stream, int64 units [N, 2]): the
    stream spans [start, end) of the top-level `def `/`class ` statements (the demo prompts'
    shape), end including the token that holds the statement's final newline."""
    bos, eos = tok.token_to_id(SPECIALS[0]), tok.token_to_id(SPECIALS[1])
    encs = tok.encode_batch(texts, add_special_tokens=False)
    parts, units, at = [], [], 0
    for text, e in zip(texts, encs):
        offs = [o[0] for o in e.offsets]  # token start characters, ascending
        first = {c: j for j, c in enumerate(offs)}
        for a, z in top_level_units(text):
            if a in first:  # the keyword starts a token (the pre-tokenizer splits at line starts)
                end = bisect.bisect_left(offs, z)  # the token holding the final newline
                units.append((at + 1 + first[a], at + 1 + min(end + 1, len(offs))))
        parts.append(np.array([bos] + e.ids + [eos], dtype=np.int32))
        at += len(e.ids) + 2
    return np.concatenate(parts), np.array(units, dtype=np.int64).reshape(-1, 2)


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


def block_loss(net: LLaDA, x: torch.Tensor, mask_id: int, gen: torch.Generator, block: int,
               eps: float = 1e-3, c: torch.Tensor | None = None) -> torch.Tensor:
    """The semi-autoregressive decode's view on x [B, S]: a clean prefix of c ~ U{1..S-block}
    tokens (or the given c [B, 1]), then a block masked w.p. t ~ U(eps, 1], then every later
    position masked; CE / t on the block's masked positions, divided by B * block."""
    B, S = x.shape
    t = (1 - eps) * torch.rand(B, generator=gen) + eps  # [B]
    if c is None:
        c = torch.randint(1, S - block + 1, (B, 1), generator=gen)  # [B, 1]
    pos = torch.arange(S)[None]
    inblock = (pos >= c) & (pos < c + block)
    target = inblock & (torch.rand(B, S, generator=gen) < t[:, None])  # [B, S]
    masked = target | (pos >= c + block)
    logits = net(torch.where(masked, mask_id, x), select=target).float()  # [N, V]
    ce = F.cross_entropy(logits, x[target], reduction="none")
    w = (1.0 / t)[:, None].expand(B, S)[target]
    return (ce * w).sum() / (B * block)


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


def lr_at(step: int, a: argparse.Namespace) -> float:
    """Linear warmup, then cosine to 10% (the bundled model's recipe) or warmup-stable-decay:
    constant until the last decay_share of the steps, linear to 10% (a run can be extended while
    it is still in the stable phase)."""
    steps, peak, warmup = a.steps, a.lr, a.warmup
    if step < warmup:
        return peak * (step + 1) / warmup
    if a.schedule == "cosine":
        return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup))))
    decay_from = int(steps * (1 - a.decay_share))
    if step < decay_from:
        return peak
    return peak * (1 - 0.9 * (step - decay_from) / max(1, steps - decay_from))


def windows(stream: np.ndarray, anchors: np.ndarray, rng: np.random.Generator, batch: int,
            seq: int, anchor_share: float, bos: int) -> torch.Tensor:
    """batch random windows of seq tokens -> [batch, seq] int64; with anchor_share > 0, that share
    of rows (on average) is BOS + the stream from a top-level def/class line instead."""
    starts = rng.integers(0, len(stream) - seq, batch)
    x = np.stack([stream[s:s + seq] for s in starts]).astype(np.int64)
    if anchor_share > 0:
        use = rng.random(batch) < anchor_share
        picks = anchors[rng.integers(0, len(anchors), batch)]
        for r in np.flatnonzero(use):
            x[r] = np.concatenate([[bos], stream[picks[r]:picks[r] + seq - 1]])
    return torch.from_numpy(x)


def unit_rows(stream: np.ndarray, units: np.ndarray, rng: np.random.Generator, batch: int,
              seq: int, bos: int, eos: int) -> torch.Tensor:
    """batch rows of BOS + a random top-level def/class statement, cut at seq tokens or ended by
    EOS padding to seq (as LLaDA's SFT pads answers with EOS) -> [batch, seq] int64."""
    x = np.full((batch, seq), eos, dtype=np.int64)
    x[:, 0] = bos
    for r, (a, e) in enumerate(units[rng.integers(0, len(units), batch)]):
        body = stream[a:min(e, a + seq - 1)]
        x[r, 1:1 + len(body)] = body
    return torch.from_numpy(x)


def read_prompts(folder: Path) -> list[str]:
    """The non-empty lines of a model folder's prompts.txt (the fixed evaluation prompts)."""
    return [p for p in (folder / "prompts.txt").read_text().splitlines() if p.strip()]


def stop_ids(cfg: dict, tok: Tokenizer) -> set[int]:
    """The ids that end a completion: EOS and EoT."""
    return {cfg["eos_token_id"], tok.token_to_id("<|eot_id|>")}


def first_stop(ids: list[int], stops: set[int]) -> int:
    """Index of the first stop id in ids (len(ids) when there is none)."""
    return next((i for i, t in enumerate(ids) if t in stops), len(ids))


def teacher_prompts(texts: list[str], exclude: set[str]) -> list[str]:
    """The one-line headers of the files' top-level def/class statements (`def f(x):`, the demo
    prompts' shape), unique, sorted, without the fixed evaluation prompts (exclude)."""
    heads = set()
    for text in texts:
        for a, _ in top_level_units(text):
            line = text[a:text.find("\n", a)]
            if line.rstrip().endswith(":"):
                heads.add(line.rstrip())
    return sorted(heads - exclude)


def distill_rows(teacher: dict, rng: np.random.Generator, n: int, gen_length: int,
                 block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n good teacher rows of one prompt length (a bucket drawn in proportion to its size, so the
    window is exactly prompt + gen_length as at decoding) and each row's block start at a block
    boundary of the generation -> (x [n, P + gen_length] int64, c [n, 1] int64)."""
    good = teacher["good"].numpy()
    plen, ids = teacher["prompt_len"].numpy(), teacher["ids"]
    pick = int(plen[good][rng.integers(0, int(good.sum()))])
    rows = np.flatnonzero((plen == pick) & good)
    idx = torch.from_numpy(rows[rng.integers(0, len(rows), n)])
    x = ids[idx, :pick + gen_length].long()
    c = pick + block * torch.from_numpy(rng.integers(0, gen_length // block, (n, 1)))
    return x, c


def cmd_teacher(a: argparse.Namespace) -> None:
    """Greedy 1-token-per-step completions of the training files' def/class headers by the model
    in --teacher-from (through fastdiff.Engine, CPU, float32, LLaDA's fixed schedule, cache none:
    the decode whose parse rate the acceptance compares against), cut at the first EOS/EoT and
    padded with EOS -> --teacher (ids [N, W] int32 with -1 past each row, prompt_len [N], good
    [N]: the completion ended with EOS and prompt + completion passes ast.parse)."""
    from fastdiff import Engine, GenerationConfig
    if not a.teacher_from or not a.teacher:
        sys.exit("error: teacher needs --teacher-from MODEL_FOLDER and --teacher OUT.safetensors")
    if not (Path(a.teacher_from) / "model.safetensors").is_file():
        sys.exit(f"error: no model.safetensors in --teacher-from {a.teacher_from}")
    torch.set_num_threads(a.threads)
    src = Path(a.teacher_from)
    train_texts, _ = load_corpus(Path(a.stdlib))
    evals = {p.strip() for p in read_prompts(OUT)}
    prompts = teacher_prompts(train_texts, evals)
    if a.teacher_prompts and a.teacher_prompts < len(prompts):
        prompts = sorted(random.Random(a.seed).sample(prompts, a.teacher_prompts))
    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    cfg = json.loads((src / "config.json").read_text())
    eos, stops = cfg["eos_token_id"], stop_ids(cfg, tok)
    enc = {p: tok.encode(p).ids for p in prompts}  # BOS + tokens, as the engine encodes them
    prompts.sort(key=lambda p: (len(enc[p]), p))  # batches of similar lengths
    eng = Engine.from_pretrained(src, device="cpu", dtype="float32", max_batch_size=a.teacher_batch)
    g = a.gen_length
    gcfg = GenerationConfig(gen_length=g, block_length=a.block_length, steps=g, temperature=0.0,
                            cache="none")
    width = max(len(v) for v in enc.values()) + g
    ids = torch.full((len(prompts), width), -1, dtype=torch.int32)
    plen = torch.tensor([len(enc[p]) for p in prompts], dtype=torch.int32)
    good = torch.zeros(len(prompts), dtype=torch.bool)
    ended = 0
    t0 = time.time()
    for i in range(0, len(prompts), a.teacher_batch):
        chunk = prompts[i:i + a.teacher_batch]
        for j, (p, c) in enumerate(zip(chunk, eng.generate(chunk, gcfg))):
            out = list(c.full_ids[:g])
            cut = first_stop(out, stops)
            ended += cut < g
            good[i + j] = cut < g and parses(p, c.text, True)
            row = enc[p] + out[:cut] + [eos] * (g - cut)
            ids[i + j, :len(row)] = torch.tensor(row, dtype=torch.int32)
        done = min(i + a.teacher_batch, len(prompts))
        print(f"teacher: {done}/{len(prompts)} prompts, {time.time() - t0:.0f} s", flush=True)
    meta = {"from": str(src), "model_sha256": sha256(src / "model.safetensors"),
            "tokenizer_sha256": sha256(src / "tokenizer.json"), "gen_length": str(g),
            "block_length": str(a.block_length), "prompts": str(len(prompts)),
            "sample_seed": str(a.seed),
            "ended_by_eos": str(ended), "good": str(int(good.sum())),
            "excluded_eval_prompts": str(len(evals))}
    out = Path(a.teacher)
    tmp = out.with_suffix(".tmp")
    save_file({"ids": ids, "prompt_len": plen, "good": good}, str(tmp), meta)
    os.replace(tmp, out)
    print(f"teacher: {len(prompts)} completions, {ended} ended by EOS, {int(good.sum())} of them "
          f"parse -> {out}")


def safe_open_meta(path: str) -> dict:
    from safetensors import safe_open
    with safe_open(path, framework="pt") as f:
        return dict(f.metadata() or {})


def save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a kill mid-write leaves the previous checkpoint


def export_weights(net: LLaDA, ema: dict | None, out: Path) -> None:
    """bf16 model.safetensors of the EMA weights (if kept) else the raw ones."""
    src = ema if ema is not None else net.state_dict()
    sd = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in src.items()}
    tmp = out / "model.safetensors.tmp"
    save_file(sd, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out / "model.safetensors")


def prepare_run(a: argparse.Namespace, run: Path) -> tuple[dict, np.ndarray, np.ndarray,
                                                             np.ndarray, dict]:
    """Corpus (hash-checked), tokenizer (trained, or reloaded and checked on --resume), encoded
    streams, and the export folder's static files -> (cfg, train, units [N, 2], test, facts)."""
    t0 = time.time()
    train_texts, test_texts = load_corpus(Path(a.stdlib))
    arch = dict(ARCH, vocab_size=a.vocab)
    tok_path = run / "tokenizer.json"
    if a.resume:
        tok = Tokenizer.from_file(str(tok_path))
    else:
        tok = train_tokenizer(train_texts, a.vocab)
        tok.save(str(tok_path))
    cfg = model_config(tok, arch)
    (train, units), (test, _) = encode_files(tok, train_texts), encode_files(tok, test_texts)
    anchors = units[:, 0][units[:, 0] <= len(train) - a.seq]
    lengths = units[:, 1] - units[:, 0]
    counts = np.bincount(train, minlength=a.vocab)
    facts = {"unigram_token": int(counts.argmax()), "train_tokens": int(len(train)),
             "heldout_tokens": int(len(test)), "anchors": int(len(anchors)),
             "units": int(len(units)), "unit_tokens_median": int(np.median(lengths)),
             "units_ending_by": float((lengths < a.block_seq).mean()),
             "tokenizer_sha256": sha256(tok_path)}
    print(f"corpus: {len(train_texts)} train files, {len(train)} tokens, {len(anchors)} top-level "
          f"def/class lines; {len(test_texts)} held-out files, {len(test)} tokens; "
          f"tokenizer+encode {time.time() - t0:.0f}s", flush=True)
    ex = run / "export"
    ex.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json",):
        (ex / name).write_bytes((run / name).read_bytes())
    (ex / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": SPECIALS[0], "eos_token": SPECIALS[1], "mask_token": SPECIALS[5],
         "chat_template": CHAT_TEMPLATE, "model_max_length": arch["max_sequence_length"],
         "tokenizer_class": "PreTrainedTokenizerFast"}, indent=2) + "\n")
    (ex / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (ex / "prompts.txt").write_bytes((OUT / "prompts.txt").read_bytes())
    ids, mask = heldout_sample(test, a.sample_rows, a.sample_seq, a.seed + 1)
    save_file({"input_ids": ids, "mask": mask}, str(ex / "heldout_sample.safetensors"))
    return cfg, train, units, test, facts


def cmd_train(a: argparse.Namespace) -> None:
    """Train into --run (checkpoint.pt, train_log.json, export/ = a loadable model folder);
    `--resume RUN/checkpoint.pt` continues the saved run with its saved arguments."""
    ckpt = None
    if a.resume:
        ckpt = torch.load(a.resume, weights_only=False)
        keep = {k: getattr(a, k) for k in ("resume", "max_minutes", "ckpt_minutes", "threads",
                                           "stdlib")}
        keep["run"] = str(Path(a.resume).resolve().parent)  # the run folder may have moved
        if a.steps_override:
            keep["steps"] = a.steps_override
        stage = {"init": None, "teacher": None, "distill_rows": 0}  # runs saved before they existed
        a = argparse.Namespace(**{**stage, **ckpt["args"], **keep})
        if a.schedule == "wsd" and ckpt["step"] > int(a.steps * (1 - a.decay_share)):
            sys.exit("error: --steps can only change while the run is in its stable LR phase")
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    run = Path(a.run)
    run.mkdir(parents=True, exist_ok=True)
    cfg, train, units, test, facts = prepare_run(a, run)
    anchors = units[:, 0][units[:, 0] <= len(train) - a.seq]
    mask_id = cfg["mask_token_id"]
    bos, eos = (Tokenizer.from_file(str(run / "tokenizer.json")).token_to_id(t)
                for t in SPECIALS[:2])
    sample = load_file(str(run / "export" / "heldout_sample.safetensors"))
    ids, mask = sample["input_ids"], sample["mask"]

    net = LLaDA(cfg)
    if a.init:  # a second stage: start from an exported model (its EMA weights, bf16-rounded)
        init = Path(a.init)
        if sha256(init / "tokenizer.json") != facts["tokenizer_sha256"]:
            sys.exit(f"error: {init} has another tokenizer than the run folder {run}")
        net.load_state_dict({k: v.float() for k, v in
                             load_file(str(init / "model.safetensors")).items()})
    teacher = None
    if a.teacher:
        teacher = load_file(a.teacher)
        tmeta = safe_open_meta(a.teacher)
        if tmeta.get("tokenizer_sha256") != facts["tokenizer_sha256"]:
            sys.exit(f"error: {a.teacher} was generated with another tokenizer than the run's")
        facts["teacher"] = tmeta
    decay = [p for p in net.parameters() if p.dim() == 2]
    other = [p for p in net.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": other, "weight_decay": 0.0}], lr=a.lr, betas=(0.9, 0.95))
    ema = ({k: v.detach().clone() for k, v in net.state_dict().items()} if a.ema > 0 else None)
    rng = np.random.default_rng(a.seed)
    gen = torch.Generator().manual_seed(a.seed + 2)
    log = {"loss": [], "eval": [], "args": vars(a), "sessions": [], **facts}
    step0, run_loss = 0, 0.0
    if ckpt is not None:
        if ckpt["facts"]["tokenizer_sha256"] != facts["tokenizer_sha256"] or \
                ckpt["facts"]["train_tokens"] != facts["train_tokens"]:
            sys.exit("error: the run folder's tokenizer or corpus differs from the checkpoint's")
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        ema = ckpt["ema"]
        rng.bit_generator.state = ckpt["np_rng"]
        gen.set_state(ckpt["gen"])
        torch.set_rng_state(ckpt["torch_rng"])
        log, step0, run_loss = ckpt["log"], ckpt["step"], ckpt["run_loss"]
        log["args"] = vars(a)
        print(f"resumed {a.resume} at step {step0}", flush=True)
    if a.init and "parents" not in log:  # the earlier stages' logs, for the card and its curve
        parent = Path(a.init).parent / "train_log.json"
        if not parent.is_file():
            sys.exit(f"error: --init {a.init} must be a run's export folder (no {parent})")
        plog = json.loads(parent.read_text())
        log["parents"] = plog.pop("parents", []) + [plog]
    log["sessions"].append({"from_step": step0, "threads": torch.get_num_threads()})

    stop = {"signal": None}
    signal.signal(signal.SIGTERM, lambda sig, frame: stop.update(signal=sig))

    def checkpoint(step: int) -> None:
        log["train_seconds"] = log.get("train_seconds", 0.0) + time.time() - t_mark[0]
        t_mark[0] = time.time()
        log["threads"], log["steps_done"] = torch.get_num_threads(), step
        save_checkpoint(run / "checkpoint.pt", {
            "step": step, "args": vars(a), "facts": facts, "model": net.state_dict(),
            "opt": opt.state_dict(), "ema": ema, "np_rng": rng.bit_generator.state,
            "gen": gen.get_state(), "torch_rng": torch.get_rng_state(), "log": log,
            "run_loss": run_loss})
        export_weights(net, ema, run / "export")
        (run / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
        print(f"checkpoint at step {step} -> {run / 'checkpoint.pt'}", flush=True)

    long_from = int(a.steps * (1 - a.long_share))
    t_start, t_mark, last_ckpt = time.time(), [time.time()], time.time()
    step = step0
    while step < a.steps:
        seq, batch = (a.seq, a.batch) if step < long_from else (2 * a.seq, a.batch // 2)
        x = windows(train, anchors, rng, batch, seq, a.anchor_share, bos)
        xb = None
        if a.block_rows and a.block_source == "units":
            xb = unit_rows(train, units, rng, a.block_rows, a.block_seq, bos, eos)
        elif a.block_rows:
            xb = windows(train, anchors, rng, a.block_rows, a.block_seq, a.anchor_share, bos)
        xd = cd = None
        if teacher is not None and a.distill_rows:
            xd, cd = distill_rows(teacher, rng, a.distill_rows, a.gen_length, a.block)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = diffusion_loss(net, x, mask_id, gen, a.t_sampling == "stratified")
            if xb is not None:
                loss = loss + block_loss(net, xb, mask_id, gen, a.block)
            if xd is not None:
                loss = loss + block_loss(net, xd, mask_id, gen, a.block, c=cd)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if ema is not None:
            d = min(a.ema, step / (step + 10))
            with torch.no_grad():
                for k, v in net.state_dict().items():
                    ema[k].lerp_(v, 1 - d)
        run_loss += loss.item()
        if step % 10 == 0:
            log["loss"].append([step, run_loss / 10])
            run_loss = 0.0
        if step % a.eval_every == 0 or step == a.steps:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                acc = masked_accuracy(net, ids[:32], mask[:32], mask_id)
            el = log.get("train_seconds", 0.0) + time.time() - t_mark[0]
            log["eval"].append([step, acc, el])
            last = log["loss"][-1][1] if log["loss"] else float("nan")
            print(f"step {step}/{a.steps} loss {last:.3f} heldout-acc {acc:.3f} "
                  f"(raw weights) lr {lr_at(step - 1, a):.2e} {el / 60:.1f} min", flush=True)
        out_of_time = time.time() - t_start > a.max_minutes * 60
        if (stop["signal"] or out_of_time or step == a.steps
                or time.time() - last_ckpt > a.ckpt_minutes * 60):
            checkpoint(step)
            last_ckpt = time.time()
            if stop["signal"] or out_of_time:
                print(f"stopping at step {step} ({'SIGTERM' if stop['signal'] else 'time'}); "
                      f"resume with --resume {run / 'checkpoint.pt'}", flush=True)
                return
    print(f"done: {step} steps -> {run / 'export'}", flush=True)


def cmd_export(a: argparse.Namespace) -> None:
    """Copy a run's export folder (model, tokenizer, config, held-out sample, prompts) and its
    log to --out (fastdiff/assets/demo by default) for `card`."""
    run, out = Path(a.run), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted((run / "export").iterdir()):
        if not f.name.endswith(".tmp"):
            (out / f.name).write_bytes(f.read_bytes())
    Path(a.log).write_text((run / "train_log.json").read_text())
    print(f"exported {run / 'export'} -> {out}, log -> {a.log}")


def load_trained(out: Path) -> tuple[LLaDA, dict, Tokenizer]:
    """The exported checkpoint as an fp32 training-side model (weights as stored, bf16-rounded)."""
    cfg = json.loads((out / "config.json").read_text())
    net = LLaDA(cfg)
    sd = load_file(str(out / "model.safetensors"))
    net.load_state_dict({k: v.float() for k, v in sd.items()})
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
    loss, evals, off = [], [], 0  # later stages' steps continue the earlier ones' on the axis
    for i, st in enumerate(stages(log)):
        loss += [[x + off, y] for x, y in st["loss"]]
        evals += [[x + off, *y] for x, *y in st["eval"]]
        if i:
            for ax in (l, r):
                ax.axvline(off, ls=":", c="k", lw=0.8)
            r.text(off, 0.02, f" {stage_name(i)}", transform=r.get_xaxis_transform(),
                   fontsize=7, rotation=90)
        off += run_steps(st)
    log = dict(log, loss=loss, eval=evals)
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
    stops = stop_ids(cfg, tok)
    prompts = read_prompts(out)
    rows, ok = [], 0
    t0 = time.time()
    for p in prompts:
        gen = generate(net, tok.encode(p).ids, cfg["mask_token_id"], a.gen_length,
                       a.block_length, a.gen_steps)
        cut = first_stop(gen, stops)
        text = tok.decode(gen[:cut])
        good = parses(p, text, cut < len(gen))
        ok += good
        rows.append((p, text, good, gen))
    gen_s = time.time() - t0
    engine = engine_check(out, prompts, [r[3] for r in rows], a)
    from eval_demo import decode_figures, figure_key  # the same tool measures any folder
    figs = decode_figures(out, a.gen_length, a.block_length)
    for name, f in figs.items():  # the test reads these back
        key = figure_key(name)
        meta[f"{key}_tokens_per_forward"] = f"{f['tokens_per_forward']:.4f}"
        meta[f"{key}_parse"] = str(f["parse"])
    save_file({"input_ids": ids, "mask": mask}, str(out / "heldout_sample.safetensors"), meta)
    plot_curve(log, uni_acc, out / "training_curve.png")
    write_card(out, cfg, log, acc, uni_acc, uni, tok, ok, len(prompts), rows, gen_s, engine,
               figs, a)
    print(f"held-out acc {acc:.4f}, unigram {uni_acc:.4f} ({acc / uni_acc:.2f}x), "
          f"ast.parse {ok}/{len(prompts)}, generation {gen_s:.0f}s")


def figures_text(figs: dict) -> str:
    """The engine's parallel-decoding table (tools/eval_demo.py's settings)."""
    rows = "\n".join(f"| {name} | {f['tokens_per_forward']:.2f} | {f['parse']}/{f['n']} | "
                     f"{f['seconds']:.1f} |" for name, f in figs.items())
    return f"""Parallel decoding through the engine (tools/eval_demo.py: `fastdiff.Engine`, CPU,
float32, all 20 prompts as one batch, greedy, gen_length 64, block_length 32; tokens per forward =
64 x 20 / the prompts' summed NFE, so positions denoised after an EOS count too; parse as above;
"1/step" is the fixed schedule with steps = 64, "t0.9" a confidence threshold of 0.9, "dual" the
dual KV cache; `make demo` uses t0.9 dual). `tests/test_demo_model.py` reproduces the 1/step and
t0.9 dual rows within 0.05 tokens per forward and 1 parse, and checks issue 18's bar (t0.9 dual:
>= 2.0 tokens per forward, at least as many parsing completions as 1/step and at least 8).

| setting | tokens per forward | parse | seconds (batch of 20) |
|---|---|---|---|
{rows}"""


def run_steps(log: dict) -> int:
    return log.get("steps_done") or (log["loss"][-1][0] if log["loss"] else log["args"]["steps"])


def sessions_text(log: dict) -> str:
    """'steps 0-7,260 on 1 thread, 7,261-22,750 on 2' from the run's session list."""
    parts, ses = [], log.get("sessions", [])
    for i, x in enumerate(ses):
        end = ses[i + 1]["from_step"] if i + 1 < len(ses) else run_steps(log)
        if parts and parts[-1][2] == x["threads"]:
            parts[-1][1] = end
        else:
            parts.append([x["from_step"], end, x["threads"]])
    return ", ".join(f"steps {a + 1:,}-{b:,} on {t} thread{'s' * (t > 1)}" for a, b, t in parts)


def stages(log: dict) -> list[dict]:
    """The logs of a model's training stages, first to last (a stage started with --init keeps
    its predecessors' logs under 'parents')."""
    return log.get("parents", []) + [log]


def stage_name(i: int) -> str:
    return "stage 1" if i == 0 else "stage 2" + (f", round {i}" if i > 1 else "")


def recipe_text(log: dict) -> str:
    """The card's recipe: stage 1 (pretraining), then the self-distillation rounds, if any."""
    chain = stages(log)
    if len(chain) == 1:
        return stage_text(log) + reproduce_text(chain)
    text = ("**Stage 1, pretraining.** " + stage_text(chain[0])
            + "\n\n**Stage 2, self-distillation for parallel decoding.** "
            + distill_text(chain[1]))
    for i, st in enumerate(chain[2:], start=2):
        t, a = st["teacher"], st["args"]
        text += f"""
Round {i} repeats it from round {i - 1}'s model: that model decodes {int(t['prompts']):,} prompts
(another random sample of the headers, seed {t.get('sample_seed', '?')}) the same way, {int(t['good']):,} end
and parse ({int(t['ended_by_eos']):,} ended with EOS), and training continues from round {i - 1}'s
exported weights for {run_steps(st):,} steps with {a['distill_rows']} teacher rows per step (other settings as in
round 1: peak LR {a['lr']}, {a['warmup']} warmup steps, decay over the last {a['decay_share']:.0%}, EMA {a['ema']})."""
    return text + reproduce_text(chain)


def distill_text(log: dict) -> str:
    ta, t = log["args"], log["teacher"]
    n, good = int(t["prompts"]), int(t["good"])
    steps = run_steps(log)
    return f"""Stage 1's model decodes {n:,} prompts taken
from the training files (the one-line headers of their top-level `def`/`class` statements, e.g.
`def getargvalues(frame):`; the {t['excluded_eval_prompts']} evaluation prompts of `prompts.txt` excluded) at one token
per step (LLaDA's fixed schedule, steps = gen_length = {t['gen_length']}, block {t['block_length']}, greedy,
no cache, through `fastdiff.Engine`); a completion is kept when it ends with EOS within the
{t['gen_length']} tokens and prompt + completion passes `ast.parse`: {good:,} of {n:,}
({int(t['ended_by_eos']):,} ended with EOS). Each kept completion is padded with EOS to
{t['gen_length']} tokens. Stage 2 starts from stage 1's exported (EMA) weights and trains {steps:,}
steps on stage 1's objectives (batch {ta['batch']} x {ta['seq']} windows, {ta['block_rows']} block rows) plus
{ta['distill_rows']} rows per step of kept completions under the block objective placed exactly as
the decoder sees them: the window is prompt + {t['gen_length']} tokens, the clean prefix ends at
a block boundary of the generation (the prompt, or the prompt and the first block), the current
block is masked with probability t ~ U(1e-3, 1], everything after it masked; CE / t on the
block's masked tokens. AdamW as in stage 1 with a fresh state, peak LR {ta['lr']}, {ta['warmup']}
warmup steps, constant, then linear to 10% over the last {ta['decay_share']:.0%}; EMA decay
{ta['ema']}.
Why: a confidence threshold commits a token only where the model is sure, and a model this small
is rarely sure of anything but the next token: in the bundled run, after stage 1, threshold 0.9
with the dual cache committed 1.14 tokens per forward (9/20 completions parse at one token per step, 10/20 at t0.9
dual; held-out accuracy 0.3888). Training the model on its own decodes (dParallel's certainty-forcing
distillation, Chen et al. 2025, arXiv:2509.26488, distills LLaDA-8B on its own trajectories and
cuts GSM8K decoding from 256 to 30 steps) makes it confident, in every block fill state, of what
it would have produced one token at a time. The syntax filter (rejection sampling, as in STaR,
Zelikman et al. 2022) is what keeps this from collapsing. Two trials from a stage-1 snapshot before its LR decay (step
16,394: 1.27 tokens per forward at t0.9 dual, 16/20 parse at one token per step; 1,024 teacher
prompts, 500 steps at half batch): distilling all completions, most of which never end
(docstrings like `Return a list of the list of the list ...`), made the model repeat itself
more (2/20 parse at one token per step, 1.13 tokens per forward at t0.9 dual); distilling only
the 241 that end and parse gave 2.15 tokens per forward and 19/20 parse."""


def reproduce_text(chain: list[dict]) -> str:
    s1 = chain[0]
    switched_text = ("; bf16 matmul results depend on the thread count, so rerunning stage 1 "
                     "bit for bit needs the same thread switch at the same step, and a rerun at "
                     "one thread count gives an equivalent, not an identical, model")
    secs = sum(st["train_seconds"] for st in chain)
    where = "; ".join(f"{stage_name(i)} {sessions_text(st)}" for i, st in enumerate(chain))
    switched = len({x["threads"] for x in s1.get("sessions", [])}) > 1
    text = f"""
Trained on an AMD EPYC (AVX-512 BF16) 2-core VM shared with other jobs
(torch.set_num_threads): {where}; {secs / 60:.0f} minutes of wall time in all. Reproduce
(deterministic given seed and thread count; a run resumed from its checkpoint gives bitwise the
weights of an uninterrupted one{switched_text if switched else ""}):

```
python tools/train_demo.py train --run RUN1 --steps {s1['args']['steps']} --threads {s1['threads']}   # defaults otherwise"""
    for i, st in enumerate(chain[1:], start=1):
        t, a = st["teacher"], st["args"]
        sample = (f" --teacher-prompts {t['prompts']} --seed {t.get('sample_seed', 0)}"
                  if int(t["prompts"]) else "")
        text += f"""
python tools/train_demo.py teacher --teacher-from RUN{i}/export --teacher RUN{i + 1}/teacher.safetensors{sample} --threads 2
python tools/train_demo.py train --run RUN{i + 1} --init RUN{i}/export --teacher RUN{i + 1}/teacher.safetensors \\
    --distill-rows {a['distill_rows']} --steps {a['steps']} --lr {a['lr']} --warmup {a['warmup']} --decay-share {a['decay_share']} --ema {a['ema']} --batch {a['batch']} --block-rows {a['block_rows']} --threads {st['threads']}"""
    text += f"""
python tools/train_demo.py export --run RUN{len(chain)}   # -> fastdiff/assets/demo, log
python tools/train_demo.py card
```"""
    return text


def stage_text(log: dict) -> str:
    """One training stage's objectives and optimizer from its log's saved arguments."""
    ta = log["args"]
    steps = run_steps(log)
    stopped = (f" (time guard stopped it at step {log['stopped_early_at']})"
               if "stopped_early_at" in log else "")
    long_from = int(ta["steps"] * (1 - ta["long_share"]))
    strat = (" (stratified over the batch: U_i = (U + i/B) mod 1, so each row's t is uniform "
             "and the batch covers (0, 1] evenly, which lowers the variance of the 1/t weights)"
             if ta.get("t_sampling") == "stratified" else ", independently per row")
    block_rows = ta.get("block_rows", 0)
    tokens = steps * (ta["batch"] * ta["seq"] + block_rows * ta.get("block_seq", 0))
    text = f"""LLaDA's pretraining objective: per sequence t = (1 - 1e-3) U + 1e-3,
U ~ U[0, 1){strat}; each token is replaced by MASK with probability t; loss = sum over
masked positions of CE / t, divided by the number of tokens. Random windows of the
concatenated training stream (files joined as BOS + text + EOS, so the model learns to emit
EOS), batch {ta['batch']} x {ta['seq']} tokens"""
    if ta.get("long_share", 0) > 0:
        text += (f" for steps 1-{long_from}, then {ta['batch'] // 2} x {2 * ta['seq']} up to step "
                 f"{ta['steps']}{stopped}")
    text += "."
    if ta.get("anchor_share", 0) > 0:
        text += f"""
Anchored windows: each row is, with probability {ta['anchor_share']}, BOS followed by the stream
from the start of a top-level `def `/`class ` line ({log['anchors']:,} such lines) instead of a
random window: the demo prompts are exactly that (BOS + a top-level `def`/`class` line), which a
random window almost never shows at position 0."""
    if block_rows:
        b, lb = ta["block"], ta["block_seq"]
        rows = ("random windows" if ta.get("block_source", "units") == "windows" else
                f"""BOS + one top-level def/class statement of the training files (from its
keyword to the end of its last line, {log['units']:,} of them, median {log['unit_tokens_median']}
tokens), cut at {lb} tokens or, when shorter, ended by EOS and padded with EOS to {lb} tokens
(LLaDA's SFT pads answers with EOS the same way): the model learns to finish a function with EOS
and to fill the rest of the window with it""")
        text += f"""
A second objective on {block_rows} extra rows of {lb} tokens per step: {rows}. Its mask is
shaped like the semi-autoregressive decode the engine runs: a clean prefix of
c ~ U{{1..{lb - b}}} tokens, then a block of {b} tokens masked with probability t ~ U(1e-3, 1], then every later
position masked; CE / t on the block's masked tokens divided by rows x {b}, added to the first
loss. Why: the threshold decoder commits every masked token of the current block whose
confidence exceeds 0.9, with the prefix clean and the rest of the window masked, while LLaDA's
objective trains on windows masked uniformly at random, with context on both sides; training on
the decode's own mask pattern at every block fill level (t small: the block nearly done; t near
1: a fresh block) makes the model sharp where the decoder asks."""
    sched = ("cosine decay to 10%" if ta.get("schedule", "cosine") == "cosine" else
             f"constant, then a linear decay to 10% over the last {ta['decay_share']:.0%} of "
             f"{ta['steps']} steps\n(warmup-stable-decay: a run extends while in the stable "
             f"phase)")
    ema = (f"; the exported weights are an EMA of the weights (decay {ta['ema']})"
           if ta.get("ema", 0) > 0 else "")
    text += f"""
AdamW (betas 0.9, 0.95; weight decay 0.1 on matrices), peak LR {ta['lr']}, {ta['warmup']} warmup
steps, {sched}, gradient clip 1.0, bf16 autocast on the CPU (weights and optimizer in
fp32){ema}, seed {ta['seed']}; {steps:,} steps, {tokens:,} training tokens."""
    return text


def write_card(out: Path, cfg: dict, log: dict, acc: float, uni_acc: float, uni: int,
               tok: Tokenizer, ok: int, n: int, rows: list, gen_s: float, engine: str,
               figs: dict, a: argparse.Namespace) -> None:
    ta = log["args"]
    minutes = sum(st["train_seconds"] for st in stages(log)) / 60
    t9 = figs["t0.9 dual"]["tokens_per_forward"]
    stops = stop_ids(cfg, tok)
    mean_len = sum(first_stop(r[3], stops) for r in rows) / max(1, len(rows))
    short_text = (": stage 2 taught it to finish early (the bundled run's stage-1 model averaged "
                  "52.4 tokens before EOS and its 1/step completions parsed for 9/20)."
                  if len(stages(log)) > 1 else ".")
    n_params = sum(v.numel() for v in load_file(str(out / "model.safetensors")).values())
    size_mb = (out / "model.safetensors").stat().st_size / 1e6
    rows_n, seq_n = load_file(str(out / "heldout_sample.safetensors"))["input_ids"].shape
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
| RoPE theta / max_sequence_length | {cfg['rope_theta']} / {cfg['max_sequence_length']} (trained on windows of at most {ta['seq'] * (2 if ta.get('long_share', 0) > 0 else 1)} tokens) |

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
{recipe_text(log)}

![training curve](training_curve.png)

The curve's accuracy points use the first 32 rows of the committed sample under bf16 autocast
and the training (not EMA) weights; the table below uses all rows in float32 and the exported
weights.

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

{figures_text(figs)}

## Limitations
A few million parameters trained for {minutes:.0f} minutes on a 2-core CPU: it has learned Python's
surface (indentation, names, keywords, `self`, docstrings) but not programs: a completion is
typically a one-line docstring of stock phrases, sometimes with a trivial body (`return path`),
and longer generations repeat themselves (`a list of the list of the ...`). Its completions
average {mean_len:.1f} tokens before EOS (the 20 prompts, one token per step){short_text}
Most of the tokens per forward at threshold 0.9 are the EOS padding of the rest of the window,
committed in one or a few forwards per block; the text itself still comes at about one token per
forward. That is how LLaDA-style models use a threshold too (the answer's EOS padding is the
most confident part of the canvas), but do not read {t9:.1f} tokens per forward as {t9:.1f} tokens of
code per forward. `ast.parse` checks syntax only (it accepts, e.g.,
`return` at class level, a compile-time error). Use it to see fastdiff run, not to judge
diffusion decoding quality.

<details><summary>All {n} completions</summary>

{examples}
</details>
"""
    (out / "MODEL_CARD.md").write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["pin", "train", "teacher", "export", "card"])
    ap.add_argument("--stdlib", default=sysconfig.get_paths()["stdlib"])
    ap.add_argument("--out", default=str(OUT), help="model folder for export/card")
    ap.add_argument("--run", default="/work/demo_train/run",
                    help="train: checkpoint, log and export/ folder (keep it out of git)")
    ap.add_argument("--resume", default=None, help="train: continue RUN/checkpoint.pt")
    ap.add_argument("--steps-override", type=int, default=None,
                    help="with --resume: a new total step count (stable LR phase only)")
    ap.add_argument("--log", default=str(CORPUS / "train_log.json"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--heldout-share", type=float, default=0.04)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=30000)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--long-share", type=float, default=0.0, help="final share at 2*seq")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--schedule", choices=["cosine", "wsd"], default="wsd")
    ap.add_argument("--decay-share", type=float, default=0.2, help="wsd: final linear decay")
    ap.add_argument("--ema", type=float, default=0.999, help="EMA of the weights (0: off)")
    ap.add_argument("--anchor-share", type=float, default=0.25,
                    help="rows that start with BOS + a top-level def/class line")
    ap.add_argument("--block-rows", type=int, default=16,
                    help="extra rows per step of the block (semi-AR decode) objective")
    ap.add_argument("--block-seq", type=int, default=80)
    ap.add_argument("--block-source", choices=["units", "windows"], default="units",
                    help="block rows: BOS + a top-level def/class + EOS padding, or windows")
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--t-sampling", choices=["iid", "stratified"], default="iid")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--sample-rows", type=int, default=64)
    ap.add_argument("--sample-seq", type=int, default=256)
    ap.add_argument("--max-minutes", type=float, default=1e9, help="stop (and checkpoint) after")
    ap.add_argument("--ckpt-minutes", type=float, default=5.0)
    ap.add_argument("--init", default=None,
                    help="train: start from this exported model folder (a second stage)")
    ap.add_argument("--teacher", default=None,
                    help="teacher: output file; train: self-distillation rows from it")
    ap.add_argument("--teacher-from", default=None, help="teacher: the model folder that decodes")
    ap.add_argument("--teacher-prompts", type=int, default=0, help="teacher: at most N (0: all)")
    ap.add_argument("--teacher-batch", type=int, default=64)
    ap.add_argument("--distill-rows", type=int, default=0,
                    help="train: teacher rows per step (block objective at the decode's blocks)")
    ap.add_argument("--gen-length", type=int, default=64)
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--gen-steps", type=int, default=64)
    a = ap.parse_args()
    if a.command == "pin":
        pin(Path(a.stdlib), a.heldout_share, a.seed)
    elif a.command == "train":
        cmd_train(a)
    elif a.command == "teacher":
        cmd_teacher(a)
    elif a.command == "export":
        cmd_export(a)
    else:
        cmd_card(a)


if __name__ == "__main__":
    main()
