"""``bsnnc simulate --executor ray`` (issue 14): shards on a two-node Ray cluster give the JSON of
one local process, byte for byte outside the timings, also when a worker process is killed."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from clirun import TIMING_KEYS, cli, fails, ok

from bsnnc.compiler.ray_executor import shard_bounds

ray = pytest.importorskip("ray", reason="the ray extra is not installed")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """Two Ray nodes of one CPU each on this machine."""
    from ray.cluster_utils import Cluster

    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": 96 << 20, "include_dashboard": False},
    )
    c.add_node(num_cpus=1, object_store_memory=96 << 20)
    c.wait_for_nodes()
    yield c
    c.shutdown()


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ray") / "digits.tiles"
    assert cli(["compile", "digits", "-o", out]) == 0
    return out


def _run(argv: list[object], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    out, _ = ok(["simulate", *argv, "--json"], capsys)
    result: dict[str, Any] = json.loads(out)
    return result


def _same(local: dict[str, Any], sharded: dict[str, Any]) -> None:
    assert set(local) == set(sharded)
    for k in local:
        if k not in TIMING_KEYS:
            assert sharded[k] == local[k], k
    ex = sharded["executor"]
    assert ex["kind"] == "ray" and ex["shards"] == 4 and len(ex["seconds_per_shard"]) == 4


@pytest.mark.parametrize(
    "flags",
    [
        ["--backend", "numpy", "--early-exit", "20"],
        # every crossbar counter and the energy, with seeded non-idealities and early exit
        ["--backend", "rram", "--early-exit", "20", "--adc-bits", "6", "--variation", "0.1",
         "--stuck-at", "0.01", "--seed", "7"],
    ],
    ids=["numpy-early-exit", "rram-nonideal-early-exit"],
)  # fmt: skip
def test_sharded_run_equals_the_local_run(
    flags: list[str],
    cluster: Any,
    artifact: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The images as a relative .npz path: the workers get it absolute, the JSON names it as
    given, as a local run does."""
    from bsnnc.runtime.datasets import load_images

    images = load_images("digits", limit=200)
    np.savez(tmp_path / "set.npz", x=images.x, y=images.y)
    monkeypatch.chdir(tmp_path)
    common = [artifact, "--images", "set.npz", "-T", "32", *flags]
    local = _run(common, capsys)
    ray_flags = ["--executor", "ray", "--address", cluster.address, "--shards", "4"]
    sharded = _run([*common, *ray_flags], capsys)
    _same(local, sharded)
    assert sharded["images_source"] == "set.npz"
    assert sharded["executor"]["nodes"] == 2  # both nodes took shards
    if "rram" in flags:
        assert sharded["energy_pj"] == local["energy_pj"] and sharded["cycles"] == local["cycles"]
    assert sharded["mean_exit_step"] < 32  # early exit took effect


def _shard_workers() -> list[int]:
    """PIDs of Ray worker processes running a shard (Ray titles them ``ray::shard_task``)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if cmd.startswith(b"ray::shard_task"):
                pids.append(int(d.name))
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds workers in /proc")
def test_a_killed_worker_is_retried_and_the_result_is_unchanged(
    cluster: Any, artifact: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = [artifact, "--images", "digits", "-T", "128"]
    local = _run(common, capsys)
    killed: list[int] = []
    stop = threading.Event()

    def kill_one() -> None:
        while not stop.is_set() and not killed:
            for pid in _shard_workers():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
            time.sleep(0.005)

    killer = threading.Thread(target=kill_one)
    killer.start()
    try:
        sharded = _run(
            [*common, "--executor", "ray", "--address", cluster.address, "--shards", "4"], capsys
        )
    finally:
        stop.set()
        killer.join()
    assert killed, "no shard worker was seen running"
    _same(local, sharded)


def test_a_bad_shard_fails_the_run_with_its_message(
    cluster: Any, artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.zeros((8, 1, 4, 4), np.float32))
    run = ["simulate", artifact, "--executor", "ray", "--address", cluster.address, "--json"]
    # both shards fail; the first to report names itself
    err = fails([*run, "--images", wrong, "--shards", "2"], capsys, "on node", "[1, 4, 4]")
    assert re.search(r"shard [01] \(images [04]\.\.[37]\)", err), err
    fails([*run, "--images", tmp_path / "absent.npz"], capsys, "node", "absent.npz does not exist")
    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(unlabelled, x=np.zeros((8, 1, 8, 8), np.float32))
    plot = tmp_path / "curve.png"
    fails([*run, "--images", unlabelled, "--plot", plot], capsys, "--plot needs labelled images")
    assert not plot.exists()


def test_without_ray(
    artifact: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
    fails(["simulate", artifact, "--executor", "ray"], capsys, "pip install 'bsnnc[ray]'")
    fails(["simulate", artifact, "--shards", "2"], capsys, "--shards", "needs --executor ray")
    fails(["simulate", artifact, "--retries", "1"], capsys, "--retries", "needs --executor ray")


def test_an_unreachable_cluster_fails_at_once(
    artifact: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ray itself would retry for minutes: the port is probed first (exit 3: the cluster)."""
    t0 = time.perf_counter()
    assert cli(["simulate", artifact, "--executor", "ray", "--address", "127.0.0.1:1"]) == 3
    out, err = capsys.readouterr()
    assert not out and "--address 127.0.0.1:1: no Ray cluster answers there" in err
    assert time.perf_counter() - t0 < 30


def test_shard_bounds_cover_the_images_in_order() -> None:
    assert shard_bounds(10, 4) == [(0, 2), (2, 5), (5, 7), (7, 10)]
    assert shard_bounds(3, 8) == [(0, 1), (1, 2), (2, 3)]
    for n, s in [(1, 1), (450, 7), (50_000, 64)]:
        b = shard_bounds(n, s)
        assert b[0][0] == 0 and b[-1][1] == n
        assert all(x[1] == y[0] for x, y in itertools.pairwise(b))
        assert max(x[1] - x[0] for x in b) - min(x[1] - x[0] for x in b) <= 1
