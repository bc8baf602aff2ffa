"""The hardware configuration shared by the partitioner and the simulator.

One JSON (or TOML) file or a shipped preset (``rram-128``, ``rram-256``): array geometry, rows
per input (1 for a B-SNN's 0/1 spikes, 2 for a BNN's ±1 inputs), reference columns (outside
the data columns), rows driven at once, columns per ADC and its bits, accumulator bits, clock,
arrays per tile and NoC latency, the per-event energy table it uses (``energy``, see
:mod:`bsnnc.backends.rram.energy`), plus the published source of each setting (``sources``).
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from bsnnc.ir.errors import BsnncError

PRESETS = ("rram-128", "rram-256")
DEFAULT = "rram-128"


@dataclass(frozen=True)
class HwConfig:
    """An RRAM crossbar accelerator."""

    name: str
    rows: int = 128
    columns: int = 128
    rows_per_input: int = 1
    reference_columns: int = 1
    max_rows_driven: int = 128
    columns_per_adc: int = 8
    adc_bits: int = 5
    accumulator_bits: int = 24
    clock_hz: int = 1_000_000_000
    arrays_per_tile: int = 8
    noc_hop_cycles: int = 1
    #: per-event energy table (a set in backends/rram/energy or a JSON file)
    energy: str = "isaac-32nm"
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _read(spec: str) -> tuple[dict[str, Any], str]:
    if spec in PRESETS:
        text = resources.files("bsnnc.backends.rram").joinpath("presets", f"{spec}.json")
        return json.loads(text.read_text(encoding="utf-8")), f"preset {spec}"
    p = Path(spec)
    if not p.is_file():
        raise BsnncError(f"--hw {spec}: no such file or preset (presets: {', '.join(PRESETS)})")
    try:
        if p.suffix == ".toml":
            return tomllib.loads(p.read_text(encoding="utf-8")), str(p)
        return json.loads(p.read_text(encoding="utf-8")), str(p)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise BsnncError(f"{p}: not a valid hardware configuration file ({e})") from None


def load_hw(spec: str = DEFAULT) -> HwConfig:
    """A preset name or a .json/.toml path → a checked :class:`HwConfig`."""
    data, where = _read(spec)
    if not isinstance(data, dict):
        raise BsnncError(f"{where}: expected an object of settings, got {type(data).__name__}")
    known = {f.name: f for f in fields(HwConfig)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise BsnncError(f"{where}: unknown setting(s) {', '.join(unknown)}")
    data.setdefault("name", Path(spec).stem)
    for key, value in data.items():
        if key in ("name", "energy"):
            if not isinstance(value, str) or not value:
                raise BsnncError(f"{where}: {key} must be a non-empty string, got {value!r}")
        elif key == "sources":
            if not isinstance(value, dict):
                raise BsnncError(f"{where}: sources must map settings to their sources")
        elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BsnncError(f"{where}: {key} must be a positive integer, got {value!r}")
    hw = HwConfig(**data)
    if hw.max_rows_driven > hw.rows or hw.rows_per_input > hw.rows:
        raise BsnncError(f"{where}: max_rows_driven and rows_per_input must not exceed rows")
    if hw.columns_per_adc > hw.columns:
        raise BsnncError(f"{where}: columns_per_adc must not exceed columns")
    return hw
