"""Seeded FIB-SEM-like phantom of clathrin-coated pits and vesicles, with exact ground truth.

Geometry (all nm, axes (z, y, x), isotropic ``voxel`` nm voxels):

* the **plasma membrane** is the plane ``y = y_pm``; the cell (cell mask) is ``y >= y_pm``,
  the extracellular space ``y < y_pm``;
* an **internal membrane** is the plane ``y = y_im`` (organelle lumen ``y > y_im``);
* a **pit** is a spherical cap: a sphere of (membrane mid-line) radius ``R`` whose centre lies
  ``c`` nm from the membrane plane on the cytosolic side (``c < 0``: shallow cap, ``c = 0``:
  U-shaped hemisphere, ``c > 0``: Ω-shaped). The flat membrane has a hole where the sphere meets
  it; the cap's lumen belongs to the space on the other side of the membrane. A dark coat of
  thickness ``coat`` covers the cytosolic (outer) side of the cap;
* a **vesicle** is a closed sphere of membrane radius ``R`` with the same coat.

The membrane is ``membrane`` nm thick (centred on the mid-line), so the dark band of a coated
structure spans radii ``[R - membrane/2, R + membrane/2 + coat]``. Ground truth follows the
definitions in ``docs/analysis-coated-pits.md``:

* ``height = c + R + coat/2`` (membrane plane to the apex of the dark band's mid-line);
* ``neck_width``: lumen opening in the membrane plane, ``2 sqrt((R - membrane/2)^2 - c^2)`` for a
  cap, ``2 (r_n - membrane/2)`` for an Ω pit whose sphere sits on a neck tube of mid radius ``r_n``;
* ``fwhm``: width of the dark band's mid-line (radius ``R + coat/2``) at half the height,
  ``2 sqrt((R + coat/2)^2 - (height/2 - c)^2)``;
* ``diameter = 2 (R + coat/2)`` for vesicles (mid-line of the band), ellipse axes likewise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

# intensities (uint8) before blur and noise
EXTRACELLULAR, CYTOSOL, ORGANELLE, VESICLE_LUMEN = 195.0, 150.0, 175.0, 175.0
MEMBRANE, COAT = 25.0, 70.0

# pit shapes: (R range nm, c as a fraction of R)
SHAPES: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "shallow": ((55.0, 62.0), (-0.50, -0.45)),
    "U": ((42.0, 48.0), (-0.05, 0.05)),
    "omega": ((38.0, 44.0), (0.0, 0.0)),  # c from the neck: sqrt(R^2 - r_n^2) + neck length
}
NECK_MID_RADIUS = (17.0, 21.0)  # Ω pits: mid-membrane radius of the neck tube (nm)
NECK_LENGTH = (8.0, 12.0)  # Ω pits: length of the neck tube (nm)


@dataclass
class CoatedPitPhantom:
    raw: np.ndarray  # uint8 (z, y, x)
    prediction: np.ndarray  # uint8 0/1: membrane + coat of every coated structure
    cell_mask: np.ndarray  # uint8 0/1: the cell (y >= y_pm)
    labels: np.ndarray  # uint16 object id per predicted voxel
    truth: list[dict[str, Any]] = field(default_factory=list)
    voxel_size: tuple[float, float, float] = (5.0, 5.0, 5.0)


def _pit_truth(R: float, c: float, r_n: float, membrane: float, coat: float) -> dict[str, float]:
    rm = R + coat / 2
    h = c + R + coat / 2
    y = h / 2 - c
    fwhm = float(2 * np.sqrt(rm**2 - y**2)) if abs(y) < rm else float("nan")
    return {
        "height_nm": h,
        "neck_width_nm": float(2 * (r_n - membrane / 2)),
        "fwhm_nm": fwhm,
        "major_nm": 2 * (R + coat / 2),
        "minor_nm": 2 * (R + coat / 2),
        "circle_diameter_nm": 2 * (R + coat / 2),
    }


def make_coated_pit_phantom(
    seed: int = 0,
    voxel: float = 5.0,
    grid: tuple[int, int] = (3, 4),
    cell_vox: int = 36,
    membrane: float = 10.0,
    coat: float = 20.0,
    blur_nm: float = 5.0,
    noise: float = 12.0,
    layout: list[str] | None = None,
    coat_range: tuple[float, float] | None = None,
    tilt_deg: tuple[float, float] = (0.0, 0.0),
    border_nm: float | None = None,
    ny: int = 100,
) -> CoatedPitPhantom:
    """Build the phantom. ``layout`` lists one object per grid cell (row-major over (z, x)):
    ``"pm:shallow"``, ``"pm:U"``, ``"pm:omega"``, ``"im:<shape>"`` or ``"vesicle"``.
    The default holds 6 endocytic pits (2 of each shape), 3 internal pits and 3 vesicles.

    Harder variants (the defaults reproduce the original phantom exactly):

    * ``coat_range`` (nm): each object draws its coat thickness from this range instead of ``coat``;
    * ``tilt_deg`` (degrees about the z and the x axis): the membranes (and the whole scene) are
      rotated about the volume centre, so the membrane normal is tilted against every axis;
    * ``border_nm``: the objects of the first grid column are moved so their outer coat ends this far
      from the x = 0 face (the analysis crop is then clipped by the volume border);
    * a small ``cell_vox`` packs pits close to each other (gap = cell size - outer diameter);
    * ``ny``: the y size in voxels (room for tilted membranes; membranes stay at y = 16 and 84 voxels
      from the centre plane's point of view, shifted by ``(ny - 100) / 2`` voxels)."""
    rng = np.random.default_rng(seed)
    rng_coat = np.random.default_rng(seed + 7919)  # a separate stream keeps the default phantom unchanged
    if layout is None:
        layout = ["pm:shallow", "pm:U", "pm:omega"] * 2 + ["im:shallow", "im:U", "im:omega"] + ["vesicle"] * 3
        layout = [layout[i] for i in rng.permutation(len(layout))]
    nz, nx = grid
    if len(layout) > nz * nx:
        raise ValueError(f"layout has {len(layout)} objects for {nz * nx} grid cells")
    shape = (nz * cell_vox, ny, nx * cell_vox)
    dy = (ny - 100) / 2 * voxel
    y_pm, y_im, y_ves = 16 * voxel + dy, 84 * voxel + dy, 50 * voxel + dy
    zz, yy, xx = (np.arange(n, dtype=np.float32) * voxel for n in shape)
    Z, Y, X = np.meshgrid(zz, yy, xx, indexing="ij")
    if tilt_deg != (0.0, 0.0):  # scene coordinates: rotate the grid about the volume centre
        mid = [(n - 1) * voxel / 2 for n in shape]
        a, b = np.radians(tilt_deg)
        rz = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])  # y-x plane (about z)
        rx = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])  # z-y plane (about x)
        rot = (rz @ rx).astype(np.float32)
        P = np.stack([Z - mid[0], Y - mid[1], X - mid[2]], axis=-1) @ rot.T
        Z, Y, X = P[..., 0] + mid[0], P[..., 1] + mid[1], P[..., 2] + mid[2]
        del P

    img = np.where(y_pm > Y, EXTRACELLULAR, np.where(y_im < Y, ORGANELLE, CYTOSOL)).astype(np.float32)
    # flat membranes first; pits cut holes in them
    img[np.abs(Y - y_pm) <= membrane / 2] = MEMBRANE
    img[np.abs(Y - y_im) <= membrane / 2] = MEMBRANE
    pred = np.zeros(shape, np.uint8)
    labels = np.zeros(shape, np.uint16)
    truth: list[dict[str, Any]] = []

    for k, kind in enumerate(layout):
        iz, ix = divmod(k, nx)
        cz = (iz + 0.5) * cell_vox * voxel + rng.uniform(-1, 1) * voxel
        cx = (ix + 0.5) * cell_vox * voxel + rng.uniform(-1, 1) * voxel
        oid = k + 1
        if coat_range is not None:
            coat = float(rng_coat.uniform(*coat_range))
        if kind == "vesicle":
            R = float(rng.uniform(28.0, 38.0))
            cy = y_ves + rng.uniform(-1, 1) * voxel
            if border_nm is not None and ix == 0:
                cx = R + membrane / 2 + coat + border_nm
            r = np.sqrt((Z - cz) ** 2 + (Y - cy) ** 2 + (X - cx) ** 2)
            img[r < R - membrane / 2] = VESICLE_LUMEN
            band = (r >= R - membrane / 2) & (r <= R + membrane / 2 + coat)
            img[band & (r > R + membrane / 2)] = COAT
            img[band & (r <= R + membrane / 2)] = MEMBRANE
            pred[band] = 1
            labels[band] = oid
            d = 2 * (R + coat / 2)
            truth.append(
                {
                    "id": oid,
                    "class": "vesicle",
                    "location": "free",
                    "shape": "vesicle",
                    "R_nm": R,
                    "coat_nm": coat,
                    "center_nm": (cz, cy, cx),
                    "diameter_nm": d,
                    "major_nm": d,
                    "minor_nm": d,
                    "eccentricity": 0.0,
                    "circle_diameter_nm": d,
                }
            )
            continue
        where, shp = kind.split(":")
        (r_lo, r_hi), (f_lo, f_hi) = SHAPES[shp]
        R = float(rng.uniform(r_lo, r_hi))
        if shp == "omega":  # sphere above the plane, joined to it by a coated neck tube
            r_n = float(rng.uniform(*NECK_MID_RADIUS))
            c = float(np.sqrt(R**2 - r_n**2) + rng.uniform(*NECK_LENGTH))
        else:
            c = float(rng.uniform(f_lo, f_hi)) * R
            r_n = float(np.sqrt(max(R**2 - c**2, 0.0)))  # the cap meets the plane here
        if border_nm is not None and ix == 0:
            cx = R + membrane / 2 + coat + border_nm
        if where == "pm":
            y0, sign, lumen = y_pm, 1.0, EXTRACELLULAR  # invaginates into the cell (+y)
        else:
            y0, sign, lumen = y_im, -1.0, ORGANELLE  # buds from the organelle into the cytosol (-y)
        t = sign * (Y - y0)  # signed distance from the membrane plane towards the cytosol
        cy = y0 + sign * c
        r = np.sqrt((Z - cz) ** 2 + (Y - cy) ** 2 + (X - cx) ** 2)
        radial = np.sqrt((Z - cz) ** 2 + (X - cx) ** 2)
        half = membrane / 2
        img[(np.abs(t) <= half + 0.01) & (radial < r_n)] = lumen
        sphere_in = r < R - half
        img[sphere_in & (t > -half)] = lumen
        coat_m = (r > R + half) & (r <= R + half + coat) & (t > half)
        mem_m = (np.abs(r - R) <= half) & (t > -half)
        if shp == "omega":
            t_j = c - np.sqrt(R**2 - r_n**2)  # where the tube meets the sphere
            in_tube = (t > -half) & (t <= t_j + half)
            mem_m |= in_tube & (np.abs(radial - r_n) <= half) & (r >= R - half)
            tube_coat = in_tube & (t > half) & (radial > r_n + half) & (radial <= r_n + half + coat)
            coat_m |= tube_coat & (r > R + half)
        img[coat_m] = COAT
        img[mem_m] = MEMBRANE
        obj = (coat_m | mem_m) & (t > half)
        if shp == "omega":  # the neck's lumen opens into the sphere's lumen
            tube_lumen = in_tube & (radial < r_n - half)
            img[tube_lumen] = lumen
            obj &= ~tube_lumen
        pred[obj] = 1
        labels[obj] = oid
        foot = [cz, y0, cx]
        truth.append(
            {
                "id": oid,
                "class": "pit",
                "location": "endocytic" if where == "pm" else "internal",
                "shape": shp,
                "R_nm": R,
                "coat_nm": coat,
                "c_nm": c,
                "neck_mid_radius_nm": r_n,
                "center_nm": (cz, cy, cx),
                "foot_nm": tuple(foot),  # scene coordinates (before the tilt), like center_nm
                **_pit_truth(R, c, r_n, membrane, coat),
            }
        )

    img = ndi.gaussian_filter(img, blur_nm / voxel)
    img += rng.normal(0.0, noise, size=shape).astype(np.float32)
    raw = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    cell = (y_pm <= Y).astype(np.uint8)
    for tr in truth:  # centroid of the predicted voxels, to match measurements to truth
        idx = np.argwhere(labels == tr["id"])
        tr["centroid_nm"] = tuple(float(v) for v in idx.mean(axis=0) * voxel)
        tr["n_voxels"] = int(len(idx))
    return CoatedPitPhantom(raw, pred, cell, labels, truth, (voxel, voxel, voxel))


def save_phantom(phantom: CoatedPitPhantom, folder: str | Path) -> Path:
    """Write ``raw.zarr``, ``pred.zarr``, ``cell.zarr`` (OME-Zarr) and ``truth.json`` into ``folder``."""
    from organet.volumes import write_ome_zarr

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for name, arr in (("raw", phantom.raw), ("pred", phantom.prediction), ("cell", phantom.cell_mask)):
        with write_ome_zarr(out / f"{name}.zarr", overwrite=True) as w:
            w.create_image(None, arr.shape, arr.dtype, phantom.voxel_size, (0, 0, 0), (64, 64, 64)).write(
                (slice(None),) * 3, arr
            )
    (out / "truth.json").write_text(json.dumps(phantom.truth, indent=1))
    return out


def score(truth: list[dict[str, Any]], table: Any, voxel: float = 5.0) -> dict[str, Any]:
    """Compare an analysis table (DataFrame) with phantom truth: classification accuracy, staging
    of shallow (early) vs Ω (late) endocytic pits, and |error| per metric (nm and voxels)."""
    table = table.copy()
    for col in ("class", "location", "stage", "flags"):
        table[col] = table[col].fillna("").astype(str)
    cen = table[["centroid_z_nm", "centroid_y_nm", "centroid_x_nm"]].to_numpy(float)
    rep: dict[str, Any] = {"n": len(truth), "class_ok": 0, "stage_ok": 0, "stage_n": 0, "errors": {}}
    errs: dict[str, list[float]] = {}
    for tr in truth:
        row = table.iloc[int(np.argmin(np.linalg.norm(cen - np.asarray(tr["centroid_nm"]), axis=1)))]
        rep["class_ok"] += int(row["class"] == tr["class"] and row["location"] == tr["location"])
        want = {"shallow": "early", "omega": "late"}.get(tr["shape"]) if tr["location"] == "endocytic" else None
        if want:
            rep["stage_n"] += 1
            rep["stage_ok"] += int(row["stage"] == want)
        keys: tuple[str, ...] = ("height_nm", "neck_width_nm", "fwhm_nm", "major_nm", "minor_nm", "circle_diameter_nm")
        keys = keys if tr["class"] == "pit" else ("diameter_nm", "major_nm", "minor_nm", "circle_diameter_nm")
        for k in keys:
            errs.setdefault(f"{tr['class']}:{k}", []).append(float(row[k]) - float(tr[k]))
    for k, e in errs.items():
        a = np.abs(np.asarray(e))
        rep["errors"][k] = {
            "n": int(len(a)),
            "n_measured": int(np.isfinite(a).sum()),
            "mean_signed_nm": float(np.nanmean(e)),
            "median_nm": float(np.nanmedian(a)),
            "max_nm": float(np.nanmax(a)),
            "median_vox": float(np.nanmedian(a) / voxel),
            "max_vox": float(np.nanmax(a) / voxel),
        }
    return rep


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - thin wrapper
    import argparse

    import pandas as pd

    ap = argparse.ArgumentParser(prog="python -m organet.analyze.coated_pits_phantom")
    ap.add_argument("folder", help="write raw.zarr, pred.zarr, cell.zarr, truth.json here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--score", metavar="CSV", help="instead: score this coated_pits.csv against FOLDER/truth.json")
    a = ap.parse_args(argv)
    if a.score:
        truth = json.loads((Path(a.folder) / "truth.json").read_text())
        print(json.dumps(score(truth, pd.read_csv(a.score)), indent=1))
        return 0
    save_phantom(make_coated_pit_phantom(seed=a.seed), a.folder)
    print(f"wrote the seed-{a.seed} coated-pit phantom to {a.folder}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
