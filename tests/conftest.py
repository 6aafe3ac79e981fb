"""Shared fixtures. Triton kernels run under the interpreter (on CPU tensors) except in a
`pytest -m gpu` run on a CUDA machine, which runs the compiled kernels: TRITON_INTERPRET is read
when a kernel module is imported, so it is decided here, first, once per process tree (xdist
workers inherit the decision). On a CUDA machine a plain run (`make test`) is the CPU suite
under the interpreter and skips the gpu tests, naming the command that runs them."""
import contextlib
import importlib.util
import os
import sys

import pytest
import torch


def _marker_expression() -> str:
    for i, arg in enumerate(sys.argv):
        if arg == "-m" and i + 1 < len(sys.argv):
            return sys.argv[i + 1].strip()
        if arg.startswith("-m") and len(arg) > 2 and not arg.startswith("-m="):
            return arg[2:].strip()
    return ""


if "FASTDIFF_TEST_COMPILED" not in os.environ:  # the controller decides; workers inherit it
    os.environ["FASTDIFF_TEST_COMPILED"] = \
        "1" if torch.cuda.is_available() and _marker_expression() == "gpu" else "0"
COMPILED = os.environ["FASTDIFF_TEST_COMPILED"] == "1"
if not COMPILED:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# A `pytest -m gpu` run on a GPU image without the server / Ray extras (the device machine has
# no fastapi, uvicorn, openai, ray): their test modules hold no gpu test and would abort the
# collection, so they are left out. Any other run collects them: a missing extra is an error.
_EXTRAS = {"test_server.py": ("fastapi", "uvicorn", "openai", "httpx"),
           "test_ray.py": ("ray", "uvicorn", "openai", "httpx"),
           "test_ray_client.py": ("ray", "uvicorn", "httpx"),
           "test_example_embed.py": ("fastapi", "httpx")}


def _missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):
        return True


collect_ignore = [name for name, mods in _EXTRAS.items()
                  if COMPILED and any(_missing(m) for m in mods)]
# Ray (tests/test_ray*.py): a local instance whose ports and traffic stay on 127.0.0.1, and no
# usage report; Ray reads the first when it is imported, so it is set before any test module is
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest-xdist: share the cores, do not oversubscribe
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))

from fastdiff import ModelConfig  # noqa: E402
from fastdiff.models import save_random_checkpoint  # noqa: E402


def _gpu_order(item) -> int:
    """A compiled gpu run's order (a deadline may cut it): kernels, the extension, the device
    loop, the engine, then the 8B-shaped case."""
    name = item.nodeid
    if "8b" in name:
        return 4
    for rank, prefix in enumerate(("tests/test_kernel_", "tests/test_csrc_build",
                                   "tests/test_graphs_gpu", "tests/test_engine_gpu")):
        if name.startswith(prefix):
            return rank
    return 3


def pytest_collection_modifyitems(config, items):
    if COMPILED:
        items.sort(key=_gpu_order)  # stable: file order within a rank
        return
    skip = pytest.mark.skip(
        reason="needs a CUDA GPU" if not torch.cuda.is_available() else
        "gpu tests run the compiled kernels: `pytest -m gpu tests` (make test-gpu); this run "
        "interprets them")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules whose tests compute in a worker thread (the serving engine) and the test
    thread at once: one intra-op thread each (`pytestmark = usefixtures(...)`)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """Writer checkpoint: tiny preset (MASK 1020, EOS 1017), 2 bf16 shards + index, tokenizer;
    EOS raised to ~10% of a masked probe's argmaxes so EOS-dependent rules are exercised."""
    return save_random_checkpoint(tmp_path_factory.mktemp("tiny"), ModelConfig.preset("tiny"),
                                  seed=0, dtype=torch.bfloat16, shards=2, eos_rate=0.1)


@pytest.fixture(scope="session")
def gqa_ckpt(tmp_path_factory):
    """A GQA variant (4 heads, 2 KV heads) with other non-default ids, stored fp16, one file."""
    cfg = ModelConfig(d_model=96, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden_size=160,
                      vocab_size=512, max_sequence_length=256, mask_token_id=7,
                      eos_token_id=300, rope_theta=10000.0)
    return save_random_checkpoint(tmp_path_factory.mktemp("gqa"), cfg, seed=3,
                                  dtype=torch.float16, shards=1)


@pytest.fixture
def no_host_sync(monkeypatch):
    """guard(): a context under which Tensor.item / tolist / __bool__ and nonzero raise;
    guard.wrap(fn): fn run under that guard, counting its calls in .calls."""
    def boom(*a, **k):
        raise AssertionError("host sync inside a decoding step")

    @contextlib.contextmanager
    def guard():
        with monkeypatch.context() as m:
            for name in ("item", "tolist", "__bool__", "nonzero"):
                m.setattr(torch.Tensor, name, boom)
            m.setattr(torch, "nonzero", boom)
            with pytest.raises(AssertionError, match="host sync"):  # the patch is live
                bool(torch.ones(1))
            yield

    def wrap(fn):
        def wrapped(*args, **kwargs):
            wrapped.calls += 1
            with guard():
                return fn(*args, **kwargs)
        wrapped.calls = 0
        return wrapped

    guard.wrap = wrap
    return guard
