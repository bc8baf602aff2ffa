"""Threads without oversubscription: the spiking kernels (numba, one thread per core) and
numpy's BLAS must not run their thread pools at the same time.

OpenBLAS keeps its worker threads spinning for a while after each multi-threaded call; a
numba kernel that starts meanwhile finds a core taken and runs at half speed (measured on
VGG-15, 2 cores: 5.5 s with both pools, 2.2 s with BLAS on one thread). In a spiking run BLAS
only multiplies a few full-precision layers' small products, so :func:`blas_single_threaded`
sets OpenBLAS to one thread for the run and restores the previous count afterwards — the
caller's process is left as it was. Results do not depend on it: every product in the
runtime is exact or summed in a fixed order.

The OpenBLAS library is found among the process's loaded libraries (``/proc/self/maps``;
numpy's wheels bundle it as ``libscipy_openblas*``); elsewhere (another BLAS, another OS)
this does nothing.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

#: (set, get) symbol pairs of the OpenBLAS builds numpy ships (numpy ≥ 2, then 1.26)
_SYMBOLS = [
    ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
    ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
    ("openblas_set_num_threads", "openblas_get_num_threads"),
]


@cache
def _openblas() -> tuple[Callable[[int], None], Callable[[], int]] | None:
    """(set_num_threads, get_num_threads) of the loaded OpenBLAS, or None."""
    import numpy  # noqa: F401  (loads the BLAS numpy was built with)

    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    paths = sorted({ln.split()[-1] for ln in maps.splitlines() if "openblas" in ln.lower()})
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for set_name, get_name in _SYMBOLS:
            if hasattr(lib, set_name) and hasattr(lib, get_name):
                setter, getter = getattr(lib, set_name), getattr(lib, get_name)
                setter.argtypes, setter.restype = [ctypes.c_int], None
                getter.argtypes, getter.restype = [], ctypes.c_int
                return setter, getter
    return None


@contextmanager
def blas_single_threaded() -> Iterator[None]:
    """OpenBLAS on one thread inside the block, its previous thread count after."""
    lib = _openblas()
    if lib is None:
        yield
        return
    setter, getter = lib
    before = int(getter())
    setter(1)
    try:
        yield
    finally:
        setter(before)
