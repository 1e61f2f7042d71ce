"""Ground truth from sparse scribbles: a random forest on multi-scale features gives the
unary terms, a min-cut/max-flow on the voxel grid (PyMaxflow) the final labels.

Scribbles: a (z, y, x) volume, 0 = unlabeled, 1 = object, 2 = background, drawn on a few
planes at any spacing. Pipeline (all on a working grid: the ROI block-averaged by
``downsample`` voxels per axis, or, by default, by factors :func:`choose_working_grid` picks
from the ROI's size and voxel size so that large ROIs stay fast and small ones stay at full
resolution):

1. features (:mod:`organet.annotate.features`) at ``scales`` (working-grid voxels);
2. a random forest trained on the scribbled voxels -> object probability; with
   ``supervoxels`` > 0 the forest works on watershed supervoxels (features averaged per
   region, a region is a training sample if its scribbles are of one class) - faster on
   large ROIs and less noisy; the graph cut stays on voxels;
3. ``autocontext`` extra stages: the forest is retrained on the features plus the
   previous probability smoothed at several scales (ilastik's auto-context);
4. graph cut: unaries ``-log p`` / ``-log (1 - p)``, scribbles as hard constraints,
   contrast-sensitive 6-neighbour pairwise term ``smoothness * exp(-(dI)^2 / (2 sigma^2))``;
5. labels upsampled to the full grid (linear interpolation of the cut, threshold 0.5).

Corrections: add scribbles and rerun; :func:`scribbles_from_labels` imports label volumes
exported from VAST or ilastik (TIFF stacks).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy import ndimage

from organet.annotate.features import DEFAULT_SCALES, compute_features, n_features
from organet.volumes import Roi, Volume, VolumeError
from organet.volumes.foreground import probability_to_uint8
from organet.volumes.geometry import VOXEL_SIZE_RTOL, Shape3, as_int3, as_vec3


class AnnotationError(VolumeError):
    """Bad annotation input (scribble values, shapes, missing classes)."""


OBJECT, BACKGROUND = 1, 2


def check_scribbles(scribbles: np.ndarray, shape: Sequence[int], where: str = "scribbles") -> np.ndarray:
    """Validate a scribble array against the raw shape (z, y, x); returns it as uint8.

    Values must be 0 (unlabeled), 1 (object) or 2 (background), and both 1 and 2 must occur.
    """
    s = np.asarray(scribbles)
    if s.shape != tuple(shape):
        raise AnnotationError(f"{where} have shape {s.shape} but the raw volume (ROI) has {tuple(shape)} (z, y, x)")
    if s.dtype.kind not in "uib":
        raise AnnotationError(f"{where} must be an integer volume (0 unlabeled, 1 object, 2 background), got {s.dtype}")
    values = np.unique(s)
    bad = [int(v) for v in values if v not in (0, 1, 2)]
    if bad:
        raise AnnotationError(
            f"{where} contain values {bad[:8]}; expected 0 (unlabeled), 1 (object), 2 (background) "
            "(import VAST/ilastik labels with scribbles_from_labels / --object-ids / --background-ids)"
        )
    if OBJECT not in values or BACKGROUND not in values:
        missing = "object (1)" if OBJECT not in values else "background (2)"
        raise AnnotationError(f"{where} have no {missing} voxels; scribble both classes")
    return s.astype(np.uint8, copy=False)


def scribbles_from_labels(
    labels: np.ndarray, object_ids: Sequence[int] = (1,), background_ids: Sequence[int] = (2,)
) -> np.ndarray:
    """Map a label volume exported from VAST (segment ids) or ilastik (label values) to scribbles.

    Voxels with a value in ``object_ids`` -> 1, in ``background_ids`` -> 2, else 0.
    """
    obj, bg = set(int(i) for i in object_ids), set(int(i) for i in background_ids)
    if obj & bg:
        raise AnnotationError(f"ids {sorted(obj & bg)} are both object and background")
    if 0 in obj or 0 in bg:
        raise AnnotationError("id 0 means unlabeled; it cannot be an object or background id")
    lab = np.asarray(labels)
    out = np.zeros(lab.shape, np.uint8)
    out[np.isin(lab, list(obj))] = OBJECT
    out[np.isin(lab, list(bg))] = BACKGROUND
    return out


@dataclass
class GraphCutParams:
    """Parameters; lengths in voxels of the working grid unless noted."""

    # working grid = full grid / downsample (block mean): one factor for all axes or (z, y, x);
    # None = automatic (:func:`choose_working_grid`: full resolution up to ``max_working_voxels``)
    downsample: int | tuple[int, int, int] | None = None
    max_working_voxels: int = 4_000_000  # budget of the automatic choice (working-grid voxels)
    voxel_size: tuple[float, float, float] | None = None  # nm (z, y, x), for the automatic choice; None = isotropic
    scales: tuple[float, ...] = DEFAULT_SCALES
    n_trees: int = 64
    max_depth: int | None = 16
    max_samples_per_class: int = 50_000
    autocontext: int = 1  # extra forest stages on features + smoothed probabilities
    smoothness: float = 10.0  # weight of the pairwise term (0 = forest + hard constraints only)
    contrast_sigma: float = 0.05  # intensity difference scale of the pairwise term (raw in [0, 1])
    contrast_smooth: float = 0.0  # Gaussian sigma applied to raw before the pairwise term (0 = none)
    supervoxels: int = 0  # > 0: forest on watershed supervoxels of about this edge length (speed); 0 = per voxel
    fill_holes: bool = False  # fill enclosed background holes in the cut (objects are solid)
    min_size: int = 0  # drop cut components smaller than this (working-grid voxels) without object scribbles
    seed: int = 0
    n_jobs: int = 1

    def record(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["scales"] = list(self.scales)
        for k in ("downsample", "voxel_size"):
            if isinstance(d[k], tuple):
                d[k] = list(d[k])
        return d


@dataclass(frozen=True)
class WorkingGrid:
    """The grid features, forests and the cut run on: the ROI block-averaged by ``factors``.

    ``factors`` and ``shape`` are (z, y, x) in voxels; ``auto`` tells whether the factors
    were chosen by :func:`choose_working_grid` (else set by the caller).
    """

    factors: Shape3
    shape: Shape3
    roi_voxels: int
    auto: bool
    max_voxels: int

    @property
    def voxels(self) -> int:
        return math.prod(self.shape)

    def describe(self) -> str:
        """One line, e.g. ``downsample 2x2x2 (auto: 24.3 M voxels > 4.0 M; working grid 83x192x192)``."""
        f = "x".join(str(v) for v in self.factors)
        head = "full resolution" if self.factors == (1, 1, 1) else f"downsample {f}"
        grid = "x".join(str(v) for v in self.shape)
        if not self.auto:
            return f"{head} (set by the user; working grid {grid}, {_count(self.voxels)} voxels)"
        cmp = ">" if self.roi_voxels > self.max_voxels else "<="
        return f"{head} (auto: {_count(self.roi_voxels)} voxels {cmp} {_count(self.max_voxels)}; working grid {grid})"

    def record(self) -> dict[str, Any]:
        return {
            "factors": list(self.factors),
            "shape": list(self.shape),
            "auto": self.auto,
            "max_voxels": self.max_voxels,
            "describe": self.describe(),
        }


def _count(n: int) -> str:
    """``24.3 M``, ``40.0 k``: a voxel count for messages."""
    return f"{n / 1e6:.1f} M" if n >= 100_000 else f"{n / 1e3:.1f} k"


def _grid_shape(shape: Sequence[int], factors: Sequence[int]) -> Shape3:
    z, y, x = (-(-int(n) // int(f)) for n, f in zip(shape, factors))
    return (z, y, x)


def choose_working_grid(
    shape: Sequence[int],
    voxel_size: Sequence[float] | None = None,
    max_voxels: int = 4_000_000,
    downsample: int | Sequence[int] | None = None,
    min_extent: int = 16,
) -> WorkingGrid:
    """The working grid of a ROI of ``shape`` voxels (z, y, x).

    An explicit ``downsample`` (one factor or (z, y, x)) is used as given. Otherwise the grid
    stays at full resolution while the ROI has at most ``max_voxels`` voxels; above that, the
    factor of the axes with the finest working voxel (``voxel_size``, nm; isotropic when None)
    grows by one until the working grid fits the budget, so anisotropic data (e.g. 5 x 5 x 40 nm)
    is first coarsened in the plane. An axis is not coarsened below ``min_extent`` working voxels.
    """
    dims = as_int3(shape, "ROI shape", minimum=1)
    n = math.prod(dims)
    if downsample is not None:
        f = (downsample,) * 3 if isinstance(downsample, int) else tuple(downsample)
        try:
            factors = as_int3(f, "downsample", minimum=1)
        except VolumeError:
            raise AnnotationError(
                f"downsample must be one integer >= 1 or three (z, y, x), got {downsample!r}"
            ) from None
        return WorkingGrid(factors, _grid_shape(dims, factors), n, False, max_voxels)
    if max_voxels < 1:
        raise AnnotationError(f"max_working_voxels must be >= 1, got {max_voxels}")
    vs = as_vec3(voxel_size, "voxel size", positive=True) if voxel_size is not None else (1.0, 1.0, 1.0)
    fac = [1, 1, 1]
    while math.prod(_grid_shape(dims, fac)) > max_voxels:
        free = [a for a in range(3) if -(-dims[a] // (fac[a] + 1)) >= min_extent]
        if not free:
            break
        finest = min(vs[a] * fac[a] for a in free)
        for a in free:
            if math.isclose(vs[a] * fac[a], finest, rel_tol=VOXEL_SIZE_RTOL):
                fac[a] += 1
    factors = (fac[0], fac[1], fac[2])
    return WorkingGrid(factors, _grid_shape(dims, factors), n, True, max_voxels)


@dataclass
class GraphCutResult:
    labels: np.ndarray  # uint8 0/1, full grid (z, y, x)
    probability: np.ndarray  # float32 forest probability, full grid
    seconds: dict[str, float] = field(default_factory=dict)
    n_scribbled: tuple[int, int] = (0, 0)
    stage_probabilities: list[np.ndarray] = field(default_factory=list)  # working grid, one per forest stage
    working_grid: WorkingGrid | None = None  # the grid that was used and why


def _factors(f: int | Sequence[int]) -> Shape3:
    return (f, f, f) if isinstance(f, int) else (int(f[0]), int(f[1]), int(f[2]))


def _downsample_mean(x: np.ndarray, f: int | Sequence[int]) -> np.ndarray:
    """Block means over ``f`` voxels per axis (z, y, x) (edge-padded to a multiple), float32."""
    fz, fy, fx = _factors(f)
    if (fz, fy, fx) == (1, 1, 1):
        return x.astype(np.float32, copy=False)
    pad = [(0, (-s) % k) for s, k in zip(x.shape, (fz, fy, fx))]
    xp = np.pad(x.astype(np.float32, copy=False), pad, mode="edge")
    z, y, w = xp.shape[0] // fz, xp.shape[1] // fy, xp.shape[2] // fx
    return xp.reshape(z, fz, y, fy, w, fx).mean(axis=(1, 3, 5), dtype=np.float32)


def _downsample_scribbles(s: np.ndarray, f: int | Sequence[int]) -> np.ndarray:
    """A working voxel is object/background if any full voxel of it is (conflicts -> unlabeled)."""
    fz, fy, fx = _factors(f)
    if (fz, fy, fx) == (1, 1, 1):
        return s
    pad = [(0, (-n) % k) for n, k in zip(s.shape, (fz, fy, fx))]
    sp = np.pad(s, pad)
    blocks = sp.reshape(sp.shape[0] // fz, fz, sp.shape[1] // fy, fy, sp.shape[2] // fx, fx)
    obj = (blocks == OBJECT).any(axis=(1, 3, 5))
    bg = (blocks == BACKGROUND).any(axis=(1, 3, 5))
    out = np.zeros(obj.shape, np.uint8)
    out[obj & ~bg] = OBJECT
    out[bg & ~obj] = BACKGROUND
    return out


def _upsample(x: np.ndarray, f: int | Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """Linear upsampling of a working-grid map to the full grid (voxel centres aligned), float32."""
    fac = _factors(f)
    if fac == (1, 1, 1):
        return x
    src = np.asarray(x, np.float32)
    cz, cy, cx = ((np.arange(n) + 0.5) / k - 0.5 for n, k in zip(shape, fac))
    plane = np.stack(np.broadcast_arrays(np.zeros((len(cy), 1), np.float32), cy[:, None], cx[None, :]))
    out = np.empty(tuple(shape), np.float32)
    # one z plane at a time keeps memory at a few planes
    for i in range(shape[0]):
        plane[0] = cz[i]
        out[i] = ndimage.map_coordinates(src, plane, order=1, mode="nearest")
    return out


def supervoxels(image: np.ndarray, size: int) -> np.ndarray:
    """Watershed supervoxels (int32 labels from 0) of a (z, y, x) image: seeds on a regular grid
    every ``size`` voxels, flooding the gradient magnitude, so regions follow edges."""
    from skimage.segmentation import watershed

    grad = ndimage.gaussian_gradient_magnitude(image.astype(np.float32), 1.0)
    markers = np.zeros(image.shape, np.int32)
    grid = tuple(slice(size // 2, None, size) for _ in image.shape)
    n = markers[grid].size
    markers[grid] = np.arange(1, n + 1).reshape(markers[grid].shape)
    return (watershed(grad, markers) - 1).astype(np.int32)


def _region_mean(feats: np.ndarray, sv: np.ndarray) -> np.ndarray:
    n = int(sv.max()) + 1
    flat = sv.ravel()
    counts = np.maximum(np.bincount(flat, minlength=n), 1)
    X = feats.reshape(-1, feats.shape[-1])
    return np.stack([np.bincount(flat, weights=X[:, j], minlength=n) / counts for j in range(X.shape[1])], -1)


def _sv_scribbles(scrib: np.ndarray, sv: np.ndarray) -> np.ndarray:
    """Per supervoxel: 1/2 where its scribbled voxels are all one class, else 0."""
    n = int(sv.max()) + 1
    obj = np.bincount(sv.ravel(), weights=(scrib.ravel() == OBJECT), minlength=n)
    bg = np.bincount(sv.ravel(), weights=(scrib.ravel() == BACKGROUND), minlength=n)
    out = np.zeros(n, np.uint8)
    out[(obj > 0) & (bg == 0)] = OBJECT
    out[(bg > 0) & (obj == 0)] = BACKGROUND
    return out


def _train_predict(
    feats: np.ndarray, scrib: np.ndarray, p: GraphCutParams, rng: np.random.Generator, sv: np.ndarray | None = None
) -> np.ndarray:
    if sv is not None:
        prob_sv = _train_predict(_region_mean(feats, sv)[None, None], _sv_scribbles(scrib, sv)[None, None], p, rng)
        return prob_sv.ravel()[sv]
    from sklearn.ensemble import RandomForestClassifier

    idx = []
    for c in (OBJECT, BACKGROUND):
        where = np.flatnonzero(scrib.ravel() == c)
        if len(where) > p.max_samples_per_class:
            where = rng.choice(where, p.max_samples_per_class, replace=False)
        idx.append(where)
    sel = np.concatenate(idx)
    X = feats.reshape(-1, feats.shape[-1])
    y = (scrib.ravel()[sel] == OBJECT).astype(np.uint8)
    rf = RandomForestClassifier(
        n_estimators=p.n_trees,
        max_depth=p.max_depth,
        min_samples_leaf=3,
        class_weight="balanced",
        random_state=p.seed,
        n_jobs=p.n_jobs,
    )
    rf.fit(X[sel], y)
    prob = np.empty(X.shape[0], np.float32)
    step = 1 << 18
    for i in range(0, X.shape[0], step):
        prob[i : i + step] = rf.predict_proba(X[i : i + step])[:, 1]
    return prob.reshape(scrib.shape)


def graph_cut(
    prob: np.ndarray, image: np.ndarray, scribbles: np.ndarray, smoothness: float, contrast_sigma: float
) -> np.ndarray:
    """Min-cut labels (bool, True = object) of a (z, y, x) grid.

    Unaries from the object probability ``prob``; scribbles are hard constraints;
    pairwise weight between 6-neighbours ``smoothness * exp(-(dI)^2 / (2 sigma^2))`` with
    ``image`` intensities (``sigma`` = ``contrast_sigma``, same units as ``image``).
    """
    import maxflow

    eps = 1e-4
    pr = np.clip(prob.astype(np.float64), eps, 1 - eps)
    cost_bg = -np.log(1 - pr)  # paid if the voxel is labelled background
    cost_obj = -np.log(pr)
    big = 1e9
    cost_bg[scribbles == OBJECT] = big
    cost_obj[scribbles == BACKGROUND] = big
    g = maxflow.Graph[float]()
    nodes = g.add_grid_nodes(prob.shape)
    if smoothness > 0:
        img = image.astype(np.float64)
        for axis in range(3):
            d = np.zeros_like(img)
            sl_a = [slice(None)] * 3
            sl_b = [slice(None)] * 3
            sl_a[axis], sl_b[axis] = slice(0, -1), slice(1, None)
            d[tuple(sl_a)] = img[tuple(sl_b)] - img[tuple(sl_a)]
            w = smoothness * np.exp(-(d**2) / (2 * contrast_sigma**2))
            w[tuple(slice(-1, None) if a == axis else slice(None) for a in range(3))] = 0
            structure = np.zeros((3, 3, 3))
            c = [1, 1, 1]
            c[axis] = 2
            structure[tuple(c)] = 1
            g.add_grid_edges(nodes, weights=w, structure=structure, symmetric=True)
    # source side = object: a node on the sink side cuts its source edge (cost_bg)
    g.add_grid_tedges(nodes, cost_bg, cost_obj)
    g.maxflow()
    return ~g.get_grid_segments(nodes)


def clean_labels(cut: np.ndarray, scribbles: np.ndarray, fill_holes: bool, min_size: int) -> np.ndarray:
    """Fill enclosed holes and drop components smaller than ``min_size`` voxels from a bool cut;
    components touching an object scribble are kept, background scribbles stay background."""
    out = cut.copy()
    if fill_holes:
        out = ndimage.binary_fill_holes(out)
    if min_size > 0:
        lab, n = ndimage.label(out, structure=np.ones((3, 3, 3), bool))
        if n:
            sizes = np.bincount(lab.ravel())
            keep = sizes >= min_size
            keep[np.unique(lab[scribbles == OBJECT])] = True
            keep[0] = False
            out = keep[lab]
    out[scribbles == BACKGROUND] = False
    out[scribbles == OBJECT] = True
    return out


def segment_from_scribbles(
    raw: np.ndarray,
    scribbles: np.ndarray,
    params: GraphCutParams | None = None,
    log: Callable[[str], None] | None = None,
) -> GraphCutResult:
    """Object labels of a raw (z, y, x) array from scribbles (0/1/2) of the same shape.

    Raw may be any numeric type; it is scaled by its 0.1/99.9 percentiles to [0, 1]. The
    working grid is ``params.downsample`` if set, else chosen by :func:`choose_working_grid`
    from the ROI's size and ``params.voxel_size``; ``result.working_grid`` says which and why.
    """
    p = params or GraphCutParams()
    raw = np.asarray(raw)
    scrib = check_scribbles(scribbles, raw.shape)
    if p.smoothness < 0 or p.contrast_sigma <= 0:
        raise AnnotationError("smoothness must be >= 0 and contrast_sigma > 0")
    grid = choose_working_grid(raw.shape, p.voxel_size, p.max_working_voxels, p.downsample)
    f = grid.factors
    if log:
        log(f"working grid: {grid.describe()}")
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    lo, hi = np.percentile(raw, [0.1, 99.9])
    x = np.clip((raw.astype(np.float32) - lo) / max(float(hi - lo), 1e-12), 0, 1)
    xs = _downsample_mean(x, f)
    del x
    ss = _downsample_scribbles(scrib, f)
    if not ((ss == OBJECT).any() and (ss == BACKGROUND).any()):
        raise AnnotationError("after downsampling the scribbles lack one class; use a smaller downsample")
    # one float32 array holds the features and, behind them, the auto-context channels
    nf = n_features(p.scales)
    n_ctx = 1 + len(p.scales) if p.autocontext > 0 else 0
    feats = np.empty((*xs.shape, nf + n_ctx), np.float32)
    compute_features(xs, p.scales, out=feats[..., :nf])
    t["features"] = time.perf_counter() - t0
    rng = np.random.default_rng(p.seed)
    sv = supervoxels(xs, p.supervoxels) if p.supervoxels > 0 else None
    if sv is not None and not set(np.unique(_sv_scribbles(ss, sv))) >= {OBJECT, BACKGROUND}:
        raise AnnotationError("no supervoxel is scribbled with one class only; use smaller supervoxels")
    t1 = time.perf_counter()
    prob = _train_predict(feats[..., :nf], ss, p, rng, sv)
    stages = [prob]
    for _ in range(p.autocontext):
        for j, sigma in enumerate((0.0, *p.scales)):
            feats[..., nf + j] = ndimage.gaussian_filter(prob, sigma)
        prob = _train_predict(feats, ss, p, rng, sv)
        stages.append(prob)
    del feats
    t["forest"] = time.perf_counter() - t1
    if log:
        log(f"forest done ({t['features']:.1f} s features, {t['forest']:.1f} s forest)")
    t2 = time.perf_counter()
    smooth_img = ndimage.gaussian_filter(xs, p.contrast_smooth) if p.contrast_smooth > 0 else xs
    cut = graph_cut(prob, smooth_img, ss, p.smoothness, p.contrast_sigma)
    if p.fill_holes or p.min_size > 0:
        cut = clean_labels(cut, ss, p.fill_holes, p.min_size)
    t["graphcut"] = time.perf_counter() - t2
    full = _upsample(cut.astype(np.float32), f, raw.shape) >= 0.5
    full[scrib == OBJECT] = True
    full[scrib == BACKGROUND] = False
    prob_full = _upsample(prob, f, raw.shape)
    t["total"] = time.perf_counter() - t0
    return GraphCutResult(
        full.astype(np.uint8),
        prob_full,
        t,
        (int((scrib == OBJECT).sum()), int((scrib == BACKGROUND).sum())),
        stages,
        grid,
    )


def graphcut_volume(
    raw: Volume,
    scribbles: Volume,
    output: str,
    roi: Roi | None = None,
    params: GraphCutParams | None = None,
    write_probability: bool = True,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> GraphCutResult:
    """Segment ``roi`` (voxels of ``raw``; default all) and write OME-Zarr ``output`` atomically.

    Only the ROI is read. ``output`` holds ``labels`` (uint8 0/1) and, if asked,
    ``probability`` (uint8 0-255, the forest's), with the ROI's offset in nm.
    """
    from organet.volumes import write_ome_zarr

    if tuple(scribbles.shape) != tuple(raw.shape):
        raise AnnotationError(
            f"scribbles {scribbles.path} have shape {tuple(scribbles.shape)} but raw "
            f"{raw.path} has {tuple(raw.shape)} (z, y, x)"
        )
    roi = roi if roi is not None else raw.roi
    if not raw.roi.contains(roi) or roi.empty:
        raise AnnotationError(f"ROI {roi} is empty or outside the volume {raw.roi}")
    p = params or GraphCutParams()
    if p.voxel_size is None:
        p = replace(p, voxel_size=raw.voxel_size)
    res = segment_from_scribbles(raw.read(roi), scribbles.read(roi), p, log)
    offset = tuple(o + r * v for o, r, v in zip(raw.offset, roi.offset, raw.voxel_size))
    meta = {
        "source": raw.path,
        "scribbles": scribbles.path,
        "roi_vox": {"offset": list(roi.offset), "shape": list(roi.shape)},
        "graphcut": p.record(),
        "working_grid": res.working_grid.record() if res.working_grid else None,
        "n_scribbled": list(res.n_scribbled),
    }
    with write_ome_zarr(output, overwrite=overwrite) as w:
        lab = w.create_image("labels", roi.shape, np.uint8, raw.voxel_size, offset, attrs={"kind": "mask", **meta})
        lab.write(lab.roi, res.labels)
        if write_probability:
            pr = w.create_image(
                "probability",
                roi.shape,
                np.uint8,
                raw.voxel_size,
                offset,
                attrs={"kind": "probability", "scale": 255, **meta},
            )
            pr.write(pr.roi, probability_to_uint8(res.probability))
    return res
