"""The tile simulator executes the tile program and reproduces the numpy SNN reference bit for
bit; its event counters obey their definitions."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from zoo import ZOO

from bsnnc.backends.rram.cost import Counters, cycles
from bsnnc.backends.rram.energy import ENERGY_SETS, EVENTS, load_energy
from bsnnc.backends.rram.mapping import accumulator_bits
from bsnnc.backends.rram.sim import NonIdeal, TileSimulator, input_planes
from bsnnc.compiler.cli import main
from bsnnc.ir.errors import BsnncError
from bsnnc.runtime.artifact import read_artifact
from bsnnc.runtime.datasets import Images, load_images
from bsnnc.runtime.simulate import metrics, run_chunks


def compile_to(tmp_path: Path, args: list[str]) -> Path:
    out = tmp_path / "m.tiles"
    assert main(["compile", *args, "-o", str(out)]) == 0
    return out


def both(
    path: Path, images: Images, T: int, early: float | None = None
) -> tuple[dict, dict, Counters, TileSimulator]:  # type: ignore[type-arg]
    art = read_artifact(path)
    g = art.graph
    ref = metrics(g, images, run_chunks(g, images, T, 32, early), T, early)
    sim = TileSimulator(art, str(path))
    c = Counters.zeros(T)
    got = metrics(
        g,
        images,
        run_chunks(g, images, T, 32, early, runner=lambda x, t: sim.run(x, t, c)),
        T,
        early,
    )
    return ref, got, c, sim


KEYS = (
    "spike_digest",
    "predictions",
    "accuracy_per_timestep",
    "spike_rates",
    "ifr",
    "normalized_ops",
)


@pytest.mark.parametrize("name", sorted(ZOO))
@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["--reset", "zero", "--pack"],
        ["--hw", "rram-256", "--fp-layers", "bitsliced"],
        ["--v-init", "zero"],
        ["--v-init", "0.75", "--norm", "channel", "--reset", "zero"],
    ],
)
def test_bit_exact_with_the_reference(
    name: str, extra: list[str], zoo_data: Path, tmp_path: Path
) -> None:
    path = compile_to(
        tmp_path, [str(zoo_data / f"{name}.onnx"), "--calib", str(zoo_data / f"{name}.npz"), *extra]
    )
    data = np.load(zoo_data / f"{name}.npz")
    ref, got, c, _ = both(path, Images(name, data["x"][:24], data["y"][:24]), 24)
    for k in KEYS:
        assert got[k] == ref[k], k
    assert c.reads_issued.sum() > 0


def test_digits_bit_exact_with_early_exit(tmp_path: Path) -> None:
    path = compile_to(tmp_path, ["digits", "--pack"])
    images = load_images("digits", limit=80)
    ref, got, _, _ = both(path, images, 40, early=60.0)
    for k in (*KEYS, "mean_exit_step", "exit_step_histogram", "final_accuracy"):
        assert got[k] == ref[k], k


def test_counters_follow_their_definitions(zoo_data: Path, tmp_path: Path) -> None:
    """gap_binary's binary dense layer: a spike drives one row per column-block array, every
    input row is read (issued or skipped) once per image and step, conversions = issued reads ×
    block width."""
    path = compile_to(
        tmp_path, [str(zoo_data / "gap_binary.onnx"), "--calib", str(zoo_data / "gap_binary.npz")]
    )
    data = np.load(zoo_data / "gap_binary.npz")
    images = Images("g", data["x"][:10], data["y"][:10])
    T = 12
    ref, _, c, sim = both(path, images, T)
    g = read_artifact(path).graph
    positions_blocks = 0
    for layer, blocks in sim.blocks.items():
        n = g.node_map()[layer]
        positions = int(np.prod([int(d or 1) for d in n.type.shape[2:]])) if n.op == "conv2d" else 1
        positions_blocks += positions * len(blocks)
    np.testing.assert_array_equal(
        c.reads_issued + c.reads_skipped, np.full(T, positions_blocks * 10)
    )
    assert np.all(c.conversions >= c.reads_issued) and np.all(c.row_activations >= c.reads_issued)
    # the dense layer reads exactly the spikes entering it (1 column block: 12 outputs ≤ 128)
    dense = next(n for n in g.nodes if n.op == "dense" and n.result in sim.blocks)
    conv = next(n for n in g.nodes if n.op == "conv2d" and n.result in sim.blocks)
    spikes_into_dense = ref["ifr"][f"%{dense.result} {dense.loc}"] * 16 * 10
    assert spikes_into_dense > 0
    assert c.layer_rows[dense.result].sum() == pytest.approx(spikes_into_dense, abs=1e-6)
    assert c.row_activations.sum() == sum(v.sum() for v in c.layer_rows.values())
    cyc = cycles(c, 10)
    assert cyc["cycles_lower_bound"] <= cyc["cycles"] <= cyc["cycles_upper_bound"]
    assert cyc["critical_layer"] in (f"%{dense.result}", f"%{conv.result}")


def test_simulate_backend_rram_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = compile_to(tmp_path, ["digits"])
    capsys.readouterr()
    common = [str(path), "--limit", "40", "-T", "24", "--json"]
    assert main(["simulate", *common]) == 0
    ref = json.loads(capsys.readouterr().out)
    assert main(["simulate", *common, "--backend", "rram"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["backend"] == "rram" and out["predictions"] == ref["predictions"]
    assert out["spike_digest"] == ref["spike_digest"]
    for key in ("cycles", "latency_s", "row_activations", "reads_issued", "reads_skipped", "arrays",
                "arrays_bound_per_layer", "arrays_bound_global", "utilization"):  # fmt: skip
        assert key in out, key
    assert out["latency_s"] == pytest.approx(out["cycles"] / 1e9)
    assert out["arrays"] == out["arrays_bound_per_layer"] == 10


def _run(path: Path, images: Images, T: int, ni: NonIdeal) -> dict:  # type: ignore[type-arg]
    art = read_artifact(path)
    sim = TileSimulator(art, str(path), nonideal=ni)
    c = Counters.zeros(T)
    return metrics(
        art.graph,
        images,
        run_chunks(art.graph, images, T, 64, None, runner=lambda x, t: sim.run(x, t, c)),
        T,
        None,
    )


def test_non_idealities_are_seeded_and_hurt_in_proportion(tmp_path: Path) -> None:
    path = compile_to(tmp_path, ["digits"])
    images = load_images("digits", limit=120)
    T = 32
    ideal = _run(path, images, T, NonIdeal())
    assert NonIdeal().ideal and not NonIdeal(stuck_at=0.1).ideal
    a = _run(path, images, T, NonIdeal(stuck_at=0.05, seed=3))
    b = _run(path, images, T, NonIdeal(stuck_at=0.05, seed=3))
    other = _run(path, images, T, NonIdeal(stuck_at=0.05, seed=4))
    assert a["spike_digest"] == b["spike_digest"] != ideal["spike_digest"]
    assert other["spike_digest"] != a["spike_digest"]
    # a 1-bit ADC reads every column sum as 0: no current reaches the binary layers' neurons
    dead = _run(path, images, T, NonIdeal(adc_bits=1))
    assert all(v == 0 for k, v in dead["spike_rates"].items() if not k.startswith("%1 "))
    assert dead["final_accuracy"] < 0.3 < ideal["final_accuracy"]
    half = _run(path, images, T, NonIdeal(stuck_at=0.5, seed=0))
    assert half["final_accuracy"] < ideal["final_accuracy"] - 0.2
    mild = _run(path, images, T, NonIdeal(variation=0.02, seed=0))
    assert abs(mild["final_accuracy"] - ideal["final_accuracy"]) <= 0.05


def test_non_ideal_flags_need_the_rram_backend(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = compile_to(tmp_path, ["digits"])
    capsys.readouterr()
    assert main(["simulate", str(path), "--limit", "4", "-T", "2", "--stuck-at", "0.1"]) == 2
    assert "need --backend rram" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:  # out of range: refused by argparse
        main(
            [
                "simulate",
                str(path),
                "--limit",
                "4",
                "-T",
                "2",
                "--backend",
                "rram",
                "--stuck-at",
                "1.5",
            ]
        )
    assert refused.value.code == 2
    assert (
        main(
            [
                "simulate",
                str(path),
                "--limit",
                "8",
                "-T",
                "4",
                "--backend",
                "rram",
                "--adc-bits",
                "4",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["nonideal"] == {"adc_bits": 4, "variation": 0.0, "stuck_at": 0.0, "seed": 0}


def test_duplication_cuts_cycles_not_spikes(tmp_path: Path) -> None:
    images = load_images("digits", limit=40)
    plain = _rram(compile_to(tmp_path, ["digits"]), images)
    dup_path = tmp_path / "dup.tiles"
    assert main(["compile", "digits", "-o", str(dup_path), "--duplicate", "2"]) == 0
    dup = _rram(dup_path, images)
    assert dup["spike_digest"] == plain["spike_digest"]
    assert dup["reads_issued"] == plain["reads_issued"]
    assert dup["arrays"] > plain["arrays"]
    assert dup["cycles"] < plain["cycles"]
    with pytest.raises(SystemExit) as refused:  # out of range: refused by argparse
        main(["compile", "digits", "-o", str(tmp_path / "x.tiles"), "--duplicate", "0.5"])
    assert refused.value.code == 2


def _rram(path: Path, images: Images) -> dict:  # type: ignore[type-arg]
    art = read_artifact(path)
    sim = TileSimulator(art, str(path))
    c = Counters.zeros(16)
    m = metrics(
        art.graph,
        images,
        run_chunks(art.graph, images, 16, 64, None, runner=lambda x, t: sim.run(x, t, c)),
        16,
        None,
    )
    m.update(cycles(c, len(images)))
    m["reads_issued"] = int(c.reads_issued.sum())
    m["arrays"] = len([s for s in sim.program.decls if s.op == "array"])
    return m


def test_energy_is_counts_times_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = compile_to(tmp_path, ["digits"])
    capsys.readouterr()
    assert (
        main(["simulate", str(path), "--limit", "20", "-T", "16", "--backend", "rram", "--json"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    table = load_energy("isaac-32nm")
    ev = {k: v["value"] for k, v in table["events"].items()}
    expect = {
        "row_drive": ev["row_drive_pj"] * out["row_activations"],
        "adc": ev["adc_conversion_pj"]["5"] * out["conversions"],  # rram-128: 5-bit ADC
        "accumulate": ev["accumulate_pj"] * (out["conversions"] + out["neuron_updates"]),
        "noc": ev["packet_hop_pj_per_bit"] * table["packet_bits"] * out["packet_hops"],
        "cell_read": ev["cell_read_pj"] * out["cell_reads"],
    }
    for k, v in expect.items():
        assert out["energy_pj"][k] == pytest.approx(v)
    assert out["energy_pj"]["total"] == pytest.approx(sum(expect.values()))
    assert out["energy_missing"] == [] and out["energy_set"] == "isaac-32nm"
    assert out["cell_reads"] >= out["row_activations"] > 0
    # the cell-energy sets keep ISAAC's periphery and change only the cell reads
    for name in ("neurosim-cell", "mnsim-cell"):
        args = [str(path), "--limit", "20", "-T", "16", "--backend", "rram", "--json"]
        assert main(["simulate", *args, "--energy", name]) == 0
        other = json.loads(capsys.readouterr().out)
        cell = load_energy(name)["events"]["cell_read_pj"]["value"]
        assert other["energy_pj"]["cell_read"] == pytest.approx(cell * out["cell_reads"])
        for k in expect:
            if k != "cell_read":
                assert other["energy_pj"][k] == pytest.approx(out["energy_pj"][k])
    neurram = load_energy("neurram-130nm")
    assert neurram["events"]["cell_read_pj"]["value"] is None  # not given: reported missing


@pytest.mark.parametrize(
    ("events", "extra", "message"),
    [
        ({"cell_read_pj": {"value": "0.1", "source": "s"}}, {}, "not a non-negative number"),
        ({"row_drive_pj": {"value": -1.0, "source": "s"}}, {}, "not a non-negative number"),
        ({"adc_conversion_pj": {"value": {"x": 1.0}, "source": "s"}}, {}, "not a bit count"),
        ({}, {"packet_bits": "many"}, "packet_bits must be a positive integer"),
    ],
)
def test_energy_values_are_checked(
    events: dict[str, Any], extra: dict[str, Any], message: str, tmp_path: Path
) -> None:
    p = tmp_path / "e.json"
    p.write_text(json.dumps({"base": "isaac-32nm", "events": events, **extra}))
    with pytest.raises(BsnncError, match=message):
        load_energy(str(p))


def test_bad_energy_table_fails_before_simulating(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = compile_to(tmp_path, ["digits"])
    hw = tmp_path / "hw.json"
    hw.write_text(json.dumps({"name": "mine", "energy": "isaac-7nm"}))
    capsys.readouterr()
    args = ["simulate", str(path), "--backend", "rram", "--limit", "4", "-T", "4"]
    assert main([*args, "--hw", str(hw)]) == 2
    err = capsys.readouterr().err
    assert "energy table of hardware mine: isaac-7nm: no such file or set" in err
    assert main([*args, "--energy", "nope"]) == 2
    assert "--energy nope: no such file or set" in capsys.readouterr().err


def test_energy_table_with_a_base(tmp_path: Path) -> None:
    p = tmp_path / "mine.json"
    mine = {"value": 0.5, "source": "my measurement"}
    p.write_text(
        json.dumps({"name": "mine", "base": "isaac-32nm", "events": {"cell_read_pj": mine}})
    )
    table = load_energy(str(p))
    isaac = load_energy("isaac-32nm")
    assert table["events"]["cell_read_pj"] == mine
    assert table["events"]["adc_conversion_pj"] == isaac["events"]["adc_conversion_pj"]
    p.write_text(json.dumps({"name": "same", "base": "neurosim-cell"}))  # inherits everything
    same = load_energy(str(p))
    assert same["events"] == load_energy("neurosim-cell")["events"]
    assert same["packet_bits"] == isaac["packet_bits"]
    p.write_text(json.dumps({"base": "isaac-64nm", "events": {}}))
    with pytest.raises(BsnncError, match="'base' must be one of"):
        load_energy(str(p))
    p.write_text(json.dumps({"base": "isaac-32nm", "events": {"laser_pj": mine}}))
    with pytest.raises(BsnncError, match="may only give"):
        load_energy(str(p))


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"events": {}}, "must give exactly"),
        ({"events": {k: {"value": 1.0} for k in EVENTS}}, "needs a 'value' and a 'source'"),
    ],
)
def test_energy_table_errors(table: dict, message: str, tmp_path: Path) -> None:  # type: ignore[type-arg]
    p = tmp_path / "e.json"
    p.write_text(json.dumps(table))
    with pytest.raises(BsnncError, match=message):
        load_energy(str(p))
    with pytest.raises(BsnncError, match="isaac-32nm, neurram-130nm"):
        load_energy("nope")


def test_energy_sets_cite_every_event() -> None:
    for name in ENERGY_SETS:
        table = load_energy(name)
        assert table["source"]
        assert all(entry["source"] for entry in table["events"].values())


def test_custom_hw_travels_in_the_artifact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hw = tmp_path / "small.toml"
    hw.write_text(
        'rows = 64\ncolumns = 64\nmax_rows_driven = 64\nadc_bits = 6\nenergy = "neurram-130nm"\n'
    )
    path = compile_to(tmp_path, ["digits", "--hw", str(hw)])
    hw.unlink()  # the artifact must not need the file any more
    capsys.readouterr()
    assert (
        main(["simulate", str(path), "--backend", "rram", "--limit", "10", "-T", "8", "--json"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    # digits' binary layers on 64×64 arrays: conv2 288×64 → 5, conv3 576×64 → 9, fc1 256×128 → 4×2
    assert out["arrays"] == 5 + 9 + 8 and out["hw"] == "small"
    assert out["energy_set"] == "neurram-130nm"


def test_row_drive_cap_multiplies_read_phases(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Driving at most 32 of 128 rows at once makes every full-height read take 4 phases."""
    capped = tmp_path / "capped.json"
    capped.write_text(json.dumps({"name": "capped", "max_rows_driven": 32}))
    runs = {}
    for name, hw in (("full", "rram-128"), ("capped", str(capped))):
        path = tmp_path / f"{name}.tiles"
        assert main(["compile", "digits", "-o", str(path), "--hw", hw]) == 0
        capsys.readouterr()
        assert (
            main(["simulate", str(path), "--backend", "rram", "--limit", "10", "-T", "8", "--json"])
            == 0
        )
        runs[name] = json.loads(capsys.readouterr().out)
    assert runs["capped"]["spike_digest"] == runs["full"]["spike_digest"]
    assert runs["capped"]["reads_issued"] == runs["full"]["reads_issued"]
    assert runs["full"]["cycles"] < runs["capped"]["cycles"] <= 4 * runs["full"]["cycles"]


PER_IMAGE = ("row_activations", "reads_issued", "reads_skipped", "conversions", "cell_reads",
             "neuron_updates", "spike_packets", "packet_hops", "psum_adds")  # fmt: skip


@pytest.mark.parametrize("fp_layers", ["digital", "bitsliced"])
def test_early_exit_counts_each_image_up_to_its_exit(fp_layers: str, tmp_path: Path) -> None:
    """The hardware stops an image at its exit step: the counters with early exit equal the
    sum, over images, of running each image alone for exactly its exit steps (the network is
    causal, so its first steps do not depend on later ones)."""
    path = compile_to(tmp_path, ["digits", "--fp-layers", fp_layers])
    images = load_images("digits", limit=12)
    T, early = 30, 60.0
    art = read_artifact(path)
    sim = TileSimulator(art, str(path))
    c = Counters.zeros(T)
    chunks = run_chunks(art.graph, images, T, 5, early, runner=lambda x, t: sim.run(x, t, c, early))
    steps = np.concatenate(chunks.exit_step)
    assert steps.min() > 1 and steps.max() < T  # all exit before T, none at step 1
    alone = Counters.zeros(T)
    for i, s in enumerate(steps):
        one = Counters.zeros(int(s))
        sim.run(images.x[i : i + 1], int(s), one)
        for k in PER_IMAGE:
            getattr(alone, k)[: int(s)] += getattr(one, k)
    for k in PER_IMAGE:
        np.testing.assert_array_equal(getattr(c, k), getattr(alone, k), err_msg=k)
    full = Counters.zeros(T)
    run_chunks(art.graph, images, T, 5, None, runner=lambda x, t: sim.run(x, t, full))
    assert c.reads_issued.sum() < full.reads_issued.sum()
    cyc, full_cyc = cycles(c, len(images)), cycles(full, len(images))
    assert cyc["cycles"] < full_cyc["cycles"]


def test_input_planes_reconstruct_the_quantized_input() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 2, 5, 5)).astype(np.float32)
    x[1] = 0.0  # an all-zero image sets no bit in any plane
    planes = input_planes(x, spikes=False, bits=8)
    assert all(p.dtype == np.uint8 and set(np.unique(p)) <= {0, 1} for p in planes)
    # 8 bit planes of the positive inputs, then 8 of the negative ones
    assert len(planes) == 16
    value = sum(p.astype(np.int64) << (j % 8) for j, p in enumerate(planes[:8])) - sum(
        p.astype(np.int64) << (j % 8) for j, p in enumerate(planes[8:])
    )
    top = np.abs(x).reshape(3, -1).max(axis=1).reshape(3, 1, 1, 1)
    expect = np.rint(np.divide(x, top, out=np.zeros_like(x), where=top > 0) * 255)
    np.testing.assert_array_equal(value, expect)
    assert not any(p[1].any() for p in planes)
    spikes = (rng.random((4, 6)) < 0.3).astype(np.float32)
    (only,) = input_planes(spikes, spikes=True)
    # a real-valued input is bit-serial even when some of its images happen to be 0/1
    assert len(input_planes(spikes, spikes=False)) == 16
    np.testing.assert_array_equal(only, spikes)


def test_bitsliced_layers_count_their_reads(tmp_path: Path) -> None:
    """digits with bit-sliced first/last layers: the first conv's rows driven are, per output
    position, the set bits of the 8-bit input magnitudes in its 3×3 window (computed here by
    shifting the padded image, not by im2col), once per image; the last layer's are the spikes
    entering it;
    each issued read converts all b·N = 8·N slice columns. Spikes stay bit-exact."""
    sliced = compile_to(tmp_path, ["digits", "--fp-layers", "bitsliced"])
    images = load_images("digits", limit=10)
    T = 8
    ref, got, c, sim = both(sliced, images, T)
    for k in KEYS:
        assert got[k] == ref[k], k
    g = read_artifact(sliced).graph
    first, last = (
        n for n in g.nodes if n.op in ("conv2d", "dense") and n.result not in sim.kernels
    )
    # the first conv: 3×3, stride 1, pad 1 on a 1×8×8 image
    x = images.x[:, 0].astype(np.float64)
    top = np.abs(x).reshape(10, -1).max(axis=1).reshape(10, 1, 1)
    q = np.rint(np.abs(x) / top * 255).astype(np.uint8)
    bits = np.unpackbits(q[..., None], axis=-1).sum(axis=-1)  # set bits per pixel
    padded = np.pad(bits, ((0, 0), (1, 1), (1, 1)))
    window = sum(padded[:, dy : dy + 8, dx : dx + 8] for dy in range(3) for dx in range(3))
    arrays = len(sim.blocks[first.result])  # 9 rows × 8·32 columns: 2 arrays side by side
    assert arrays == 2
    # the image is the same at every step: the program reads it in its `once` block
    assert any(s.op == "mvm" and str(s.args[0]) == f"%{first.result}" for s in sim.program.once)
    once = np.zeros(T, np.int64)
    once[0] = window.sum() * arrays
    np.testing.assert_array_equal(c.layer_rows[first.result], once)
    src = g.node_map()[last.value_operands()[0]]
    spikes_into_last = ref["spike_rates"][f"%{src.result} {src.loc}"] * 128 * T * 10
    assert spikes_into_last > 0
    assert c.layer_rows[last.result].sum() == pytest.approx(spikes_into_last, abs=1e-6)
    (tmp_path / "plain").mkdir()
    plain = compile_to(tmp_path / "plain", ["digits"])
    _, _, c_plain, _ = both(plain, images, T)
    extra_rows = sum(c.layer_rows[n.result].sum() for n in (first, last))
    assert c.row_activations.sum() == c_plain.row_activations.sum() + extra_rows
    assert c.conversions.sum() > c_plain.conversions.sum()
    assert set(cycles(c, 10)) == set(cycles(c_plain, 10))
    assert cycles(c, 10)["cycles"] > cycles(c_plain, 10)["cycles"]


def test_noc_latency_is_a_pipeline_stage(tmp_path: Path) -> None:
    """A send over h > 0 hops takes h × noc_hop_cycles in every step (and image) in which its
    layer spikes; sends within a tile take none."""
    hw = tmp_path / "slow_noc.json"
    hw.write_text(json.dumps({"name": "slow-noc", "noc_hop_cycles": 40}))
    path = compile_to(tmp_path, ["digits", "--hw", str(hw)])
    images = load_images("digits", limit=20)
    T = 12
    art = read_artifact(path)
    sim = TileSimulator(art, str(path))
    c = Counters.zeros(T)
    chunks = run_chunks(art.graph, images, T, 7, None, runner=lambda x, t: sim.run(x, t, c))
    sends = {str(s.args[0])[1:]: int(str(s.args[2])) for s in sim.program.body if s.op == "send"}
    assert any(h > 0 for h in sends.values()) and any(h == 0 for h in sends.values())
    for layer, hops in sends.items():
        stage = c.layer_cycles.get(f"{layer}.send")
        if hops == 0:
            assert stage is None
            continue
        spiking = (np.concatenate(chunks.spikes[layer], axis=1) > 0).sum(axis=1)  # [T]
        np.testing.assert_array_equal(stage, spiking * hops * 40)
    fast = tmp_path / "fast"
    fast.mkdir()
    plain = TileSimulator(read_artifact(p := compile_to(fast, ["digits"])), str(p))
    c1 = Counters.zeros(T)
    run_chunks(art.graph, images, T, 7, None, runner=lambda x, t: plain.run(x, t, c1))
    assert cycles(c, 20)["cycles_upper_bound"] > cycles(c1, 20)["cycles_upper_bound"]


def test_simulate_hw_may_change_the_periphery_not_the_geometry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = compile_to(tmp_path, ["digits"])
    slow = tmp_path / "slow.toml"
    slow.write_text('name = "slow"\nclock_hz = 100000000\nmax_rows_driven = 32\n')
    common = [str(path), "--backend", "rram", "--limit", "10", "-T", "8", "--json"]
    capsys.readouterr()
    assert main(["simulate", *common]) == 0
    base = json.loads(capsys.readouterr().out)
    assert main(["simulate", *common, "--hw", str(slow)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["hw"] == "slow" and out["spike_digest"] == base["spike_digest"]
    assert out["cycles"] > base["cycles"]  # 4 read phases per full block
    assert out["latency_s"] == pytest.approx(out["cycles"] / 1e8)
    assert main(["simulate", *common, "--hw", "rram-256"]) == 2
    err = capsys.readouterr().err
    assert "rows = 256" in err and "compiled for rows = 128" in err and "recompile" in err
    assert main(["simulate", str(path), "--limit", "4", "-T", "2", "--hw", "rram-128"]) == 2
    assert "--hw needs --backend rram" in capsys.readouterr().err
    narrow = tmp_path / "narrow.json"
    narrow.write_text(json.dumps({"name": "narrow", "accumulator_bits": 4}))
    assert main(["simulate", *common, "--hw", str(narrow)]) == 2
    assert "accumulator_bits = 4, but the partial sums" in capsys.readouterr().err
    for bad, message in (
        ([1, 2], "expected an object of settings, got list"),
        ({"columns_per_adc": 1000}, "columns_per_adc must not exceed columns"),
        ({"name": 7}, "name must be a non-empty string"),
        ({"rows": True}, "rows must be a positive integer"),
    ):
        narrow.write_text(json.dumps(bad))
        assert main(["simulate", *common, "--hw", str(narrow)]) == 2
        assert message in capsys.readouterr().err, message


def test_accumulator_width_is_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # |Σ| of K = 576 spike × ±1 products ≤ 576 → 11 bits with the sign; 27 products of 8-bit
    # inputs and 8-bit weights ≤ 27·255·128 = 881,280 → 21 bits
    assert accumulator_bits(576, 1, 1) == 11 and accumulator_bits(27, 8, 8) == 21
    assert accumulator_bits(1, 1, 1) == 2
    narrow = tmp_path / "narrow.json"
    narrow.write_text(json.dumps({"name": "narrow", "accumulator_bits": 10}))
    capsys.readouterr()
    assert main(["compile", "digits", "-o", str(tmp_path / "n.tiles"), "--hw", str(narrow)]) == 2
    err = capsys.readouterr().err
    assert (
        "/conv3/Conv" in err
        and "need 11-bit accumulators" in err
        and "accumulator_bits = 10" in err
    )
    assert not (tmp_path / "n.tiles").exists()
    assert main(["compile", "digits", "-o", str(tmp_path / "ok.tiles"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    mapping = report.get("mapping", report)
    assert mapping["accumulator_bits_needed"] == 11


def test_bitsliced_counts_do_not_depend_on_chunking(zoo_data: Path, tmp_path: Path) -> None:
    """Whether an input is applied bit-serially follows its IR type, not the values of the
    images that happen to share a chunk."""
    path = compile_to(
        tmp_path,
        [str(zoo_data / "avg_after_relu.onnx"), "--calib", str(zoo_data / "avg_after_relu.npz"),
         "--fp-layers", "bitsliced"],
    )  # fmt: skip
    data = np.load(zoo_data / "avg_after_relu.npz")
    images = Images("a", data["x"][:8], data["y"][:8])
    art = read_artifact(path)
    sim = TileSimulator(art, str(path))
    counts = []
    for size in (1, 3, 8):
        c = Counters.zeros(6)
        run_chunks(art.graph, images, 6, size, None, runner=partial(sim.run, counters=c))
        counts.append({k: getattr(c, k).tolist() for k in PER_IMAGE})
    assert counts[0] == counts[1] == counts[2]
