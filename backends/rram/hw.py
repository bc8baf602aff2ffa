"""The hardware configuration shared by the partitioner and the simulator.

One JSON (or TOML) file or a shipped preset (``rram-128``, ``rram-256``): array geometry, rows
per input (1 for a B-SNN's 0/1 spikes, 2 for a BNN's ±1 inputs), reference columns (outside
the data columns), rows driven at once, columns per ADC and its bits, accumulator bits, clock,
arrays per tile and NoC latency, the per-event energy table it uses (``energy``, see
:mod:`bsnnc.backends.rram.energy`), plus the published source of each setting (``sources``).

Every integer setting is checked, however the configuration is built (a file, a preset, the
``hw_config`` an artifact recorded): an integer in the range of :data:`RANGES` (geometry up to
65,536, clock up to 10^12 Hz, …), with ``rows_per_input`` and ``max_rows_driven`` at most
``rows`` and ``columns_per_adc`` at most ``columns``. Errors name the file and the setting and
give the valid range.
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

#: the valid range (inclusive) of every integer setting
RANGES: dict[str, tuple[int, int]] = {
    "rows": (1, 65_536),
    "columns": (1, 65_536),
    "rows_per_input": (1, 16),
    "reference_columns": (1, 65_536),
    "max_rows_driven": (1, 65_536),
    "columns_per_adc": (1, 65_536),
    "adc_bits": (1, 32),
    "accumulator_bits": (1, 64),
    "clock_hz": (1, 10**12),
    "arrays_per_tile": (1, 65_536),
    "noc_hop_cycles": (1, 1_000_000),
}
#: settings bounded by another setting: (setting, the setting it may not exceed)
BOUNDED_BY = (
    ("rows_per_input", "rows"),
    ("max_rows_driven", "rows"),
    ("columns_per_adc", "columns"),
)


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

    def __post_init__(self) -> None:
        """Every setting in its valid range (``ValueError`` naming the setting otherwise)."""
        check_settings(self.as_dict())

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def check_settings(data: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first setting of ``data`` (settings by name, missing
    ones take their defaults) that is not valid: ``name`` and ``energy`` non-empty strings,
    ``sources`` a mapping, each integer setting in its :data:`RANGES` and the
    :data:`BOUNDED_BY` relations."""
    for key in ("name", "energy"):
        value = data.get(key, "x")
        if not isinstance(value, str) or not value:
            raise ValueError(f"{key} must be a non-empty string, got {value!r}")
    if not isinstance(data.get("sources", {}), dict):
        raise ValueError("sources must map settings to their sources")
    defaults = {f.name: f.default for f in fields(HwConfig) if f.name in RANGES}
    values = {**defaults, **{k: v for k, v in data.items() if k in RANGES}}
    for key, (lo, hi) in RANGES.items():
        value = values[key]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError(
                f"{key} must be a positive integer ({lo} to {hi:,}), got {value!r}"
                if lo == 1
                else f"{key} must be an integer from {lo} to {hi:,}, got {value!r}"
            )
    for key, bound in BOUNDED_BY:
        if values[key] > values[bound]:
            raise ValueError(
                f"{key} must not exceed {bound} ({values[bound]}), got {values[key]} "
                f"(valid: 1 to {values[bound]})"
            )


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
    try:
        check_settings(data)
    except ValueError as e:
        raise BsnncError(f"{where}: {e}") from None
    return HwConfig(**data)
