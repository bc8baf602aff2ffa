"""bsnnc: compile binary-weight CNNs (ONNX) into binary spiking networks for RRAM crossbars.

Importing bsnnc changes nothing in the user's process (no environment variable, no BLAS or
thread setting): results that must not depend on the CPU get that from the algorithm
(float64 calibration, fixed-order sums, exact integer products), not from pinning kernels.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bsnnc")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
