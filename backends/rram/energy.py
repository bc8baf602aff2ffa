"""Energy per inference from the tile simulator's event counts and a per-event energy table.

A table is data — one JSON file per published source (``energy/*.json``; the shipped sets are
``isaac-32nm`` and ``neurram-130nm``), each event with its value and where it comes from. The
events and the counts they multiply:

* ``row_drive_pj`` × row activations (a spiking input drives its word line);
* ``cell_read_pj`` × row activations × the block's columns (cells on driven rows);
* ``adc_conversion_pj`` (per resolution, or one value) × sense/ADC conversions;
* ``accumulate_pj`` × (conversions added into partial sums + neuron membrane updates);
* ``packet_hop_pj_per_bit`` × packet bits × spike packets × hops.

An event a source does not give is ``null``: it is left out of the total and listed under
``energy_missing`` — never filled in with a guess. A table may name a ``base`` set and give
only the events it changes (``neurosim-cell`` and ``mnsim-cell`` are ISAAC's periphery with the
cell read energy of NeuroSim's and MNSIM's default RRAM devices — the cell energy is the most
device-dependent number, so the sets show how far it moves the total).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from bsnnc.ir.errors import BsnncError

ENERGY_SETS = ("isaac-32nm", "neurram-130nm", "neurosim-cell", "mnsim-cell")
DEFAULT_ENERGY = "isaac-32nm"
EVENTS = (
    "row_drive_pj",
    "cell_read_pj",
    "adc_conversion_pj",
    "accumulate_pj",
    "packet_hop_pj_per_bit",
)


def load_energy(spec: str = DEFAULT_ENERGY, origin: str = "--energy") -> dict[str, Any]:
    """A shipped set's name or a JSON file → the table (checked; a ``base`` set's events and
    packet size are inherited, each event keeping its own source). ``origin`` names where
    the spec came from in errors."""
    return _load(spec, origin, 0)


def _load(spec: str, origin: str, depth: int) -> dict[str, Any]:
    text, where = _read_table(spec, origin)
    try:
        table: Any = json.loads(text)
    except json.JSONDecodeError as e:
        raise BsnncError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(table, dict):
        raise BsnncError(f"{where}: expected a JSON object with 'events'")
    base = table.get("base")
    if base is not None:
        if base not in ENERGY_SETS or depth > len(ENERGY_SETS):
            raise BsnncError(f"{where}: 'base' must be one of {', '.join(ENERGY_SETS)}")
        inherited = _load(base, origin, depth + 1)
        events = table.get("events", {})
        if not isinstance(events, dict) or not set(events) <= set(EVENTS):
            raise BsnncError(f"{where}: 'events' may only give {', '.join(EVENTS)}")
        table["events"] = {**inherited["events"], **events}
        table.setdefault("packet_bits", inherited.get("packet_bits", 16))
    _check(table, where)
    return table


def _check(table: dict[str, Any], where: str) -> None:
    """Every event has a source and a value that is null, a non-negative number, or (the ADC)
    numbers by resolution in bits; ``packet_bits`` is a positive integer."""
    events = table.get("events")
    if not isinstance(events, dict) or set(events) != set(EVENTS):
        raise BsnncError(
            f"{where}: 'events' must give exactly {', '.join(EVENTS)} (null when unknown)"
        )
    for key, entry in events.items():
        if not isinstance(entry, dict) or "value" not in entry or not entry.get("source"):
            raise BsnncError(f"{where}: event {key} needs a 'value' and a 'source'")
        value = entry["value"]
        by_bits = key == "adc_conversion_pj" and isinstance(value, dict)
        values = list(value.items()) if by_bits else [("", value)]
        for bits, v in values:
            if by_bits and not (isinstance(bits, str) and bits.isdigit() and int(bits) > 0):
                raise BsnncError(f"{where}: event {key}: resolution {bits!r} is not a bit count")
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or v < 0):
                raise BsnncError(
                    f"{where}: event {key}: value {v!r} is not a non-negative number or null"
                )
    bits = table.get("packet_bits", 16)
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < 1:
        raise BsnncError(f"{where}: packet_bits must be a positive integer, got {bits!r}")


#: an energy table is a small JSON document
MAX_TABLE_BYTES = 1 << 20


def _read_table(spec: str, origin: str) -> tuple[str, str]:
    """The JSON text of a shipped set or a file, and how to name it in errors."""
    if spec in ENERGY_SETS:
        text = (
            resources.files("bsnnc.backends.rram")
            .joinpath("energy", f"{spec}.json")
            .read_text("utf-8")
        )
        return text, f"energy set {spec}"
    p = Path(spec)
    if not p.is_file():
        raise BsnncError(f"{origin} {spec}: no such file or set (sets: {', '.join(ENERGY_SETS)})")
    if p.stat().st_size > MAX_TABLE_BYTES:
        raise BsnncError(f"{origin} {p}: {p.stat().st_size:,} bytes is not an energy table")
    try:
        return p.read_text(encoding="utf-8"), str(p)
    except UnicodeDecodeError as e:
        raise BsnncError(f"{origin} {p}: not a UTF-8 JSON energy table ({e})") from None


def _adc(value: Any, bits: int) -> float | None:
    if value is None or isinstance(value, int | float):
        return value
    if str(bits) in value:
        return float(value[str(bits)])
    higher = sorted(int(b) for b in value if int(b) >= bits)
    return float(value[str(higher[0])]) if higher else None


def energy_report(counts: dict[str, float], table: dict[str, Any], adc_bits: int) -> dict[str, Any]:
    """Energy per inference (pJ) by component, from per-inference event counts."""
    ev = {k: table["events"][k]["value"] for k in EVENTS}
    adc = _adc(ev["adc_conversion_pj"], adc_bits)
    bits = int(table.get("packet_bits", 16))
    parts = {
        "row_drive": (ev["row_drive_pj"], counts["row_activations"]),
        "cell_read": (ev["cell_read_pj"], counts["cell_reads"]),
        "adc": (adc, counts["conversions"]),
        "accumulate": (ev["accumulate_pj"], counts["conversions"] + counts["neuron_updates"]),
        "noc": (
            None if ev["packet_hop_pj_per_bit"] is None else ev["packet_hop_pj_per_bit"] * bits,
            counts["packet_hops"],
        ),
    }
    energy = {k: float(e * n) for k, (e, n) in parts.items() if e is not None}
    return {
        "energy_pj": {"total": sum(energy.values()), **energy},
        "energy_set": table.get("name", "custom"),
        "energy_missing": sorted(k for k, (e, _) in parts.items() if e is None),
        "energy_source": table.get("source", ""),
    }
