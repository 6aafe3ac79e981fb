"""csrc/ builds here without a GPU: every .cu compiles with nvcc for sm_90a and sm_80, and again
(sm_90a) against the CUDA 12.x runtime headers of the nvidia-cuda-runtime-cu12 wheel; the binding
file compiles against pybind11, the CMake build links fastdiff._C (static cudart, no libtorch)
and the module loads and reports the missing driver as data, not a crash; the package installs
and imports with FASTDIFF_BUILD_CUDA=0; the lazy loader answers None without the extension, and
load_runnable() answers None (one warning, no retry) for an extension whose self test fails.
Skipped (with the reason) only where nvcc / cmake / pybind11 are absent; a missing
nvidia-cuda-runtime-cu12 (in the `dev` extra) fails. One `gpu`-marked test (skipped here) runs
the installed extension's loop graph of each kind, for the first GPU run."""
import importlib.metadata
import logging
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
ARCHS = {"sm_90a": "-gencode=arch=compute_90a,code=sm_90a",
         "sm_80": "-gencode=arch=compute_80,code=sm_80"}
NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")


def cuda12_include() -> Path:
    """The include folder of the installed nvidia-cuda-runtime-cu12 wheel (CUDA 12.x runtime
    headers); fails (does not skip) when the package is missing: it is in the `dev` extra."""
    try:
        dist = importlib.metadata.distribution("nvidia-cuda-runtime-cu12")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("nvidia-cuda-runtime-cu12 is not installed (it is in the `dev` extra: "
                    "pip install -e '.[dev]'); csrc must be compiled against CUDA 12.x headers")
    api = [f for f in dist.files or () if f.as_posix().endswith("include/cuda_runtime_api.h")]
    if len(api) != 1:
        pytest.fail(f"nvidia-cuda-runtime-cu12 {dist.version} has no single "
                    f"include/cuda_runtime_api.h: {api}")
    return Path(dist.locate_file(api[0])).resolve().parent


def pybind11_include():
    try:
        import pybind11
    except ImportError:
        return None
    return pybind11.get_include()


def local_wheel_support() -> bool:
    import importlib.util
    try:
        import setuptools
    except ImportError:
        return False
    version = tuple(int(p) for p in setuptools.__version__.split(".")[:2] if p.isdigit())
    return version >= (70, 1) or importlib.util.find_spec("wheel") is not None


def run(cmd, **kw):
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if res.returncode:
        pytest.fail(f"{' '.join(map(str, cmd))} failed ({res.returncode}):\n"
                    f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


@needs_nvcc
def test_every_cu_compiles_for_sm90a_and_sm80(tmp_path):
    sources = sorted(CSRC.glob("*.cu"))
    assert sources, "csrc/ has no .cu sources"
    jobs = [[NVCC, "-std=c++17", "-O2", "-c", str(src), "-o", str(tmp_path / f"{src.stem}.o"),
             *ARCHS.values(), "--resource-usage"] for src in sources]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run, jobs))
    assert len(list(tmp_path.glob("*.o"))) == len(sources)
    report = "".join(r.stdout + r.stderr for r in results)  # ptxas: one entry per arch
    for arch in ARCHS:
        assert f"for '{arch}'" in report, f"nothing was compiled for {arch}:\n{report[:2000]}"


@needs_nvcc
def test_every_cu_compiles_against_cuda12_headers(tmp_path):
    """Users build with CUDA 12.4-12.9 too: every .cu compiles for sm_90a with the runtime
    headers of nvidia-cuda-runtime-cu12 passed with -I (searched before nvcc's own), and the
    files that branch on FD_HAS_SWITCH also with -DFD_HAS_SWITCH=0 (the IF-only build of
    12.4-12.7 headers, which have no SWITCH nodes).

    The working combination: the wheel ships the runtime API headers (cuda_runtime.h,
    cuda_runtime_api.h, driver_types.h, cuda_device_runtime_api.h, ...) but no crt/ folder, so
    those come from the wheel and only the compiler's internal crt/*.h (host_config.h,
    host_defines.h, device_functions.h, ...) from nvcc 13's own include folder. That mix compiles
    cleanly; the dependency files prove that cuda_runtime_api.h and driver_types.h were read from
    the wheel, not from nvcc 13's folder."""
    inc = cuda12_include()
    version = int(re.search(r"#define\s+CUDART_VERSION\s+(\d+)",
                            (inc / "cuda_runtime_api.h").read_text()).group(1))
    assert 12040 <= version < 13000, f"{inc} holds CUDART_VERSION {version}, not CUDA 12.4-12.9"
    jobs, deps = [], []
    for src in sorted(CSRC.glob("*.cu")):
        variants = [("", [])]
        if '#include "graph.cuh"' in src.read_text():  # the files that branch on FD_HAS_SWITCH
            variants.append(("_noswitch", ["-DFD_HAS_SWITCH=0"]))
        for tag, extra in variants:
            out = tmp_path / f"{src.stem}{tag}.o"
            deps.append(out.with_suffix(".d"))
            jobs.append([NVCC, "-std=c++17", "-O2", "-c", str(src), "-o", str(out), f"-I{inc}",
                         *extra, ARCHS["sm_90a"], "-MD", "-MF", str(deps[-1])])
    assert len(jobs) > len(list(CSRC.glob("*.cu"))), "no file was compiled without SWITCH nodes"
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(run, jobs))
    for d in deps:
        text = d.read_text()
        for header in ("cuda_runtime_api.h", "driver_types.h"):
            used = re.findall(r"(\S*/%s)\b" % re.escape(header), text)
            assert used and all(Path(u).resolve().parent == inc for u in used), \
                f"{d.stem}: {header} came from {used}, not from {inc}"


def test_binding_file_compiles():
    inc = pybind11_include()
    cxx = shutil.which("c++") or shutil.which("g++")
    if inc is None or cxx is None:
        pytest.skip("pybind11 or a C++ compiler is missing")
    run([cxx, "-std=c++17", "-fsyntax-only", "-Wall", "-Werror", f"-I{inc}",
         f"-I{sysconfig.get_paths()['include']}", str(CSRC / "bindings.cpp")])


LOAD_CHECK = """
import sys
sys.path.insert(0, sys.argv[1])
import _C
info = _C.conditional_support()
assert info["compiled_cudart"].startswith("1"), info
assert _C.CTL_WORDS == 8 and _C.CTL_BRANCH == 4
assert issubclass(_C.CudaError, RuntimeError)
try:
    _C.ControlSpec(x=0, active=0, ctl=0, k=0, m0=0, mask_id=1, batch=1, length=8, prompt_len=0,
                   block_length=4, n_blocks=2, steps_per_block=0, max_steps=4, phases=1,
                   per_block=0)
    _C.control_update(_C.ControlSpec(x=0, active=0, ctl=0, k=0, m0=0, mask_id=1, batch=1,
                      length=8, prompt_len=0, block_length=4, n_blocks=2, steps_per_block=0,
                      max_steps=4, phases=1, per_block=0), 0)
except ValueError as e:
    assert "x, active, ctl" in str(e), e
else:
    raise AssertionError("null pointers were accepted")
spec = _C.ControlSpec(x=8, active=8, ctl=8, k=0, m0=0, mask_id=1, batch=1, length=8,
                     prompt_len=0, block_length=4, n_blocks=2, steps_per_block=0, max_steps=4,
                     phases=2, per_block=1, cancel=16)
assert isinstance(_C.LoopGraph.kind, property) and isinstance(_C.LoopGraph.num_branches, property)
try:
    _C.graph_node_types(0)
except ValueError as e:
    assert "null" in str(e), e
else:
    raise AssertionError("a null graph was accepted")
try:
    _C.LoopGraph([1, 2, 3], spec, None)
except ValueError as e:
    assert "got 3 step graphs, the control spec needs 4" in str(e), e
else:
    raise AssertionError("a wrong number of step graphs was accepted")
if info.get("device_count", "0").isdigit() and int(info["device_count"]) > 0:
    print("GPU", info)
else:
    spec1 = _C.ControlSpec(x=8, active=8, ctl=8, k=0, m0=0, mask_id=1, batch=1, length=8,
                          prompt_len=0, block_length=4, n_blocks=2, steps_per_block=0,
                          max_steps=4, phases=2, per_block=0)
    for call, name in [(lambda: _C.host_alloc_mapped(64), "cudaHostAlloc"),
                       (lambda: _C.LoopGraph([1, 2, 3, 4], spec), "cudaGraphCreate"),
                       (lambda: _C.LoopGraph([1, 2], spec1, use_switch=False), "cudaGraphCreate"),
                       (lambda: _C.LoopGraph([1, 2], spec1, None, True), "SWITCH"),
                       (lambda: _C.self_test(0), "cudaMalloc"),
                       (lambda: _C.self_test(0, use_switch=True), "SWITCH"),
                       (lambda: _C.graph_node_types(1), "cudaGraphGetNodes")]:
        try:
            call()
        except _C.CudaError as e:
            assert name in str(e) and ("failed" in str(e) or "not available" in str(e)
                                       or "SWITCH nodes:" in str(e)), e
        else:
            raise AssertionError("no error without a GPU")
print("ok", info)
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The real build (CMakeLists.txt: sm_90a + sm_80, static cudart, pybind11 module) into a
    temporary folder: (build dir, folder holding _C*.so)."""
    if NVCC is None or shutil.which("cmake") is None or pybind11_include() is None:
        pytest.skip("nvcc, cmake or pybind11 is missing (pip install pybind11)")
    tmp = tmp_path_factory.mktemp("csrc")
    build, out = tmp / "build", tmp / "out"
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    run(["cmake", "-S", str(ROOT), "-B", str(build), *gen, f"-DFASTDIFF_OUTPUT_DIR={out}",
         f"-DPython_EXECUTABLE={sys.executable}", f"-DCMAKE_CUDA_COMPILER={NVCC}"])
    run(["cmake", "--build", str(build), "-j", "2"])
    return build, out


@pytest.mark.slow
def test_cmake_builds_and_loads_the_extension(built, tmp_path):
    """The module links without libcudart / libtorch and loads in a fresh interpreter without a
    GPU: conditional_support() reports the missing driver as data; CUDA calls raise CudaError."""
    build, out = built
    flags = "".join(p.read_text(errors="replace") for p in build.rglob("*")
                    if p.is_file() and p.name in ("build.ninja", "flags.make"))
    assert "sm_90a" in flags and "sm_80" in flags, "CMake does not target sm_90a and sm_80"
    so = list(out.glob("_C*.so"))
    assert len(so) == 1, list(out.iterdir())
    if shutil.which("ldd"):
        libs = run(["ldd", str(so[0])]).stdout
        assert "libcudart" not in libs and "libtorch" not in libs and "libc10" not in libs, libs
    res = run([sys.executable, "-c", LOAD_CHECK, str(out)], cwd=tmp_path)
    assert "ok" in res.stdout


KERNEL_LOGIC = """
import sys
sys.path.insert(0, sys.argv[1])
from dataclasses import fields
import torch, _C
from fastdiff.decoding.control import Control, ControlSpec
from fastdiff.decoding.state import DecodeState
B, P, Lb, nb, M = 5, 3, 6, 3, 99
# (steps, phases, per_block, cancel): cancel None = a state without one (pointer 0); "row":
# row 2 cancelled at update 3; "all": every row cancelled at update 7
for steps, phases, per_block, cancel in [(0, 2, 1, "row"), (3, 2, 1, None), (4, 1, 0, "row"),
                                         (0, 1, 1, "all"), (3, 2, 0, "all")]:
    g = torch.Generator().manual_seed(steps + 10 * phases)
    x = torch.full((B, P + Lb * nb), M, dtype=torch.int64)
    x[:, :P] = 1
    z32, z64 = torch.zeros(B, dtype=torch.int32), torch.zeros(B, dtype=torch.int64)
    extra = {"cancel": torch.zeros(B, dtype=torch.bool), "m0": z64.clone()}  # newer fields
    st = DecodeState(x=x, positions=torch.zeros_like(x), kv_start=z32, kv_end=z32.clone(),
                     seed=z64, step=z64.clone(), nfe=z32.clone(),
                     active=torch.ones(B, dtype=torch.bool), prompt_len=P, gen_length=Lb * nb,
                     mask_id=M, **{k: v for k, v in extra.items()
                                   if k in {f.name for f in fields(DecodeState)}})
    st.cancel = None if cancel is None else torch.zeros(B, dtype=torch.bool)
    spec = ControlSpec(block_length=Lb, n_blocks=nb, steps_per_block=steps,
                       max_steps=steps or Lb, phases=phases, per_block=bool(per_block))
    mirror, host = Control(st, spec), Control(st, spec)
    for it in range(60):
        mirror.update(st)
        _C.control_update_host(host.cuda_spec(_C, st))
        assert host.ctl.tolist() == mirror.ctl.tolist(), (steps, it, host.ctl, mirror.ctl)
        assert host.k.tolist() == mirror.k.tolist(), (steps, it)
        f = mirror.read()
        if not f.running:
            break
        blk = st.x[:, P + f.block * Lb:P + (f.block + 1) * Lb]
        blk[(torch.rand(blk.shape, generator=g) < 0.3) & (blk == M)] = 5
        if it == 5:
            st.active[1] = False
        if it == 9 and steps == 4:
            st.active[:] = False
        if it == 3 and cancel == "row":
            st.cancel[2] = True
        if it == 7 and cancel == "all":
            st.cancel[:] = True
    assert not mirror.read().running, (steps, it)
    if cancel == "all":  # the loop ended at the update right after the cancel (8 steps run)
        assert it == 8 and mirror.read().iters == 8, (steps, it, mirror.read())
print("ok")
"""


@pytest.mark.slow
def test_kernel_decisions_match_the_torch_mirror(built, tmp_path):
    """The control kernel's decision code (csrc/control.cuh, shared by the kernel and its host
    twin control_update_host) against Control.update, word for word, over random commits,
    frozen rows, cancelled rows (one, all, none), fixed and threshold schedules, one or two
    phases."""
    res = run([sys.executable, "-c", KERNEL_LOGIC, str(built[1])], cwd=ROOT)
    assert "ok" in res.stdout


@pytest.mark.slow
def test_installs_and_imports_without_the_cuda_build(tmp_path):
    """FASTDIFF_BUILD_CUDA=0: a plain (non-editable) install into a target folder imports, and
    the loader reports the extension as missing."""
    src, target = tmp_path / "src", tmp_path / "site"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(  # pip builds in the source tree
        ".git", ".venv", "build", "*.egg-info", "__pycache__", "*.so", ".pytest_cache"))
    env = dict(os.environ, FASTDIFF_BUILD_CUDA="0")
    # --no-build-isolation (as on the GPU machine) needs setuptools' wheel support here: built in
    # from setuptools 70.1, else the `wheel` package; without either, let pip isolate the build.
    isolation = [] if not local_wheel_support() else ["--no-build-isolation"]
    run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *isolation,
         "--no-compile", "--target", str(target), str(src)], env=env, cwd=tmp_path)
    assert not list(target.rglob("_C*.so"))
    check = ("import sys\n"  # an editable install's finder would shadow PYTHONPATH: drop it
             "sys.meta_path[:] = [f for f in sys.meta_path\n"
             "                    if '__editable__' not in getattr(f, '__module__', '')]\n"
             "import fastdiff, fastdiff.decoding.graphs, fastdiff.decoding.control\n"
             "from fastdiff.ops import cuda_ext\n"
             "assert fastdiff.__file__.startswith(%r), fastdiff.__file__\n"
             "assert cuda_ext.load() is None\n"
             "assert cuda_ext.conditional_support()['extension'] == 'missing'\n"
             "print('ok')" % str(target))
    res = run([sys.executable, "-c", check], cwd=tmp_path,
              env=dict(os.environ, PYTHONPATH=str(target)))
    assert "ok" in res.stdout


def test_loader_without_the_extension(monkeypatch):
    from fastdiff.ops import cuda_ext
    monkeypatch.setitem(sys.modules, "fastdiff._C", None)  # import now raises ImportError
    assert cuda_ext.load() is None
    with pytest.raises(ImportError, match="FASTDIFF_BUILD_CUDA=1"):
        cuda_ext.load(required=True)
    assert cuda_ext.conditional_support()["extension"] == "missing"


def fake_extension(monkeypatch, self_test, cuda: bool = True):
    """A stand-in fastdiff._C (sys.modules, so importlib.import_module returns it) whose
    self_test runs `self_test()` and records its calls; CUDA pretended available or not through
    torch.cuda.is_available (what cuda_ext asks) and current_stream."""
    import types

    import torch
    mod = types.ModuleType("fastdiff._C")
    mod.calls = []

    def run_self_test(stream, use_switch=False):
        mod.calls.append(stream)
        return self_test()

    mod.self_test = run_self_test
    mod.conditional_support = lambda: {"compiled_cudart": "13000", "driver_version": "12040"}
    monkeypatch.setitem(sys.modules, "fastdiff._C", mod)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "current_stream",
                        lambda device=None: types.SimpleNamespace(cuda_stream=1234))
    return mod


def test_load_runnable_drops_an_extension_that_cannot_run(monkeypatch, caplog):
    """An extension built for a newer CUDA than the driver: its self test raises once; from then
    on load_runnable() answers None without retrying, after one warning naming reason and fix."""
    from fastdiff.ops import cuda_ext

    def broken():
        raise RuntimeError("cudaMalloc(&counters, 12) failed: cudaErrorInsufficientDriver")

    mod = fake_extension(monkeypatch, broken)
    with caplog.at_level(logging.WARNING, logger=cuda_ext.__name__):
        assert cuda_ext.load_runnable() is None
        assert cuda_ext.load_runnable() is None
        assert cuda_ext.conditional_support()["self_test"].startswith("RuntimeError: cudaMalloc")
    assert mod.calls == [1234], "the self test ran more than once (or not on the stream)"
    warnings = [r.getMessage() for r in caplog.records if r.name == cuda_ext.__name__]
    assert len(warnings) == 1, warnings
    for part in ("cudaErrorInsufficientDriver", "rebuild", "update the NVIDIA driver",
                 "built with CUDA runtime 13000", "driver supports CUDA 12040"):
        assert part in warnings[0], (part, warnings[0])
    assert cuda_ext.load() is mod  # load() only imports: the host-side parts stay reachable


def test_load_runnable_checks_a_working_extension_once(monkeypatch, caplog):
    from fastdiff.ops import cuda_ext
    mod = fake_extension(monkeypatch, lambda: {"iterations": 5, "if0_runs": 2, "if1_runs": 3})
    with caplog.at_level(logging.WARNING, logger=cuda_ext.__name__):
        assert cuda_ext.load_runnable() is mod and cuda_ext.load_runnable() is mod
    assert mod.calls == [1234] and not caplog.records


def test_load_runnable_without_cuda_runs_no_self_test(monkeypatch):
    """No CUDA: the module comes back unchecked (host-side functions only) and self_test never
    runs; without the extension, None."""
    from fastdiff.ops import cuda_ext

    def boom():
        raise AssertionError("self_test ran without CUDA")

    mod = fake_extension(monkeypatch, boom, cuda=False)
    assert cuda_ext.load_runnable() is mod and mod.calls == []
    monkeypatch.setitem(sys.modules, "fastdiff._C", None)
    assert cuda_ext.load_runnable() is None


def test_imports_do_no_cuda_work():
    """`import fastdiff` and the loader touch neither CUDA nor the extension."""
    check = ("import sys, torch\n"
             "def boom(*a, **k):\n"
             "    raise AssertionError('CUDA touched at import')\n"
             "torch.cuda.is_available = torch.cuda.init = torch.cuda.current_stream = boom\n"
             "import fastdiff, fastdiff.decoding.graphs\n"
             "from fastdiff.ops import cuda_ext\n"
             "assert 'fastdiff._C' not in sys.modules\n"
             "print('ok')")
    assert "ok" in run([sys.executable, "-c", check], cwd=ROOT).stdout


@pytest.mark.gpu
@pytest.mark.parametrize("use_switch", [False, True], ids=["if", "switch"])
def test_gpu_loop_graph_runs_the_picked_steps(use_switch):
    """GPU, first contact (the installed fastdiff._C): load_runnable() passes; self_test runs
    for this kind; graph_node_types names the captured step graphs' nodes, all of types a
    conditional body accepts; a LoopGraph of this kind over two torch-captured steps (refresh:
    commit the block's first half, cached: the second half) runs each block as refresh then
    cached and stops after the last block, or at once when every row is cancelled."""
    import torch

    from fastdiff.decoding.control import CTL_BLOCK, Control, ControlSpec
    from fastdiff.decoding.state import DecodeState
    from fastdiff.ops import cuda_ext
    ext = cuda_ext.load_runnable()
    assert ext is not None, cuda_ext.conditional_support()
    support = ext.conditional_support()
    if use_switch and support["switch_node"] != "ok":
        pytest.skip(f"no SWITCH nodes here: {support['switch_node']}")
    stream = torch.cuda.current_stream()
    what = "case" if use_switch else "if"
    assert ext.self_test(stream.cuda_stream, use_switch=use_switch) == \
        {"iterations": 5, f"{what}0_runs": 2, f"{what}1_runs": 3}
    M, Lb, nb = 99, 4, 3
    st = DecodeState.from_prompts([[1], [1, 2]], Lb * nb, mask_id=M, pad_id=0, seeds=[0, 0],
                                  device=torch.device("cuda"))
    control = Control(st, ControlSpec(block_length=Lb, n_blocks=nb, steps_per_block=0,
                                      max_steps=Lb, phases=2, per_block=False))
    runs = torch.zeros(2, dtype=torch.int32, device="cuda")
    half = torch.arange(Lb // 2, device="cuda")

    def step(phase: int) -> None:  # device ops only: the block comes from the control words
        cols = st.prompt_len + control.ctl[CTL_BLOCK].long() * Lb + phase * (Lb // 2) + half
        st.x.index_fill_(1, cols, 5)
        runs[phase:phase + 1] += 1

    x0 = st.x.clone()
    side = torch.cuda.Stream()  # warm-up (lazy kernel loading) before capture
    side.wait_stream(stream)
    with torch.cuda.stream(side):
        for phase in (0, 1):
            step(phase)
    stream.wait_stream(side)
    graphs = []
    for phase in (0, 1):
        g = torch.cuda.CUDAGraph(keep_graph=True)
        with torch.cuda.graph(g):
            step(phase)
        graphs.append(g)
        types = ext.graph_node_types(g.raw_cuda_graph())
        print(f"\nstep graph {phase} node types: {types}")
        assert "kernel" in types and set(types) <= {"kernel", "memcpy", "memset", "graph",
                                                    "empty", "conditional"}, types
    loop = ext.LoopGraph([g.raw_cuda_graph() for g in graphs], control.cuda_spec(ext, st),
                         None, use_switch)
    assert (loop.kind, loop.num_branches) == (what, 2)
    for cancel_all in (False, True):
        st.x.copy_(x0)
        runs.zero_()
        st.cancel.fill_(cancel_all)
        control.reset()
        loop.launch(stream.cuda_stream)
        torch.cuda.synchronize()
        f = control.read()
        assert not f.running and not f.error, f
        if cancel_all:
            assert runs.tolist() == [0, 0] and f.iters == 0 and torch.equal(st.x, x0), f
        else:
            assert runs.tolist() == [nb, nb] and f.iters == 2 * nb, (runs, f)
            assert (st.x[:, st.prompt_len:] == 5).all(), st.x


def test_setup_rejects_a_bad_build_flag(tmp_path):
    env = dict(os.environ, FASTDIFF_BUILD_CUDA="yes")
    res = subprocess.run([sys.executable, str(ROOT / "setup.py"), "--name"], capture_output=True,
                         text=True, env=env, cwd=ROOT)
    assert res.returncode != 0 and "FASTDIFF_BUILD_CUDA='yes' is invalid" in res.stderr
