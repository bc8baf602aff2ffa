"""The conversion options shared by ``bsnnc compile`` and ``bsnnc opt``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bsnnc.backends.rram.hw import PRESETS
from bsnnc.backends.rram.lower import RramOptions
from bsnnc.compiler.console import (
    MAX_IMAGES,
    V_INIT_NAMES,
    float_in,
    int_in,
    percentile_arg,
    v_init_arg,
)
from bsnnc.compiler.passes import PassOptions
from bsnnc.ir.errors import DataError
from bsnnc.ir.graph import Graph
from bsnnc.runtime.datasets import NAMED, NPZ_FORMAT, Images, load_images

#: the defaults of the command line are the library's: one set
_PASS, _RRAM = PassOptions(), RramOptions()

#: ``--duplicate F``: F× the arrays at most (the greedy duplication adds one copy at a time)
MAX_DUPLICATE = 100.0


def _v_init_name(f: float) -> str:
    return next((name for name, v in V_INIT_NAMES.items() if v == f), f"{f:g}")


def add_conversion_options(p: Any) -> None:
    """Add the ``conversion (ANN → B-SNN)`` option group to a parser."""
    conv = p.add_argument_group("conversion (ANN → B-SNN)")
    conv.add_argument(
        "--reset",
        choices=("subtract", "zero"),
        default=_PASS.reset,
        help="IF reset: subtract θ (default, lower latency) or reset to zero",
    )
    conv.add_argument(
        "--v-init",
        type=v_init_arg,
        default=_PASS.v_init,
        metavar="zero|half|F",
        help="IF membranes start at F·θ: zero, half (0.5) or F from 0 to 1 in steps of 1/256 "
        f"(default: {_v_init_name(_PASS.v_init)}; a register preset on the crossbar: no cycles "
        "or energy)",
    )
    conv.add_argument(
        "--percentile",
        type=percentile_arg,
        default=_PASS.percentile,
        help="percentile of the calibration statistic that maps to the maximum rate, or 'max' "
        "(0 < P ≤ 100; default: %(default)s)",
    )
    conv.add_argument(
        "--norm",
        choices=("layer", "channel"),
        default=_PASS.granularity,
        help="one threshold scale per layer (default) or per output channel (approximate)",
    )
    conv.add_argument(
        "--calib-stat",
        choices=("image-max", "activations"),
        default=_PASS.statistic,
        help="statistic: each image's maximum activation (default, the paper) or every "
        "activation value (the authors' code)",
    )
    conv.add_argument(
        "--calib",
        metavar="NAME|PATH",
        help="calibration images: digits, cifar10, cifar100, imagenet or an .npz; the training "
        "split is used (default: digits for 1×8×8 models, otherwise required)",
    )
    conv.add_argument(
        "--calib-limit",
        type=int_in(1, MAX_IMAGES),
        default=512,
        metavar="N",
        help=f"calibration images to use (1..{MAX_IMAGES:,}; default: %(default)s; the paper "
        "used 3500 for CIFAR-100 and 80 for ImageNet)",
    )
    conv.add_argument(
        "--data-dir", help="directory of cifar/imagenet data (default: $BSNNC_DATA or ./data)"
    )


def add_hardware_options(p: Any) -> None:
    """Add the ``hardware (RRAM crossbar)`` option group to a parser."""
    hw = p.add_argument_group("hardware (RRAM crossbar)")
    hw.add_argument(
        "--hw",
        default=_RRAM.hw,
        metavar="PRESET|FILE",
        help=f"hardware configuration: {', '.join(PRESETS)} or a .json/.toml file "
        "(default: %(default)s)",
    )
    hw.add_argument(
        "--pack",
        action="store_true",
        help="pack partly filled blocks of different layers into shared arrays",
    )
    hw.add_argument(
        "--duplicate",
        type=float_in(1.0, MAX_DUPLICATE),
        default=_RRAM.duplicate,
        metavar="F",
        help="spend up to F× the arrays on copies of the bottleneck layers to balance the "
        f"pipeline (1..{MAX_DUPLICATE:g}; default: 1, no copies)",
    )
    hw.add_argument(
        "--fp-layers",
        choices=("digital", "bitsliced"),
        default=_RRAM.fp_layers,
        help="full-precision first/last layers: digital (no arrays, default) or bit-sliced "
        "onto arrays (8-bit weights)",
    )


def check_images(images: Images, g: Graph, what: str) -> Images:
    """``images`` unless their per-sample shape differs from the graph input's (then a
    :class:`DataError` naming both)."""
    want = tuple(int(d or 0) for d in g.inputs()[0].type.shape[1:])
    got = tuple(images.x.shape[1:])
    if got != want:
        raise DataError(
            f"{what} {images.name}: images are {list(got)} per sample, the model expects "
            f"{list(want)}"
        )
    return images


def missing_calib() -> Images:
    """The calibration images of a compile without ``--calib`` (and not a 1×8×8 model): a
    :class:`DataError` that says what ``--calib`` accepts."""
    raise DataError(
        "fold-threshold-normalization needs calibration images: pass --calib NAME|PATH, with "
        f"NAME one of {', '.join(NAMED)} (their training split; cifar and imagenet are read from "
        f"--data-dir or $BSNNC_DATA), or PATH {NPZ_FORMAT}; without --calib only 1×8×8 models "
        "calibrate (on digits)"
    )


def pass_options(args: argparse.Namespace, g: Graph) -> PassOptions:
    """PassOptions from the parsed conversion options; calibration images load lazily
    (default: digits for 1×8×8 models; otherwise, without ``--calib``, loading them fails with
    :func:`missing_calib`'s message)."""
    spec = args.calib
    if spec is None and tuple(g.inputs()[0].type.shape[1:]) == (1, 8, 8):
        spec = "digits"
    if spec is not None and Path(spec).suffix == ".npz":
        spec = str(Path(spec).resolve())
    limit, root = args.calib_limit, args.data_dir

    def calib() -> Images:
        assert spec is not None
        return check_images(load_images(spec, split="train", limit=limit, root=root), g, "--calib")

    return PassOptions(
        reset=args.reset,
        v_init=args.v_init,
        percentile=args.percentile,
        granularity=args.norm,
        statistic=args.calib_stat,
        calib=calib if spec is not None else missing_calib,
    )


def rram_options(args: argparse.Namespace) -> RramOptions:
    """RramOptions from the parsed hardware options."""
    return RramOptions(
        hw=args.hw, pack=args.pack, fp_layers=args.fp_layers, duplicate=args.duplicate
    )
