"""fastdiff-llm: build script. Metadata lives here; pyproject.toml holds build-system and tools.

The CUDA extension fastdiff._C (csrc/ + CMakeLists.txt: control kernel, CUDA-graph WHILE-loop
runner, progress writer) is optional: without it the package installs and imports normally and
the engine falls back to host replay.

FASTDIFF_BUILD_CUDA selects the build:
  unset (auto): build through CMake when csrc/ has sources and nvcc + cmake are found; a failed
                auto build prints a warning and installs without fastdiff._C;
  1:            build, and fail the install if the build fails;
  0:            never build.
The build needs pybind11 (`python -m pybind11 --cmakedir`): pyproject.toml's build-system lists
it for isolated builds; with --no-build-isolation it must be installed already (it is on the GPU
machine, which has no network: `pip install --no-build-isolation --no-deps -e .`).
FASTDIFF_CUDA_ARCHS overrides CMAKE_CUDA_ARCHITECTURES (default "90a;80").

The CPU extension fastdiff._cpu_ops (csrc/cpu/fused_cpu.c: plain C against the CPython API, no
libtorch) is always attempted with the C compiler Python was built with; it takes about a
second. Without it (no compiler: the build only warns) the torch backend runs its unfused torch
ops on the CPU and says so once (fastdiff/ops/cpu_fused.py)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()


def _cuda_mode() -> str:
    """'off' | 'auto' | 'force' (see the module docstring)."""
    flag = os.environ.get("FASTDIFF_BUILD_CUDA")
    has_sources = any((ROOT / "csrc").glob("*.cu"))
    if flag == "0":
        return "off"
    if flag == "1":
        if not has_sources:
            raise RuntimeError("FASTDIFF_BUILD_CUDA=1 but csrc/ has no CUDA sources")
        return "force"
    if flag not in (None, ""):
        raise RuntimeError(f"FASTDIFF_BUILD_CUDA={flag!r} is invalid; use 0, 1 or leave it unset")
    found = shutil.which("nvcc") is not None and shutil.which("cmake") is not None
    return "auto" if has_sources and found else "off"


class CMakeBuild(build_ext):
    """fastdiff._C: configure + build CMakeLists.txt (ninja if present) into the extension's
    folder; other extensions (fastdiff._cpu_ops): setuptools' own C build."""

    def build_extension(self, ext):
        if ext.name != "fastdiff._C":
            try:
                super().build_extension(ext)
            except Exception as e:  # noqa: BLE001 - optional: any compiler failure only warns
                print(f"WARNING: building the optional CPU extension {ext.name} failed ({e}); "
                      "installing without it (the torch backend then runs unfused torch ops "
                      "on the CPU)", file=sys.stderr)
            return
        try:
            self._cmake(ext)
        except (OSError, subprocess.CalledProcessError) as e:
            if _cuda_mode() == "force":
                raise RuntimeError(f"building fastdiff._C failed: {e}") from e
            print(f"WARNING: building the optional CUDA extension fastdiff._C failed ({e}); "
                  "installing without it (set FASTDIFF_BUILD_CUDA=1 to make this an error)",
                  file=sys.stderr)

    def _cmake(self, ext):
        out_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        gen = ["-G", "Ninja"] if shutil.which("ninja") else []
        archs = os.environ.get("FASTDIFF_CUDA_ARCHS")
        arch = [f"-DCMAKE_CUDA_ARCHITECTURES={archs}"] if archs else []
        nvcc = shutil.which("nvcc")
        cuda = [f"-DCMAKE_CUDA_COMPILER={nvcc}"] if nvcc else []
        subprocess.check_call(["cmake", str(ROOT), *gen, *arch, *cuda,
                               f"-DFASTDIFF_OUTPUT_DIR={out_dir}",
                               f"-DPython_EXECUTABLE={sys.executable}",
                               "-DCMAKE_BUILD_TYPE=Release"], cwd=build_dir)
        subprocess.check_call(["cmake", "--build", ".", "-j", str(os.cpu_count() or 1)],
                              cwd=build_dir)


_CUDA = _cuda_mode() != "off"

setup(
    name="fastdiff-llm",
    version="0.1.0",
    description="Fast decoding engine for diffusion language models (LLaDA)",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=["fastdiff", "fastdiff.ops", "fastdiff.models", "fastdiff.decoding",
              "fastdiff.bench", "fastdiff.assets", "fastdiff.kernels", "fastdiff.serving",
              "fastdiff.server"],
    package_dir={"fastdiff.kernels": "kernels"},
    package_data={"fastdiff.assets": ["demo/*", "*.md"]},
    # torch: the oldest version the test suite has run on (2.13, CPU). The GPU image's 2.11 installs
    # with --no-deps (device_suite.sh) and is validated there.
    install_requires=["torch>=2.13", "safetensors>=0.4", "tokenizers>=0.19", "jinja2>=3.1",
                      "numpy>=1.24", "tqdm>=4.60"],
    extras_require={
        # nvidia-cuda-runtime-cu12: CUDA 12.x runtime headers; CI compiles csrc/ against them
        "dev": ["pytest>=8", "pytest-xdist>=3.5", "pytest-benchmark>=4", "triton>=3.6",
                "transformers>=4.45",
                "matplotlib>=3.7", "pybind11>=2.12", "nvidia-cuda-runtime-cu12>=12.4",
                # the server extra and the client its tests drive
                "fastapi>=0.110", "uvicorn>=0.29", "prometheus-client>=0.20", "httpx>=0.27",
                "openai>=1.30",
                "ray[serve]>=2.60,<3"],  # the ray extra: tests/test_ray*.py
        "bench": ["matplotlib>=3.7", "pytest-benchmark>=4",
                  "httpx>=0.27"],  # `fastdiff bench-serve` over HTTP (--in-process needs none)
        # `fastdiff serve`: the OpenAI-compatible HTTP server
        "server": ["fastapi>=0.110", "uvicorn>=0.29", "prometheus-client>=0.20", "httpx>=0.27"],
        # `fastdiff serve --replicas N` / `serve run fastdiff.server.ray_app:build_app`: the
        # server on Ray Serve (2.60: the ingress builds its app late, once its handles exist)
        "ray": ["ray[serve]>=2.60,<3", "fastapi>=0.110", "uvicorn>=0.29",
                "prometheus-client>=0.20", "httpx>=0.27"],
    },
    entry_points={"console_scripts": ["fastdiff=fastdiff.cli:main"]},
    ext_modules=[Extension("fastdiff._cpu_ops", sources=["csrc/cpu/fused_cpu.c"], optional=True,
                           extra_compile_args=["-O3", "-ffp-contract=off"])]
    + ([Extension("fastdiff._C", sources=[], optional=True)] if _CUDA else []),
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
