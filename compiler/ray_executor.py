"""Sharded simulation on a Ray cluster: ``bsnnc simulate … --executor ray``.

The image set ``[0, N)`` is cut into S contiguous shards ``[⌊iN/S⌋, ⌊(i+1)N/S⌋)``; each is one
Ray task that runs :func:`bsnnc.compiler.shards.run_shard` — the same code as a local run —
and the driver merges the results in image order (:func:`bsnnc.compiler.shards.merge`), so
every number of the JSON (predictions, accuracy per step, spike rates, #OPS, exit steps, the
tile simulator's counters and energy, ``spike_digest``) equals the single-process run's.

* **Data stays where it is.** The artifact's bytes go into the object store once
  (``ray.put``) and every task gets the reference. Images are not shipped: a task reads its
  own slice from the source (a name, or an absolute path that must be visible on the node:
  an .npz, the CIFAR archives, an ImageNet folder — whose shard decodes only its own files);
  the image count comes from one small task on a worker too. A path a worker cannot read
  fails the run with the node's name and the path.
* **One CPU per task.** A task asks Ray for one CPU and runs its kernels on one thread, so a
  node of C cores runs C shards at once without oversubscription. ``--shards`` defaults to the
  cluster's CPUs.
* **Faults.** A task whose worker process dies is rerun by Ray up to ``--retries`` times (a
  rerun recomputes the shard from its first image: the merge is unchanged). An error in the
  input (a :class:`BsnncError` in a task) is not retried: the run fails with that shard's
  message, exit 2, and prints no JSON. A cluster that cannot be reached, or a shard whose
  workers died more often than the retries allow, is :class:`ClusterError` (exit 3).
* **Progress.** A small actor keeps each shard's count of finished images (a rerun restarts its
  count); the driver polls it for one progress bar over all images.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.progress import Progress

from bsnnc.compiler.options import check_images
from bsnnc.compiler.shards import ShardResult, SimOptions, merge, run_shard, tile_simulator
from bsnnc.ir.errors import BsnncError
from bsnnc.runtime.artifact import read_artifact
from bsnnc.runtime.datasets import ImageSource

#: how often the driver redraws the progress bar (seconds)
POLL_SECONDS = 0.2


class ClusterError(BsnncError):
    """The Ray cluster failed the run: unreachable, or a shard's workers kept dying."""

    exit_code = 3


@dataclass(frozen=True)
class RaySettings:
    """``--address`` (None: a local Ray instance for this run), ``--shards`` (None: the
    cluster's CPUs) and ``--retries``."""

    address: str | None
    shards: int | None
    retries: int


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BsnncError(
            "--executor ray needs Ray: pip install 'bsnnc[ray]' (or pip install 'ray==2.60.0')"
        ) from None
    return ray


def shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    """``min(shards, n)`` contiguous ranges covering ``[0, n)``, sizes differing by at most 1."""
    s = max(1, min(shards, n))
    edges = [i * n // s for i in range(s + 1)]
    return list(itertools.pairwise(edges))


def _node() -> str:
    """This worker's node: host name, IP and the start of Ray's node id (nodes may share a
    host)."""
    import ray

    context = ray.get_runtime_context()
    ip = context.worker.node_ip_address
    return f"{socket.gethostname()} ({ip}, id {context.get_node_id()[:8]})"


def _renamed(e: BsnncError, prefix: str) -> BsnncError:
    """``e`` with ``prefix`` before its message (same type and exit code)."""
    e.message = f"{prefix}: {e.message}"
    e.args = (e.message,)
    return e


def count_task(source: ImageSource) -> tuple[int, bool]:
    """(On a worker) the number of images of ``source`` and whether they have labels."""
    try:
        return source.count(), source.labelled()
    except BsnncError as e:
        raise _renamed(e, f"node {_node()}") from None


class ProgressCounter:
    """(A Ray actor) finished images per shard; a rerun shard restarts its count."""

    def __init__(self) -> None:
        self.done: dict[int, int] = {}

    def report(self, shard: int, done: int) -> None:
        self.done[shard] = done

    def total(self) -> int:
        return sum(self.done.values())


def shard_task(
    data: bytes,
    where: str,
    opts: SimOptions,
    source: ImageSource,
    index: int,
    bounds: tuple[int, int],
    progress: Any,
) -> tuple[ShardResult, str]:
    """(On a worker) simulate images ``bounds`` of ``source`` with the artifact ``data``;
    returns the result and the node's name."""
    start, stop = bounds
    try:
        art = read_artifact(where, data)
        images = check_images(source.load(start, stop), art.graph, "--images")
        sim = tile_simulator(art, where, opts)
        done = [0]

        def advance(n: int) -> None:
            done[0] += n
            progress.report.remote(index, done[0])

        with _one_thread():
            result = run_shard(art.graph, sim, opts, images, advance)
    except BsnncError as e:
        raise _renamed(e, f"shard {index} (images {start}..{stop - 1}) on node {_node()}") from None
    return result, _node()


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """numba's kernels on one thread inside the block (the task holds one CPU)."""
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(before)


#: seconds to wait for a TCP connection to ``--address`` before giving up
CONNECT_SECONDS = 5.0


def _probe(address: str) -> None:
    """Refuse an ``--address`` whose port does not answer (Ray itself retries for minutes)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto", or no port: Ray resolves it
    host = host.removeprefix("[").removesuffix("]") or "127.0.0.1"  # [::1]:6379
    try:
        socket.create_connection((host, int(port)), CONNECT_SECONDS).close()
    except OSError as e:
        raise ClusterError(
            f"--address {address}: no Ray cluster answers there ({e.strerror or e}); start one "
            "with `ray start --head`, or leave out --address for a local instance"
        ) from None


def _connect(ray: Any, address: str | None) -> None:
    if address is not None:
        _probe(address)
    try:
        ray.init(
            address=address or "local",
            include_dashboard=False,
            logging_level=logging.ERROR,
            log_to_driver=False,
        )
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise ClusterError(f"--executor ray: cannot start or reach {where}: {e}") from None


def _get(ray: Any, ref: Any, what: str, retries: int) -> Any:
    """``ray.get(ref)``: a task's input error raised as itself, a dead cluster or worker as
    :class:`ClusterError`."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, BaseException):
            raise cause from None
        raise
    except ray.exceptions.RayError as e:
        died = isinstance(e, ray.exceptions.WorkerCrashedError | ray.exceptions.NodeDiedError)
        after = f" (rerun {retries} times)" if died else ""
        first = str(e).splitlines()[0] if str(e) else ""
        raise ClusterError(f"{what}: Ray failed it{after}: {type(e).__name__}: {first}") from None


def run_on_ray(
    artifact: Path,
    data: bytes,
    opts: SimOptions,
    source: ImageSource,
    settings: RaySettings,
    bar: Progress,
    needs_labels: bool = False,
) -> tuple[ShardResult, dict[str, Any]]:
    """Simulate ``source`` in shards on Ray (see the module docstring) with the artifact's
    bytes ``data`` (read once, as checked); the merged result and the ``executor`` facts of
    the JSON (``seconds``: from counting the images to the merged result, the shards' ANN
    passes included; ``startup_seconds``: connecting to or starting the cluster before)."""
    ray = _ray()
    own = not ray.is_initialized()
    # Ray prints its raylet's messages (e.g. "A worker died …") to stdout: stderr here, so
    # that stdout holds only the command's output (the JSON)
    with contextlib.redirect_stdout(sys.stderr):
        t0 = time.perf_counter()
        try:
            if own:
                _connect(ray, settings.address)
            started = time.perf_counter()
            result, executor = _run(
                ray, _Job(artifact, data, opts, source, settings, needs_labels), bar
            )
            executor["seconds"] = round(time.perf_counter() - started, 3)
            executor["startup_seconds"] = round(started - t0, 3)
            return result, executor
        finally:
            if own and ray.is_initialized():
                ray.shutdown()


@dataclass(frozen=True)
class _Job:
    artifact: Path
    data: bytes
    opts: SimOptions
    source: ImageSource
    settings: RaySettings
    needs_labels: bool


def _run(ray: Any, job: _Job, bar: Progress) -> tuple[ShardResult, dict[str, Any]]:
    artifact, opts, source, settings = job.artifact, job.opts, job.source, job.settings
    task = ray.remote(num_cpus=1, max_retries=settings.retries, retry_exceptions=False)
    counted = task(count_task).remote(source)
    n, labelled = _get(ray, counted, "counting the images", settings.retries)
    if job.needs_labels and not labelled:
        raise BsnncError(f"--plot needs labelled images ({source.name or source.spec} has no y)")
    shards = settings.shards or max(1, int(ray.cluster_resources().get("CPU", 1)))
    bounds = shard_bounds(n, shards)
    stored = ray.put(job.data)
    # progress only: restarted if its process dies, and a failed poll skips one redraw
    counter = ray.remote(num_cpus=0, max_restarts=-1)(ProgressCounter).remote()
    run = task(shard_task)
    refs = [
        run.remote(stored, str(artifact), opts, source, i, b, counter) for i, b in enumerate(bounds)
    ]
    progress = bar.add_task("", total=n)
    shard_of = {r: i for i, r in enumerate(refs)}
    results: dict[int, tuple[ShardResult, str]] = {}
    try:
        pending = list(refs)
        while pending:  # a failed shard stops the run as soon as it is known
            ready, pending = ray.wait(pending, num_returns=1, timeout=POLL_SECONDS)
            for r in ready:
                i = shard_of[r]
                what = f"shard {i} (images {bounds[i][0]}..{bounds[i][1] - 1})"
                results[i] = _get(ray, r, what, settings.retries)
            with contextlib.suppress(ray.exceptions.RayError):
                bar.update(progress, completed=ray.get(counter.total.remote()))
    except BaseException:
        for r in pending:
            ray.cancel(r, force=True)
        raise
    ordered = [results[i] for i in range(len(bounds))]
    merged = merge([r for r, _ in ordered], opts.timesteps)
    executor = {
        "kind": "ray",
        "address": settings.address or "local",
        "shards": len(bounds),
        "nodes": len({node for _, node in ordered}),
        "seconds_per_shard": [round(r.seconds, 3) for r, _ in ordered],
        "retries": settings.retries,
    }
    return merged, executor
