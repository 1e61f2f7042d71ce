"""Dask clusters for blockwise work: a LocalCluster, a batch-queue cluster from
dask-jobqueue (SLURM, LSF, PBS), or an existing scheduler.

Batch-queue settings come from a YAML file and/or explicit options (options win).
The file holds dask-jobqueue keyword arguments, either flat or under the cluster
kind (``slurm:``), or in dask's own layout (``jobqueue: {slurm: {...}}``)::

    slurm:
      queue: gpu
      account: cellmap
      cores: 8            # per job
      memory: 64GB        # per job
      walltime: "04:00:00"
      gpus: 1             # organet's key: one GPU per job -> --gres=gpu:1 (LSF -gpu, PBS ngpus)
      job_script_prologue: ["module load cuda", "source ~/venv/bin/activate"]

Each job runs one worker process (``processes: 1``), so with ``gpus: 1`` every
worker owns one GPU.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from organet.errors import ConfigError

CLUSTER_KINDS = ("local", "slurm", "lsf", "pbs")
_GPU_DIRECTIVE = {"slurm": "--gres=gpu:{n}", "lsf": '-gpu "num={n}"', "pbs": "-l ngpus={n}"}


def _jobqueue_class(kind: str) -> type:
    try:
        import dask_jobqueue
    except ImportError:  # pragma: no cover - a declared dependency
        raise ConfigError("--cluster slurm/lsf/pbs needs dask-jobqueue: pip install dask-jobqueue") from None
    return {"slurm": dask_jobqueue.SLURMCluster, "lsf": dask_jobqueue.LSFCluster, "pbs": dask_jobqueue.PBSCluster}[kind]


def _allowed_keys(cls: type) -> set[str]:
    from dask_jobqueue.core import Job, JobQueueCluster

    keys: set[str] = set()
    for fn in (cls.job_cls.__init__, Job.__init__, JobQueueCluster.__init__):  # type: ignore[attr-defined]
        keys |= set(inspect.signature(fn).parameters)
    return keys - {
        "self",
        "scheduler",
        "name",
        "job_cls",
        "loop",
        "asynchronous",
        "config_name",
        "base_class_kwargs",
        "job_kwargs",
        "n_workers",
    }


def load_cluster_config(path: str | Path, kind: str) -> dict[str, Any]:
    """The dask-jobqueue keyword arguments for ``kind`` in a YAML file (see the module doc)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"cluster config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"cluster config {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"cluster config {path} must be a mapping of settings")
    if isinstance(data.get("jobqueue"), dict):
        data = data["jobqueue"]
    if any(k in data for k in CLUSTER_KINDS):
        section = data.get(kind)
        if not isinstance(section, dict):
            raise ConfigError(f"cluster config {path} has no '{kind}:' section (found {sorted(data)})")
        data = section
    return dict(data)


def jobqueue_kwargs(kind: str, config: str | Path | None = None, **options: Any) -> dict[str, Any]:
    """Keyword arguments for the dask-jobqueue cluster of ``kind`` (slurm, lsf, pbs).

    ``config``: YAML file (see the module doc); ``options`` (None values ignored)
    override it. ``gpus`` becomes the scheduler's GPU directive; ``processes``
    defaults to 1 (one worker per job). Raises ValueError for unknown keys or a
    missing ``cores``/``memory``.
    """
    if kind not in ("slurm", "lsf", "pbs"):
        raise ConfigError(f"unknown batch cluster {kind!r}; expected slurm, lsf or pbs")
    kw = load_cluster_config(config, kind) if config is not None else {}
    kw.update({k: v for k, v in options.items() if v is not None})
    cls = _jobqueue_class(kind)
    gpus = kw.pop("gpus", None)
    unknown = sorted(set(kw) - _allowed_keys(cls))
    if unknown:
        raise ConfigError(f"unknown {kind} cluster setting(s) {unknown}; see dask-jobqueue's {cls.__name__} options")
    for need in ("cores", "memory"):
        if kw.get(need) is None:
            raise ConfigError(f"the {kind} cluster needs '{need}' (per job) in the cluster config or as an option")
    kw.setdefault("processes", 1)
    if gpus:
        directives = list(kw.get("job_extra_directives") or [])
        directives.append(_GPU_DIRECTIVE[kind].format(n=int(gpus)))
        kw["job_extra_directives"] = directives
    return kw


def make_jobqueue_cluster(kind: str, config: str | Path | None = None, **options: Any) -> Any:
    """A dask-jobqueue cluster (not yet scaled; ``cluster.job_script()`` shows the job it submits)."""
    cls = _jobqueue_class(kind)
    return cls(**jobqueue_kwargs(kind, config, **options))


@contextmanager
def dask_client(
    workers: int | None = None,
    cluster: str | None = None,
    scheduler: str | None = None,
    cluster_config: str | Path | None = None,
    threads_per_worker: int = 1,
    **options: Any,
) -> Iterator[Any]:
    """A Dask ``Client``: on an existing ``scheduler`` address, or on a new cluster
    of ``cluster`` kind (default ``local``) with ``workers`` workers (default 1).
    The cluster is closed on exit."""
    from distributed import Client, LocalCluster

    if scheduler is not None:
        if cluster is not None and cluster != "local" or cluster_config is not None:
            raise ConfigError("give either --scheduler or --cluster/--cluster-config, not both")
        with Client(scheduler, timeout="30s") as client:
            yield client
        return
    kind = cluster or "local"
    if kind not in CLUSTER_KINDS:
        raise ConfigError(f"unknown cluster {kind!r}; expected one of {CLUSTER_KINDS}")
    n = workers or 1
    if n < 1:
        raise ConfigError(f"workers must be >= 1, got {n}")
    if kind == "local":
        if cluster_config is not None:
            raise ConfigError("--cluster-config applies to slurm, lsf and pbs clusters")
        c = LocalCluster(n_workers=n, threads_per_worker=threads_per_worker, processes=True, dashboard_address=None)
    else:
        c = make_jobqueue_cluster(kind, cluster_config, **options)
        c.scale(n)
    with c, Client(c) as client:
        yield client
