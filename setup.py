"""fastdiff-llm: build script. Metadata lives here; pyproject.toml holds build-system and tools.

The CUDA extension fastdiff._C (csrc/ + CMakeLists.txt) is built through CMake when nvcc is found
and csrc/ has sources (FASTDIFF_BUILD_CUDA=1 forces it, =0 skips it); without it the package
installs and imports normally."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()


def _want_cuda() -> bool:
    flag = os.environ.get("FASTDIFF_BUILD_CUDA")
    has_sources = any((ROOT / "csrc").glob("*.cu"))
    if flag == "0":
        return False
    if flag == "1":
        if not has_sources:
            raise RuntimeError("FASTDIFF_BUILD_CUDA=1 but csrc/ has no CUDA sources yet")
        return True
    return has_sources and shutil.which("nvcc") is not None and shutil.which("cmake") is not None


class CMakeBuild(build_ext):
    """Configure + build CMakeLists.txt with ninja (if present) into the extension's folder."""

    def build_extension(self, ext):
        out_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        gen = ["-G", "Ninja"] if shutil.which("ninja") else []
        subprocess.check_call(["cmake", str(ROOT), *gen, f"-DFASTDIFF_OUTPUT_DIR={out_dir}",
                               f"-DPython_EXECUTABLE={sys.executable}",
                               "-DCMAKE_BUILD_TYPE=Release"], cwd=build_dir)
        subprocess.check_call(["cmake", "--build", ".", "-j"], cwd=build_dir)


setup(
    name="fastdiff-llm",
    version="0.1.0",
    description="Fast decoding engine for diffusion language models (LLaDA)",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=["fastdiff", "fastdiff.ops", "fastdiff.models", "fastdiff.decoding",
              "fastdiff.bench", "fastdiff.assets", "fastdiff.kernels"],
    package_dir={"fastdiff.kernels": "kernels"},
    package_data={"fastdiff.assets": ["demo/*", "*.md"]},
    install_requires=["torch>=2.11", "safetensors>=0.4", "tokenizers>=0.19", "jinja2>=3.1",
                      "numpy>=1.24", "tqdm>=4.60"],
    extras_require={
        "dev": ["pytest>=8", "pytest-benchmark>=4", "triton>=3.6", "transformers>=4.45"],
    },
    entry_points={"console_scripts": ["fastdiff=fastdiff.cli:main"]},
    ext_modules=[Extension("fastdiff._C", sources=[])] if _want_cuda() else [],
    cmdclass={"build_ext": CMakeBuild} if _want_cuda() else {},
    zip_safe=False,
)
