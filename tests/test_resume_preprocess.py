"""Resumable preprocessing on the blockwise engine: a CLAHE run killed in any pass and rerun
gives the same bytes as an uninterrupted one, and so does a run on Dask."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from organet.preprocess import PreprocessParams, preprocess_volume
from organet.preprocess.masks import exclusion_mask_volume
from organet.volumes import Roi, convert_volume, open_volume, write_ome_zarr

SHAPE = (24, 40, 48)
CHUNKS = (8, 16, 16)  # 3 x 3 x 3 write blocks
PARAMS = {"method": "clahe", "kernel": [8, 16, 16], "clip_limit": 0.02}  # 3 x 3 x 3 contextual tiles
RUN = """
import json, sys
from organet.preprocess import PreprocessParams, preprocess_volume
from organet.volumes import open_volume
raw, out, params, chunks = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), tuple(json.loads(sys.argv[4]))
preprocess_volume(open_volume(raw), out, PreprocessParams(**params), block=chunks, chunks=chunks)
"""


def _tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (relative name -> bytes)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _run(raw: Path, out: Path, **kw: Any) -> None:
    preprocess_volume(open_volume(raw), out, PreprocessParams(**PARAMS), block=CHUNKS, chunks=CHUNKS, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    """The raw volume (uint16, uneven illumination) and the files of an uninterrupted run."""
    d = tmp_path_factory.mktemp("resume")
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij")
    a = np.clip((900 + 400 * (y > 20) + 300 * x / 48 + rng.normal(0, 120, SHAPE)), 0, 65535).astype(np.uint16)
    raw = d / "raw.zarr"
    with write_ome_zarr(raw) as w:
        w.create_image(None, SHAPE, np.uint16, (5.0, 5.0, 5.0), (10.0, 0.0, 0.0), chunks=(8, 20, 24)).write(..., a)
    _run(raw, d / "ref" / "clahe")
    return raw, _tree(d / "ref" / "clahe")


@pytest.mark.parametrize(
    ("stage", "block", "before"),
    [("statistics", [1, 2, 0], 15), ("clahe range", [0, 1, 2], 5), ("write", [2, 0, 1], 19)],
)
def test_killed_preprocess_resumes_to_identical_bytes(tmp_path, reference, stage, block, before):
    raw, ref = reference
    container = tmp_path / "container.zarr"  # the output goes into an existing container
    zarr.open_group(container, mode="w-", zarr_format=3)
    out = container / "clahe"
    faults = tmp_path / "faults.json"
    faults.write_text(
        json.dumps(
            [{"stage": stage, "blocks": [block], "times": 1, "action": "kill", "counter_dir": str(tmp_path / "counts")}]
        )
    )
    env = {**os.environ, "ORGANET_TEST_FAULTS": str(faults)}
    args = [str(raw), str(out), json.dumps(PARAMS), json.dumps(CHUNKS)]
    r = subprocess.run([sys.executable, "-c", RUN, *args], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert not out.exists()  # nothing half-written looks complete
    ledger = container / "clahe.progress"
    assert len(list((ledger / stage.replace(" ", "-")).glob("*.json"))) == before  # raster order: blocks before it
    # rerun without the fault: resumes (only the missing blocks run) and gives the same bytes
    calls: list[tuple[str, int, int]] = []
    _run(raw, out, progress=lambda *a: calls.append(a))
    assert (stage, before, 27) in calls
    assert _tree(out) == ref
    assert sorted(p.name for p in container.iterdir()) == ["clahe", "zarr.json"]  # no partial, no ledger
    v = open_volume(out)
    assert v.attrs["preprocess"] == {"method": "clahe", "clip_limit": 0.02, "kernel": [8, 16, 16], "nbins": 256}
    assert v.voxel_size == (5.0, 5.0, 5.0) and v.offset == (10.0, 0.0, 0.0) and v.chunks == CHUNKS


def test_dask_gives_the_same_bytes_as_in_process(tmp_path, reference):
    from distributed import Client, LocalCluster

    raw, ref = reference
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        _run(raw, tmp_path / "clahe", client=client)
        # conversion (a downsampled ROI) and exclusion masks run on the same engine
        roi = Roi((1, 2, 3), (22, 37, 44))
        convert_volume(raw, tmp_path / "dask" / "c.zarr", chunks=(4, 8, 8), roi=roi, downsample=2, client=client)
        mask = open_volume(tmp_path / "clahe")  # any uint8 image: foreground > 0
        exclusion_mask_volume(
            mask, tmp_path / "dask" / "e.zarr", 2, 1, block=(8, 16, 16), chunks=(8, 16, 16), client=client
        )
    assert _tree(tmp_path / "clahe") == ref
    convert_volume(raw, tmp_path / "here" / "c.zarr", chunks=(4, 8, 8), roi=roi, downsample=2)
    exclusion_mask_volume(mask, tmp_path / "here" / "e.zarr", 2, 1, block=(8, 16, 16), chunks=(8, 16, 16))
    assert _tree(tmp_path / "dask") == _tree(tmp_path / "here")
    assert len(_tree(tmp_path / "here")) > 10


def test_existing_output_is_refused_unless_overwrite_and_other_settings_are_not_mixed(tmp_path, reference):
    from organet.blockwise import Ledger
    from organet.errors import IncompatibleError, InputError

    raw, ref = reference
    out = tmp_path / "clahe"
    _run(raw, out)
    _run(raw, out)  # the same run again: complete, nothing to do
    assert _tree(out) == ref
    with pytest.raises(InputError, match="already exists"):
        preprocess_volume(
            open_volume(raw), out, PreprocessParams(**{**PARAMS, "clip_limit": 0.03}), block=CHUNKS, chunks=CHUNKS
        )
    # a run that ended between its rename and removing its ledger: the rerun just finishes it
    Ledger.open(tmp_path / "clahe.progress", json.loads((out / "zarr.json").read_text())["attributes"]["organet_run"])
    _run(raw, out)
    assert not (tmp_path / "clahe.progress").exists() and _tree(out) == ref
    # an unfinished run of other settings is not resumed with these
    other = tmp_path / "other" / "clahe"
    (tmp_path / "other" / "clahe.progress").mkdir(parents=True)
    (tmp_path / "other" / "clahe.progress" / "ledger.json").write_text(
        json.dumps({"format": "organet-ledger", "version": 2, "run": {"preprocess": {**PARAMS, "clip_limit": 0.03}}})
    )
    with pytest.raises(IncompatibleError, match="other settings"):
        _run(raw, other)
    _run(raw, other, overwrite=True)
    assert _tree(other) == _tree(out) == ref
    # overwrite replaces a complete output (atomically, by rename) with the same bytes
    _run(raw, out, overwrite=True)
    assert _tree(out) == ref
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clahe", "other"]
    assert sorted(p.name for p in other.parent.iterdir()) == ["clahe"]
