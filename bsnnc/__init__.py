"""bsnnc: compile binary-weight CNNs (ONNX) into binary spiking networks for RRAM crossbars."""

import os
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def _has_avx2_fma() -> bool:
    """True on a Linux x86-64 CPU with AVX2 and FMA (what OpenBLAS's Haswell kernels need)."""
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines()
                  if line.startswith("flags")), [])  # fmt: skip
    return "avx2" in flags and "fma" in flags


def _pin_blas_kernels() -> None:
    """The same float32 results on every AVX2 CPU: numpy's OpenBLAS picks its GEMM kernels by
    CPU, and the Haswell and SkylakeX kernels sum in different orders, so calibration
    thresholds (and golden files) would differ in the last bit between machines. This pins
    the Haswell kernels unless the user set ``OPENBLAS_CORETYPE``; it only takes effect when
    bsnnc is imported before numpy (as by the ``bsnnc`` command)."""
    if "numpy" not in sys.modules and "OPENBLAS_CORETYPE" not in os.environ and _has_avx2_fma():
        os.environ["OPENBLAS_CORETYPE"] = "Haswell"


_pin_blas_kernels()

try:
    __version__ = version("bsnnc")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
