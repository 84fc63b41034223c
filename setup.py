"""Builds seqpatchcore._C through CMakeLists.txt against the torch that is already installed.

Install with ``pip install --no-build-isolation .`` (or ``-e .``): an isolated build
environment would fetch another torch, and the extension must match the one it runs with.

Environment variables:
    SEQPATCHCORE_BUILD_DIR: the CMake build folder (default ``build/cmake-<python tag>``), kept
        between builds so that ``scripts/test.sh`` can run ctest in it.
    SEQPATCHCORE_BUILD_TESTS: ``0`` skips the GoogleTest binaries (default ``1``).
    SEQPATCHCORE_CUDA: ``AUTO``, ``ON`` or ``OFF`` for csrc/cuda (default ``AUTO``).
    SEQPATCHCORE_JOBS: parallel compile jobs (default: the number of CPUs).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        try:
            import torch  # noqa: F401
        except ImportError as error:
            raise RuntimeError(
                "seqpatchcore builds against the installed torch, but torch is not importable "
                f"from {sys.executable}. Run scripts/setup.sh, then "
                "`pip install --no-build-isolation .`"
            ) from error

        if shutil.which("cmake") is None:
            raise RuntimeError("cmake was not found on PATH; run scripts/setup.sh")

        output_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        tag = f"py{sys.version_info.major}{sys.version_info.minor}"
        build_dir = Path(os.environ.get("SEQPATCHCORE_BUILD_DIR", ROOT / "build" / f"cmake-{tag}"))
        build_dir.mkdir(parents=True, exist_ok=True)

        configure = [
            "cmake",
            "-S", str(ROOT),
            "-B", str(build_dir),
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-DSEQPATCHCORE_PYTHON_OUTPUT_DIR={output_dir}",
            f"-DSEQPATCHCORE_BUILD_TESTS={'OFF' if os.environ.get('SEQPATCHCORE_BUILD_TESTS') == '0' else 'ON'}",
            f"-DSEQPATCHCORE_CUDA={os.environ.get('SEQPATCHCORE_CUDA', 'AUTO')}",
            "-DCMAKE_BUILD_TYPE=Release",
            # Editable installs import _C from the source tree (csrc/CMakeLists.txt); set or
            # cleared every time, since the build folder is shared by both kinds of install.
            "-DSEQPATCHCORE_INPLACE_DIR="
            + (str(ROOT / "python" / "seqpatchcore") if getattr(self, "editable_mode", False)
               else ""),
        ]
        if shutil.which("ninja") and not (build_dir / "CMakeCache.txt").exists():
            configure += ["-G", "Ninja"]
        jobs = os.environ.get("SEQPATCHCORE_JOBS", str(os.cpu_count() or 1))

        subprocess.run(configure, check=True)
        subprocess.run(["cmake", "--build", str(build_dir), "--parallel", jobs], check=True)


setup(
    ext_modules=[CMakeExtension("seqpatchcore._C")],
    cmdclass={"build_ext": CMakeBuild},
)
