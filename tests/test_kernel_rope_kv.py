"""rope_kv kernel vs reference.rope_kv (interpreter on CPU): q and the stored k within a rounding
step of the dtype, v copied bit-exact, every slot not addressed (slot -1, other layers, other
rows) left untouched; with and without QK-norm (Qwen3 / SDAR: per-head RMSNorm before RoPE)."""
from __future__ import annotations

import pytest
import torch

from fastdiff.kernels import rope_kv as rk
from fastdiff.ops import reference as ref
from kernel_checks import assert_close, assert_equal, count_launches, kernels_must_run

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::RuntimeWarning")

TOL = {torch.float32: (1e-6, 1e-6), torch.float16: (1e-3, 1e-3), torch.bfloat16: (8e-3, 8e-3)}
THETA = 10000.0


@pytest.fixture(autouse=True)
def _kernel_ran(request, monkeypatch):
    yield from kernels_must_run(request, monkeypatch, rk, "_rope_kv_kernel")


def _table(T: int, D: int, device="cpu"):
    """cos/sin [T, D/2]: reference.rope_cos_sin of positions 0..T-1, first (unduplicated) half."""
    cos, sin = ref.rope_cos_sin(torch.arange(T, device=device)[None], D, THETA)
    return cos[0, :, :D // 2].contiguous(), sin[0, :, :D // 2].contiguous()


def _problem(B, S, H, Hkv, D, T, T_kv, dtype, seed, *, pad=0):
    """qkv (row-strided when pad > 0), pos, distinct slots per row with some -1, and a KV store
    [layers=2, 2, B, Hkv, T_kv, D] whose layer 1 is the destination."""
    g = torch.Generator().manual_seed(seed)
    W = (H + 2 * Hkv) * D
    qkv = torch.randn(B, S, W + pad, generator=g).to(dtype)[..., :W]
    pos = torch.randint(0, T, (B, S), generator=g)
    slot = torch.stack([torch.randperm(T_kv, generator=g)[:S] for _ in range(B)]).int()
    slot[torch.rand(B, S, generator=g) < 0.3] = -1
    store = torch.randn(2, 2, B, Hkv, T_kv, D, generator=g).to(dtype)
    return qkv, pos, slot, store


def _norms(D, dtype, seed, device="cpu"):
    """q_norm, k_norm [D]: distinct positive weights per lane (SDAR's are near 1, some far)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(2, D, generator=g) * 1.5 + 0.25
    return w[0].to(dtype).to(device), w[1].to(dtype).to(device)


def _run_and_check(qkv, pos, slot, store, H, Hkv, D, T, what, norm=None, eps=1e-6):
    cos, sin = _table(T, D, qkv.device)
    kw = dict(n_heads=H, n_kv_heads=Hkv, head_dim=D)
    if norm is not None:
        kw.update(q_norm=norm[0], k_norm=norm[1], eps=eps)
    before = store.clone()
    eq, ek, ev = ref.rope_kv(qkv, pos, slot, cos, sin, before[1, 0], before[1, 1], **kw)
    q = rk.rope_kv(qkv, pos, slot, cos, sin, store[1, 0], store[1, 1], **kw)
    atol, rtol = TOL[qkv.dtype]
    assert q.shape == eq.shape and q.dtype == qkv.dtype and q.is_contiguous()
    assert_close(q, eq, atol, rtol, f"{what}: q")
    assert_close(store[1, 0], ek, atol, rtol, f"{what}: k_dest")
    assert_equal(store[1, 1], ev, f"{what}: v_dest")
    assert_equal(store[0], before[0], f"{what}: other layer")
    unwritten = torch.ones(store.shape[2], store.shape[4], dtype=torch.bool,
                           device=store.device)  # [B, T_kv]
    for b in range(slot.shape[0]):
        unwritten[b, slot[b][slot[b] >= 0].long()] = False
    idx = unwritten[:, None, :].expand(-1, Hkv, -1)  # slot -1 rows and unaddressed slots
    assert_equal(store[1, 0][idx], before[1, 0][idx], f"{what}: k slots not addressed")
    assert_equal(store[1, 1][idx], before[1, 1][idx], f"{what}: v slots not addressed")
    return q, eq


CASES = [  # B, S, H, Hkv, D, T, T_kv
    (1, 1, 2, 2, 16, 8, 4),      # S = 1, MHA, small D
    (2, 5, 4, 2, 32, 40, 9),     # GQA, odd S
    (3, 3, 4, 1, 64, 64, 3),     # GQA 4:1, every slot of a short store addressed
    (1, 2, 2, 1, 128, 17, 6),    # LLaDA's head dim
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B,S,H,Hkv,D,T,T_kv", CASES)
def test_matches_reference(monkeypatch, dtype, B, S, H, Hkv, D, T, T_kv):
    counter = count_launches(monkeypatch, rk, "_rope_kv_kernel")
    qkv, pos, slot, store = _problem(B, S, H, Hkv, D, T, T_kv, dtype, seed=B * 100 + S * 10 + D,
                                     pad=D // 2 if B > 1 else 0)
    _run_and_check(qkv, pos, slot, store, H, Hkv, D, T, f"{dtype} {B, S, H, Hkv, D}")
    assert counter.launches == 1  # q, k and v in one launch


NORM_CASES = [  # B, S, H, Hkv, D, T, T_kv
    (1, 1, 1, 1, 16, 8, 4),      # one head each
    (2, 5, 4, 1, 32, 40, 9),     # GQA 4:1 (SDAR's ratio), odd S
    (2, 3, 5, 5, 64, 30, 7),     # odd head count, MHA
    (3, 2, 7, 1, 128, 17, 6),    # 7:1 at SDAR's head dim: a head tile straddles q | k | v
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B,S,H,Hkv,D,T,T_kv", NORM_CASES)
def test_qk_norm_matches_reference(monkeypatch, dtype, B, S, H, Hkv, D, T, T_kv):
    """QK-norm before RoPE in the same launch: q and the stored k against the fp32 reference
    (norm and RoPE in fp32, one rounding), v untouched by the norm; strided rows, slot -1."""
    counter = count_launches(monkeypatch, rk, "_rope_kv_kernel")
    qkv, pos, slot, store = _problem(B, S, H, Hkv, D, T, T_kv, torch.float32, seed=B + S + D)
    W, pad = qkv.shape[-1], D // 2 if B > 1 else 0
    buf = torch.zeros(B, S, W + pad, dtype=dtype)  # row-strided qkv when pad > 0
    buf[..., :W] = qkv * torch.linspace(0.05, 20.0, W)  # head RMS 0.05 .. 20: the norm matters
    qkv, store = buf[..., :W], store.to(dtype)
    assert qkv.is_contiguous() == (pad == 0)
    norm = _norms(D, dtype, seed=D)
    q, eq = _run_and_check(qkv, pos, slot, store, H, Hkv, D, T,
                           f"qk-norm {dtype} {B, S, H, Hkv, D}", norm=norm, eps=1e-5)
    assert counter.launches == 1  # the norm adds no launch
    # one rounding at the end, as the reference: a rounding of the normed value before RoPE
    # would stay within the tolerance but change ~1/3 of the fp16/bf16 values
    if dtype != torch.float32:
        assert (q != eq).float().mean() <= 0.02, f"{int((q != eq).sum())} of {q.numel()} differ"


def test_qk_norm_is_applied_and_default_unchanged():
    """The norm changes q and k (the test can fail); without weights the result is bit-equal to
    the plain RoPE path, and unit weights on unit-RMS heads change nothing beyond rounding."""
    B, S, H, Hkv, D, T = 2, 3, 4, 2, 32, 12
    qkv, pos, slot, store = _problem(B, S, H, Hkv, D, T, 5, torch.float32, seed=3)
    qkv = qkv * 4.0
    cos, sin = _table(T, D)
    kw = dict(n_heads=H, n_kv_heads=Hkv, head_dim=D)
    plain = store.clone()
    q0 = rk.rope_kv(qkv, pos, slot, cos, sin, plain[1, 0], plain[1, 1], **kw)
    eq, _, _ = ref.rope_kv(qkv, pos, slot, cos, sin, store[1, 0], store[1, 1], **kw)
    assert_equal(q0, eq, "no norm: q equals the plain reference")
    normed = store.clone()
    qn, kn = _norms(D, torch.float32, seed=1)
    q1 = rk.rope_kv(qkv, pos, slot, cos, sin, normed[1, 0], normed[1, 1], q_norm=qn, k_norm=kn,
                    **kw)
    assert (q1 - q0).abs().max() > 1.0  # RMS 4 -> 1 and the weights: far apart
    assert (normed[1, 0] - plain[1, 0]).abs().max() > 1.0
    assert_equal(normed[1, 1], plain[1, 1], "v is not normalized")
    # unit RMS heads, unit weights: norm is the identity up to rstd's rounding
    unit = qkv.view(B, S, H + 2 * Hkv, D)
    unit = unit / unit.pow(2).mean(-1, keepdim=True).sqrt()
    ones = torch.ones(D)
    q2 = rk.rope_kv(unit.reshape(B, S, -1), pos, slot, cos, sin, normed[1, 0], normed[1, 1],
                    q_norm=ones, k_norm=ones, eps=0.0, **kw)
    q3 = rk.rope_kv(unit.reshape(B, S, -1), pos, slot, cos, sin, plain[1, 0], plain[1, 1], **kw)
    assert_close(q2, q3, 1e-6, 1e-6, "unit weights on unit-RMS heads")


def test_head_tiles_straddle_q_k_v(monkeypatch):
    """D = 128: 16 heads per program over 12 q + 4 k + 4 v heads: tile 0 holds q and k heads,
    tile 1 the v heads and 12 masked ones."""
    counter = count_launches(monkeypatch, rk, "_rope_kv_kernel")
    H, Hkv, D = 12, 4, 128
    assert rk.pick_config(D, H + 2 * Hkv)["BLOCK_H"] == 16
    qkv, pos, slot, store = _problem(1, 3, H, Hkv, D, 30, 5, torch.float32, seed=5)
    slot[0] = torch.tensor([4, -1, 0], dtype=torch.int32)
    _run_and_check(qkv, pos, slot, store, H, Hkv, D, 30, "straddling tiles")
    assert counter.launches == 1


def test_all_slots_negative_writes_nothing():
    qkv, pos, slot, store = _problem(2, 3, 2, 1, 16, 10, 4, torch.float16, seed=9)
    slot.fill_(-1)
    before = store.clone()
    cos, sin = _table(10, 16)
    q = rk.rope_kv(qkv, pos, slot, cos, sin, store[1, 0], store[1, 1], n_heads=2, n_kv_heads=1,
                   head_dim=16)
    assert_equal(store, before, "store with every slot -1")
    eq = ref.apply_rope(qkv[..., :32].reshape(2, 3, 2, 16), *(
        ref.rope_cos_sin(pos, 16, THETA)))
    assert_close(q, eq, *TOL[torch.float16], "q against rope_cos_sin + apply_rope")


def test_launcher_errors():
    qkv, pos, slot, store = _problem(1, 2, 2, 1, 16, 8, 4, torch.float32, seed=0)
    cos, sin = _table(8, 16)
    kw = dict(n_heads=2, n_kv_heads=1, head_dim=16)
    k, v = store[1, 0], store[1, 1]
    with pytest.raises(ValueError, match="qkv must be"):
        rk.rope_kv(qkv[..., :-16], pos, slot, cos, sin, k, v, **kw)
    with pytest.raises(ValueError, match="multiple"):
        rk.rope_kv(qkv, pos, slot, cos, sin, k, v, n_heads=3, n_kv_heads=2, head_dim=16)
    with pytest.raises(ValueError, match="even"):
        rk.rope_kv(qkv, pos, slot, cos, sin, k, v, n_heads=2, n_kv_heads=1, head_dim=15)
    with pytest.raises(ValueError, match="pos must be one of"):
        rk.rope_kv(qkv, pos.float(), slot, cos, sin, k, v, **kw)
    with pytest.raises(ValueError, match="slot must be"):
        rk.rope_kv(qkv, pos, slot[:, :1], cos, sin, k, v, **kw)
    with pytest.raises(ValueError, match="cos must be"):
        rk.rope_kv(qkv, pos, slot, cos[:, :4], sin, k, v, **kw)
    with pytest.raises(ValueError, match="sin must be one of"):
        rk.rope_kv(qkv, pos, slot, cos, sin.double(), k, v, **kw)
    with pytest.raises(ValueError, match="v_dest must be one of"):
        rk.rope_kv(qkv, pos, slot, cos, sin, k, v.half(), **kw)
    with pytest.raises(ValueError, match="k_dest needs a contiguous"):
        rk.rope_kv(qkv, pos, slot, cos, sin, torch.zeros(1, 1, 16, 4).transpose(2, 3), v, **kw)
    with pytest.raises(ValueError, match="k_dest must be"):
        rk.rope_kv(qkv, pos, slot, cos, sin, k[:, :, :, :8], v, **kw)
    w = torch.ones(16)
    with pytest.raises(ValueError, match="go together"):
        rk.rope_kv(qkv, pos, slot, cos, sin, k, v, q_norm=w, **kw)
    with pytest.raises(ValueError, match="go together"):
        ref.rope_kv(qkv, pos, slot, cos, sin, k, v, k_norm=w, **kw)
    with pytest.raises(ValueError, match=r"q_norm must be \[16\]"):
        rk.rope_kv(qkv, pos, slot, cos, sin, k, v, q_norm=w[:8], k_norm=w, **kw)
    with pytest.raises(ValueError, match="k_norm must be one of"):
        rk.rope_kv(qkv, pos, slot, cos, sin, k, v, q_norm=w, k_norm=w.half(), **kw)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("H,Hkv,norm", [(32, 32, False), (28, 4, False), (32, 8, True)])
def test_gpu_model_shapes_bf16(H, Hkv, norm):  # LLaDA-8B, Dream-7B, SDAR-4B/8B (QK-norm)
    qkv, pos, slot, store = _problem(2, 32, H, Hkv, 128, 512, 256, torch.bfloat16, seed=H)
    _run_and_check(qkv.cuda(), pos.cuda(), slot.cuda(), store.cuda(), H, Hkv, 128, 512,
                   f"gpu H={H} Hkv={Hkv} norm={norm}",
                   norm=_norms(128, torch.bfloat16, 0, "cuda") if norm else None)
