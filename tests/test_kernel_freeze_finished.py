"""freeze_finished kernel vs reference.freeze_finished (interpreter on CPU), and the reference vs
TorchOps.freeze_finished (the engine's torch path): canvases and flags bit-exact."""
from __future__ import annotations

import pytest
import torch

from fastdiff.kernels import freeze_finished as ff
from fastdiff.ops import reference as ref
from fastdiff.ops.torch_backend import TorchOps
from kernel_checks import assert_equal, count_launches, kernels_must_run

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::RuntimeWarning")

MASK, EOS, EOT = 99, 97, 98


@pytest.fixture(autouse=True)
def _kernel_ran(request, monkeypatch):
    yield from kernels_must_run(request, monkeypatch, ff, "_freeze_finished_kernel")


def _canvas(B: int, P: int, G: int, seed: int, *, stops=(EOS, EOT)) -> tuple:
    """Rows covering every case: stop token before / after the first MASK, none, at the first
    and last generation position, several stop tokens, an inactive row that would finish."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 90, (B, P + G), generator=g)
    gen = x[:, P:]
    kinds = torch.arange(B) % 6
    for b in range(B):
        first = int(torch.randint(0, G, (1,), generator=g))
        stop = stops[b % len(stops)]
        if kinds[b] == 0:  # committed text, a stop token, masks after it
            gen[b, first] = stop
            gen[b, first + 1:][torch.rand(G - first - 1, generator=g) < 0.5] = MASK
        elif kinds[b] == 1:  # a MASK before the stop token: not finished
            gen[b, first] = stop
            if first > 0:
                gen[b, int(torch.randint(0, first, (1,), generator=g))] = MASK
        elif kinds[b] == 2:  # no stop token at all, masks anywhere
            gen[b][torch.rand(G, generator=g) < 0.3] = MASK
        elif kinds[b] == 3:  # stop token at the first generation position, more stops later
            gen[b, 0] = stop
            gen[b, -1] = stops[0]
        elif kinds[b] == 4:  # stop token at the last generation position only
            gen[b, -1] = stop
        else:  # several stop tokens; the first decides
            gen[b, first:][torch.rand(G - first, generator=g) < 0.2] = stops[-1]
            gen[b, first] = stops[0]
    active = torch.ones(B, dtype=torch.bool)
    if B > 6:
        active[6] = False  # kind 0: would finish, but is frozen already
    return x, active


def _check(x, active, P, stop_ids, what, counter):
    ex, ea = ref.freeze_finished(x, active, P, stop_ids, EOS, MASK)
    n = counter.launches
    ff.freeze_finished(x, active, P, stop_ids, EOS, MASK)
    assert counter.launches == n + 1
    assert_equal(x, ex, f"{what}: canvas")
    assert_equal(active, ea, f"{what}: active")


@pytest.mark.parametrize("B,P,G", [(1, 0, 1), (7, 3, 20), (8, 5, 37), (3, 1, 1500)])
def test_matches_reference(monkeypatch, B, P, G):
    counter = count_launches(monkeypatch, ff, "_freeze_finished_kernel")
    for stops in ((EOS,), (EOS, EOT), (EOS, EOT, 5, 6)):
        x, active = _canvas(B, P, G, seed=B + G + len(stops), stops=stops)
        _check(x, active, P, torch.tensor(stops), f"B={B} P={P} G={G} stops={stops}", counter)


def test_long_row_stop_in_second_chunk(monkeypatch):
    """G = 1500 > BLOCK_G = 1024: the stop token and the masks sit in the second chunk."""
    counter = count_launches(monkeypatch, ff, "_freeze_finished_kernel")
    assert ff.pick_config(1500)["BLOCK_G"] == 1024
    x = torch.randint(0, 90, (3, 4 + 1500))
    x[:, 4 + 1200] = EOT
    x[0, 4 + 1300:] = MASK  # finishes: masks only after the stop
    x[1, 4 + 1100] = MASK  # mask before the stop, in the same chunk
    x[2, 4 + 1024] = MASK  # mask at the first position of the second chunk
    active = torch.ones(3, dtype=torch.bool)
    _check(x, active, 4, torch.tensor([EOS, EOT]), "second chunk", counter)
    assert active.tolist() == [False, True, True] and (x[0, 4 + 1201:] == EOS).all()


def test_strided_int32_canvas(monkeypatch):
    counter = count_launches(monkeypatch, ff, "_freeze_finished_kernel")
    x, active = _canvas(6, 2, 11, seed=3)
    buf = torch.zeros(6, 20, dtype=torch.int32)
    buf[:, 3:16] = x.int()
    view = buf[:, 3:16]  # row stride 20
    stop = torch.tensor([EOS, EOT], dtype=torch.int32)
    ex, ea = ref.freeze_finished(x, active, 2, stop, EOS, MASK)
    ff.freeze_finished(view, active, 2, stop, EOS, MASK)
    assert_equal(view, ex.int(), "strided int32 canvas")
    assert_equal(active, ea, "active")
    assert (buf[:, :3] == 0).all() and (buf[:, 16:] == 0).all()
    assert counter.launches == 1


def test_by_hand():
    """Generation region from column 2; stop ids {50, 7}, MASK 9, EOS 0."""
    x = torch.tensor([[1, 2, 3, 9, 9, 9, 9],     # no stop token: unchanged
                      [1, 2, 9, 50, 4, 9, 9],    # MASK before the stop: unchanged
                      [1, 2, 5, 7, 50, 9, 4],    # finished at 7: EOS after it
                      [1, 2, 7, 7, 7, 7, 7],     # stop at the first position
                      [50, 7, 5, 6, 4, 3, 50]])  # stop tokens in the prompt do not count
    active = torch.tensor([True, True, True, True, True])
    ff.freeze_finished(x, active, 2, torch.tensor([50, 7]), 0, 9)
    assert x.tolist() == [[1, 2, 3, 9, 9, 9, 9], [1, 2, 9, 50, 4, 9, 9], [1, 2, 5, 7, 0, 0, 0],
                          [1, 2, 7, 0, 0, 0, 0], [50, 7, 5, 6, 4, 3, 50]]
    assert active.tolist() == [True, True, False, False, False]


def test_inactive_rows_untouched_and_no_generation_region(monkeypatch):
    counter = count_launches(monkeypatch, ff, "_freeze_finished_kernel")
    x = torch.tensor([[1, EOS, 5, 6], [1, EOS, 5, 6]])
    active = torch.tensor([False, True])
    ff.freeze_finished(x, active, 1, torch.tensor([EOS]), EOS, MASK)
    assert x.tolist() == [[1, EOS, 5, 6], [1, EOS, EOS, EOS]]
    assert active.tolist() == [False, False]
    assert counter.launches == 1
    ff.freeze_finished(x, torch.ones(2, dtype=torch.bool), 4, torch.tensor([EOS]), EOS, MASK)
    assert counter.launches == 1  # G = 0: nothing to do, no launch


def test_reference_matches_torch_backend():
    """The reference has the semantics of the engine's torch path (TorchOps.freeze_finished)."""
    for seed, (B, P, G) in enumerate([(7, 3, 20), (12, 0, 9), (6, 4, 1)]):
        x, active = _canvas(B, P, G, seed=seed)
        stop_ids = torch.tensor([EOS, EOT])
        xt, at = x.clone(), active.clone()
        TorchOps.freeze_finished(xt, at, P, stop_ids, EOS, MASK)
        ex, ea = ref.freeze_finished(x, active, P, stop_ids, EOS, MASK)
        assert_equal(xt, ex, f"seed {seed}: canvas")
        assert_equal(at, ea, f"seed {seed}: active")
    ff.freeze_finished(x, active, P, stop_ids, EOS, MASK)  # the fixture wants one launch
    assert_equal(x, ex, "kernel")


def test_launcher_errors():
    x = torch.zeros(2, 5, dtype=torch.int64)
    active = torch.ones(2, dtype=torch.bool)
    stop = torch.tensor([EOS])
    with pytest.raises(ValueError, match="canvas"):
        ff.freeze_finished(x.float(), active, 1, stop, EOS, MASK)
    with pytest.raises(ValueError, match="contiguous last"):
        ff.freeze_finished(torch.zeros(5, 2, dtype=torch.int64).t(), active, 1, stop, EOS, MASK)
    with pytest.raises(ValueError, match="active"):
        ff.freeze_finished(x, active.int(), 1, stop, EOS, MASK)
    with pytest.raises(ValueError, match="stop_ids"):
        ff.freeze_finished(x, active, 1, torch.arange(5), EOS, MASK)
    with pytest.raises(ValueError, match="stop_ids"):
        ff.freeze_finished(x, active, 1, stop.float(), EOS, MASK)
    with pytest.raises(ValueError, match="prompt_len"):
        ff.freeze_finished(x, active, 6, stop, EOS, MASK)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_long_rows():
    x, active = _canvas(16, 64, 4000, seed=1)
    stop = torch.tensor([EOS, EOT])
    ex, ea = ref.freeze_finished(x, active, 64, stop, EOS, MASK)
    xc, ac = x.cuda(), active.cuda()
    ff.freeze_finished(xc, ac, 64, stop.cuda(), EOS, MASK)
    assert_equal(xc.cpu(), ex, "gpu canvas")
    assert_equal(ac.cpu(), ea, "gpu active")
