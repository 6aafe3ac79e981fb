"""Helpers for the kernel tests: first-mismatch assertions and a launch counter that proves a
Triton kernel (not a torch fallback) produced the result."""
from __future__ import annotations

import torch


def first_mismatch(bad: torch.Tensor) -> tuple:
    """Index tuple of the first True in a bool tensor (row-major)."""
    flat = int(bad.reshape(-1).nonzero()[0, 0])
    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), bad.shape))


def assert_equal(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != " \
                                           f"{tuple(expected.shape)}"
    bad = actual != expected
    if bad.any():
        i = first_mismatch(bad)
        raise AssertionError(f"{what}: {int(bad.sum())} mismatches; first at {i}: "
                             f"got {actual[i].item()}, expected {expected[i].item()}")


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float,
                 what: str) -> None:
    """Like torch.testing.assert_close, but names the first mismatching index; equal infinities
    pass, NaN never does."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != " \
                                           f"{tuple(expected.shape)}"
    a, e = actual.double(), expected.double()
    same_inf = torch.isinf(a) & torch.isinf(e) & (a == e)
    err = (a - e).abs()
    bad = ~same_inf & ~(err <= atol + rtol * e.abs())  # NaN compares False -> bad
    if bad.any():
        i = first_mismatch(bad)
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.numel()} outside atol={atol} "
                             f"rtol={rtol}; first at {i}: got {a[i].item()}, expected "
                             f"{e[i].item()}; max err {err[~same_inf].nan_to_num(1e30).max()}")


class LaunchCounter:
    """Stands in for a @triton.jit kernel (monkeypatched on its module) and counts launches."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.launches = 0
        self.grids = []  # the grid of each launch

    def __getitem__(self, grid):
        launch = self.kernel[grid]
        self.grids.append(tuple(grid))

        def run(*args, **kwargs):
            self.launches += 1
            return launch(*args, **kwargs)
        return run


def count_launches(monkeypatch, module, name: str) -> LaunchCounter:
    counter = LaunchCounter(getattr(module, name))
    monkeypatch.setattr(module, name, counter)
    return counter


def kernels_must_run(request, monkeypatch, module, *names: str):
    """Body of an autouse fixture: count launches of module's kernels during a test and fail a
    test that launched none (launcher-error tests, named *errors*, are exempt)."""
    counters = [count_launches(monkeypatch, module, n) for n in names]
    yield counters
    if "errors" not in request.node.name:
        assert counters[0].launches > 0, f"{names[0]} never launched: a silent fallback?"
