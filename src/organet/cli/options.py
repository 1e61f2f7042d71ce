"""Option types shared by the commands, and the helpers that interpret them.

* ROI: ``--roi-vox`` / ``--roi-nm`` and :func:`parse_roi_options`.
* voxel size: :data:`VoxelSize` (nm, z y x; overrides file metadata).
* Dask cluster: ``--workers --cluster --scheduler --cluster-config --queue --cores
  --memory --walltime --gpus`` (help panel "Dask cluster"), collected into
  :class:`ClusterOptions`, whose :meth:`ClusterOptions.client` opens the client.
* output: :data:`Overwrite`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast

import typer

from organet.errors import InputError

F = TypeVar("F", bound=Callable[..., Any])

if TYPE_CHECKING:  # pragma: no cover
    from organet.volumes import Roi, Volume

CLUSTER_PANEL = "Dask cluster (blockwise)"

# --------------------------------------------------------------------------- ROI and geometry

RoiVox = Annotated[str | None, typer.Option("--roi-vox", help="ROI in voxels: z0:z1,y0:y1,x0:x1 (empty = whole axis)")]
RoiNm = Annotated[str | None, typer.Option("--roi-nm", help="ROI in nm (world coordinates): z0:z1,y0:y1,x0:x1")]
VoxelSize = Annotated[
    tuple[float, float, float] | None, typer.Option("--voxel-size", help="nm, (z, y, x); overrides the file metadata")
]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="replace an existing output")]


def refuse_existing_folder(output: str | Path, overwrite: bool) -> None:
    """An analysis output folder that exists and holds anything is replaced only with ``--overwrite``
    (checked before any work; its files are then rewritten atomically one by one)."""
    p = Path(output).expanduser()
    if not overwrite and (p.is_file() or (p.is_dir() and any(p.iterdir()))):
        raise InputError(f"output already exists: {p} (pass --overwrite to replace it)")


def parse_roi_options(volume: Volume, roi_vox: str | None, roi_nm: str | None) -> Roi | None:
    """The ROI of ``--roi-vox`` or ``--roi-nm`` in ``volume`` (None: neither given)."""
    from organet.volumes import parse_roi

    if roi_vox and roi_nm:
        raise InputError("give either --roi-vox or --roi-nm, not both")
    if roi_vox:
        return parse_roi(roi_vox, "vox", volume)
    if roi_nm:
        return parse_roi(roi_nm, "nm", volume)
    return None


# --------------------------------------------------------------------------- Dask cluster

Workers = Annotated[
    int | None, typer.Option(help="run blockwise on Dask with this many workers", rich_help_panel=CLUSTER_PANEL)
]
Cluster = Annotated[
    str | None, typer.Option(help="Dask cluster: local | slurm | lsf | pbs", rich_help_panel=CLUSTER_PANEL)
]
Scheduler = Annotated[
    str | None, typer.Option(help="join a running Dask scheduler (tcp://...)", rich_help_panel=CLUSTER_PANEL)
]
ClusterConfig = Annotated[
    Path | None, typer.Option(help="YAML of batch-queue settings (docs/cluster.md)", rich_help_panel=CLUSTER_PANEL)
]
Queue = Annotated[str | None, typer.Option(help="batch queue / partition", rich_help_panel=CLUSTER_PANEL)]
Cores = Annotated[int | None, typer.Option(help="cores per batch job", rich_help_panel=CLUSTER_PANEL)]
Memory = Annotated[str | None, typer.Option(help="memory per batch job, e.g. 32GB", rich_help_panel=CLUSTER_PANEL)]
Walltime = Annotated[str | None, typer.Option(help="batch job walltime", rich_help_panel=CLUSTER_PANEL)]
Gpus = Annotated[
    int | None, typer.Option(help="GPUs per batch job (one worker per job)", rich_help_panel=CLUSTER_PANEL)
]


@dataclass(frozen=True)
class ClusterOptions:
    """The Dask cluster options of one command line."""

    workers: int | None = None
    cluster: str | None = None
    scheduler: str | None = None
    cluster_config: Path | None = None
    queue: str | None = None
    cores: int | None = None
    memory: str | None = None
    walltime: str | None = None
    gpus: int | None = None

    @property
    def batch_options(self) -> dict[str, Any]:
        """The batch-job settings given (queue, cores, memory, walltime, gpus)."""
        opts = {
            "queue": self.queue,
            "cores": self.cores,
            "memory": self.memory,
            "walltime": self.walltime,
            "gpus": self.gpus,
        }
        return {k: v for k, v in opts.items() if v is not None}

    @property
    def distributed(self) -> bool:
        """True when a Dask client is asked for (workers, a cluster, a scheduler or batch settings)."""
        return any(v is not None for v in (self.workers, self.cluster, self.scheduler, self.cluster_config)) or bool(
            self.batch_options
        )

    @contextmanager
    def client(self) -> Iterator[Any]:
        """A Dask ``Client`` as asked for, or None when no cluster option was given."""
        batch = self.batch_options
        if batch and (self.cluster or "local") == "local":
            raise InputError(f"--{next(iter(batch))} applies to --cluster slurm, lsf or pbs")
        if not self.distributed:
            yield None
            return
        from organet.blockwise.cluster import dask_client

        with dask_client(self.workers, self.cluster, self.scheduler, self.cluster_config, **batch) as client:
            yield client


_CLUSTER_PARAMS: dict[str, Any] = {
    "workers": Workers,
    "cluster": Cluster,
    "scheduler": Scheduler,
    "cluster_config": ClusterConfig,
    "queue": Queue,
    "cores": Cores,
    "memory": Memory,
    "walltime": Walltime,
    "gpus": Gpus,
}


def with_cluster_options(fn: F) -> F:
    """Give a command the Dask cluster options (one help panel) as one ``dask: ClusterOptions`` argument.

    The command declares ``dask: ClusterOptions`` as its last parameter; the command line
    shows ``--workers``, ``--cluster``, ``--scheduler``, ``--cluster-config``, ``--queue``,
    ``--cores``, ``--memory``, ``--walltime`` and ``--gpus`` instead.
    """
    sig = inspect.signature(fn, eval_str=True)
    if "dask" not in sig.parameters:
        raise TypeError(f"{fn.__name__} needs a 'dask: ClusterOptions' parameter")  # a defect in the command
    params = [p for p in sig.parameters.values() if p.name != "dask"]
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params += [inspect.Parameter(n, kind, default=None, annotation=a) for n, a in _CLUSTER_PARAMS.items()]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        dask = ClusterOptions(**{n: kwargs.pop(n, None) for n in _CLUSTER_PARAMS})
        return fn(*args, dask=dask, **kwargs)

    annotations = {k: v for k, v in fn.__annotations__.items() if k != "dask"}
    wrapper.__annotations__ = {**annotations, **_CLUSTER_PARAMS}
    wrapper.__dict__["__signature__"] = sig.replace(parameters=params)
    return cast(F, wrapper)


__all__ = [
    "with_cluster_options",
    "CLUSTER_PANEL",
    "Cluster",
    "ClusterConfig",
    "ClusterOptions",
    "Cores",
    "Gpus",
    "Memory",
    "Overwrite",
    "Queue",
    "RoiNm",
    "RoiVox",
    "Scheduler",
    "VoxelSize",
    "Walltime",
    "Workers",
    "parse_roi_options",
]
