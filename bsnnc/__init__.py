"""bsnnc: compile binary-weight CNNs (ONNX) into binary spiking networks for RRAM crossbars."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bsnnc")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
