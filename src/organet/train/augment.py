"""Geometric and intensity augmentation of training blocks (numpy, scipy, and numba for the warp).

A training sample is read from the volume as an *upstream* block that is larger
than the network input (see :func:`upstream_shape`), so that rotation and
elastic deformation pull real data from around the input instead of padding.
One coordinate map is built for the network-input grid (``in_shape``); raw is
sampled on the whole grid with linear interpolation, labels and mask with
nearest-neighbour interpolation on the centred ``out_shape`` sub-grid only, so
all three stay aligned. Mirroring, transposition and the intensity change
follow. Semantics follow gunpowder's ``ElasticAugment`` (control-point jitter,
rotation about the leading axis, subsampled deformation field),
``SimpleAugment`` (mirror each axis with probability 0.5, transpose among
axes of equal voxel size) and ``IntensityAugment``.

Conventions: arrays are (z, y, x); shapes, spacings, sigmas and displacements
are in voxels; angles in radians. All randomness comes from a passed
``np.random.Generator``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator
from scipy import ndimage as ndi

from organet.train.warp import warp_coordinates, warp_sample
from organet.volumes.geometry import Shape3, same_voxel_size

__all__ = [
    "AugmentConfig",
    "AugmentParams",
    "apply_params",
    "augment",
    "center_crop",
    "coordinate_map",
    "sample_params",
    "transpose_axes_from_voxel_size",
    "upstream_shape",
]


class AugmentConfig(BaseModel):
    """Augmentation settings, the ``augment:`` section of the experiment config (defaults:
    ASEM Table S3). Unknown keys and bad values are errors that name the key.

    Attributes:
        enabled: master switch; False makes :func:`augment` return the centre crops.
        mirror: flip each axis independently with probability 0.5.
        transpose: random permutation of the axes passed as ``transpose_axes``
            to :func:`augment` (axes of equal voxel size, :meth:`transpose_axes`).
        elastic: smooth random deformation.
        control_point_spacing: spacing of the elastic control points (voxels).
        jitter_sigma: std of the control-point displacement (voxels); the dense
            displacement is clipped to +-ceil(4 * jitter_sigma) voxels, the
            margin :func:`upstream_shape` reserves (:attr:`elastic_margin`).
        elastic_subsample: the deformation is computed on a grid this many times
            coarser and upsampled linearly (speed).
        rotate_xy: rotate about the z axis (in the y-x plane).
        rotation_max: angle drawn uniformly in [0, rotation_max] (radians).
        intensity: random intensity scale and shift of raw.
        intensity_scale: range of the multiplicative factor.
        intensity_shift: range of the additive shift in units of the [0, 1]
            intensity range, as in gunpowder/incasem (so 2 x shift on [-1, 1]).
        intensity_clip: clip raw to [-1, 1] after the intensity change (the seed's
            gunpowder ``IntensityAugment`` clips to its [0, 1] range by default).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    enabled: bool = True
    mirror: bool = True
    transpose: bool = True
    elastic: bool = True
    control_point_spacing: int = Field(default=32, ge=1)
    jitter_sigma: float = Field(default=2.0, ge=0)
    elastic_subsample: int = Field(default=4, ge=1)
    rotate_xy: bool = True
    rotation_max: float = Field(default=math.pi / 2, ge=0, le=2 * math.pi)
    intensity: bool = True
    intensity_scale: tuple[float, float] = (0.85, 1.15)
    intensity_shift: tuple[float, float] = Field(default=(-0.15, 0.15), description="on the [0, 1] scale")
    intensity_clip: bool = True

    @field_validator("intensity_scale", "intensity_shift")
    @classmethod
    def _low_high(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] > v[1]:
            raise ValueError(f"must be (low, high) with low <= high, got {list(v)}")
        return v

    @property
    def do_rotate(self) -> bool:
        return self.enabled and self.rotate_xy and self.rotation_max > 0

    @property
    def do_elastic(self) -> bool:
        return self.enabled and self.elastic and self.jitter_sigma > 0

    @property
    def elastic_margin(self) -> int:
        """Bound on the elastic displacement per axis (voxels); 0 when elastic is off."""
        return int(math.ceil(4.0 * self.jitter_sigma)) if self.do_elastic else 0

    @staticmethod
    def transpose_axes(voxel_size: Sequence[float]) -> tuple[int, ...]:
        """Axes that may be permuted for data of ``voxel_size`` (nm): those of equal voxel size
        (relative tolerance 1e-3), e.g. (10, 5, 5) -> (1, 2); () when no two are equal."""
        return transpose_axes_from_voxel_size(voxel_size)

    def for_voxel_size(self, voxel_size: Sequence[float]) -> AugmentConfig:
        """These settings for data of ``voxel_size`` (nm): transposition only where two axes
        have equal voxel size, rotation in the y-x plane only for square y-x voxels."""
        square_xy = same_voxel_size((voxel_size[1],), (voxel_size[2],))
        return self.model_copy(
            update={
                "transpose": self.transpose and len(self.transpose_axes(voxel_size)) > 1,
                "rotate_xy": self.rotate_xy and square_xy,
            }
        )


@dataclass(eq=False)
class AugmentParams:
    """One concrete draw of the augmentation.

    Attributes:
        angle: rotation in the (y, x) plane (radians). The output voxel at centred
            position (y, x) samples the source at (cos a * y + sin a * x,
            -sin a * y + cos a * x), gunpowder's convention; a = pi/2 equals
            ``np.rot90(block, k=1, axes=(1, 2))``.
        jitter: control-point displacements, shape (3, cz, cy, cx) (voxels,
            components z, y, x), or None for no elastic deformation.
        mirror: flip per axis (z, y, x), applied after sampling.
        permutation: axis order, applied after mirroring (``np.transpose``).
        scale, shift: intensity change ``mean + (raw - mean) * scale + 2 * shift``.
    """

    angle: float = 0.0
    jitter: np.ndarray | None = None
    mirror: tuple[bool, bool, bool] = (False, False, False)
    permutation: Shape3 = (0, 1, 2)
    scale: float = 1.0
    shift: float = 0.0


def _shape3(shape: Sequence[int], name: str) -> Shape3:
    if len(shape) != 3:
        raise ValueError(f"{name} must have 3 entries (z, y, x), got {tuple(shape)}")
    out = (int(shape[0]), int(shape[1]), int(shape[2]))
    if any(s < 1 for s in out):
        raise ValueError(f"{name} must be positive, got {out}")
    return out


def center_crop(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Centred crop (a view) of the trailing ``len(shape)`` axes of ``array``.

    The start offset per axis is ``(array_size - size) // 2`` voxels.
    """
    shape = tuple(int(s) for s in shape)
    lead = array.ndim - len(shape)
    if lead < 0:
        raise ValueError(f"cannot crop array of shape {array.shape} to {shape}")
    sl: list[slice] = [slice(None)] * lead
    for n, s in zip(array.shape[lead:], shape):
        if s > n or s < 0:
            raise ValueError(f"cannot crop array of shape {array.shape} to {shape}")
        o = (n - s) // 2
        sl.append(slice(o, o + s))
    return array[tuple(sl)]


def transpose_axes_from_voxel_size(voxel_size: Sequence[float]) -> tuple[int, ...]:
    """Axes that may be permuted: the largest group of axes with equal voxel size
    (:func:`organet.volumes.geometry.same_voxel_size`).

    E.g. (5, 5, 5) -> (0, 1, 2); (10, 5, 5) -> (1, 2); (3, 4, 5) -> ().
    """
    vs = [float(v) for v in voxel_size]
    best: tuple[int, ...] = ()
    for a in range(len(vs)):
        group = tuple(b for b in range(len(vs)) if same_voxel_size((vs[a],), (vs[b],)))
        if len(group) > len(best):
            best = group
    return best if len(best) > 1 else ()


def _rotation_extent(h_y: float, h_x: float, rotation_max: float) -> tuple[float, float]:
    """Max |y'|, |x'| of the rectangle [-h_y, h_y] x [-h_x, h_x] rotated by any angle in [0, rotation_max]."""
    a = np.linspace(0.0, rotation_max, 8193)
    c, s = np.abs(np.cos(a)), np.abs(np.sin(a))
    return float(np.max(c * h_y + s * h_x)), float(np.max(s * h_y + c * h_x))


def upstream_shape(in_shape: Sequence[int], cfg: AugmentConfig) -> Shape3:
    """Shape (voxels, z, y, x) of the block to read so that the transformed input grid stays inside it.

    Per axis: the input half-extent, enlarged in y and x for rotations up to
    ``rotation_max`` about z, plus the elastic margin ceil(4 * jitter_sigma);
    rounded up so that ``upstream - in_shape`` is even (exact centring). With
    rotation and elastic off this is ``in_shape``.
    """
    in_shape = _shape3(in_shape, "in_shape")
    half = [(n - 1) / 2.0 for n in in_shape]
    if cfg.do_rotate:
        half[1], half[2] = _rotation_extent(half[1], half[2], cfg.rotation_max)
    margin = cfg.elastic_margin
    out = []
    for n, h in zip(in_shape, half):
        need = 2.0 * (h + margin) + 1.0  # coordinates must lie in [0, upstream - 1]
        pad = max(0, math.ceil((need - n) / 2.0 - 1e-9))
        out.append(n + 2 * pad)
    return out[0], out[1], out[2]


def _n_points(n: int, spacing: float) -> int:
    """Number of corner-aligned grid points over ``n`` voxels with spacing <= about ``spacing``."""
    return 1 if n == 1 else max(2, int(math.ceil((n - 1) / spacing - 1e-9)) + 1)


def _n_control(n: int, spacing: float) -> int:
    """Number of corner-aligned control points over ``n`` voxels (spacing closest to ``spacing``)."""
    return 1 if n == 1 else max(2, int(round((n - 1) / spacing)) + 1)


def _group_permutation(axes: Sequence[int], in_shape: Shape3, out_shape: Shape3, rng: np.random.Generator) -> Shape3:
    """Random axis permutation among ``axes``, only between axes with equal in and out size."""
    perm = [0, 1, 2]
    groups: dict[tuple[int, int], list[int]] = {}
    for a in axes:
        groups.setdefault((in_shape[a], out_shape[a]), []).append(a)
    for group in groups.values():
        if len(group) > 1:
            shuffled = rng.permutation(group)
            for a, b in zip(group, shuffled):
                perm[a] = int(b)
    return perm[0], perm[1], perm[2]


def _check_axes(transpose_axes: Sequence[int] | None) -> tuple[int, ...]:
    if transpose_axes is None:
        return (0, 1, 2)
    axes = tuple(int(a) for a in transpose_axes)
    if any(a not in (0, 1, 2) for a in axes) or len(set(axes)) != len(axes):
        raise ValueError(f"transpose_axes must be distinct axes among (0, 1, 2), got {transpose_axes}")
    return axes


def sample_params(
    in_shape: Sequence[int],
    out_shape: Sequence[int],
    cfg: AugmentConfig,
    rng: np.random.Generator,
    transpose_axes: Sequence[int] | None = None,
) -> AugmentParams:
    """Draw one set of augmentation parameters for an ``in_shape`` input grid (voxels, z, y, x).

    ``transpose_axes``: axes of equal voxel size that may be permuted (None: all
    three); within them only axes with equal in and out size are exchanged, so
    the array shapes never change.
    """
    in_shape = _shape3(in_shape, "in_shape")
    out_shape = _shape3(out_shape, "out_shape")
    axes = _check_axes(transpose_axes)
    p = AugmentParams()
    if not cfg.enabled:
        return p
    if cfg.do_rotate:
        p.angle = float(rng.uniform(0.0, cfg.rotation_max))
    if cfg.do_elastic:
        n_ctrl = tuple(_n_control(n, cfg.control_point_spacing) for n in in_shape)
        p.jitter = rng.normal(0.0, cfg.jitter_sigma, size=(3, *n_ctrl)).astype(np.float32)
    if cfg.mirror:
        flip = rng.random(3) < 0.5
        p.mirror = (bool(flip[0]), bool(flip[1]), bool(flip[2]))
    if cfg.transpose:
        p.permutation = _group_permutation(axes, in_shape, out_shape, rng)
    if cfg.intensity:
        p.scale = float(rng.uniform(*cfg.intensity_scale))
        p.shift = float(rng.uniform(*cfg.intensity_shift))
    return p


# --------------------------------------------------------------------------- coordinate map


@functools.lru_cache(maxsize=64)
def _zoom_matrix(n_control: int, n_sub: int) -> np.ndarray:
    """(n_sub, n_control): ``ndi.zoom`` (order 3, mode nearest) of n_control samples to n_sub,
    as a matrix (its columns are the zoomed unit vectors)."""
    w = ndi.zoom(np.eye(n_control), (n_sub / n_control, 1), order=3, mode="nearest")
    w.flags.writeable = False
    return w


@dataclass(eq=False)
class _Warp:
    """Coordinate map of the ``in_shape`` grid into an upstream block (voxels, z, y, x)."""

    in_shape: Shape3
    centre: np.ndarray  # upstream coordinate of the input-grid centre
    cos: float
    sin: float
    disp_sub: np.ndarray | None  # (3, sz, sy, sx) displacement on the subsampled grid, clipped

    @classmethod
    def build(cls, in_shape: Shape3, up_shape: Shape3, params: AugmentParams, cfg: AugmentConfig) -> _Warp:
        origin = np.array([(u - n) // 2 for u, n in zip(up_shape, in_shape)], dtype=np.float64)
        centre = origin + (np.array(in_shape, dtype=np.float64) - 1.0) / 2.0
        c, s = math.cos(params.angle), math.sin(params.angle)
        # snap so that multiples of pi/2 are exact permutations of the grid
        c = 0.0 if abs(c) < 1e-12 else (math.copysign(1.0, c) if abs(abs(c) - 1) < 1e-12 else c)
        s = 0.0 if abs(s) < 1e-12 else (math.copysign(1.0, s) if abs(abs(s) - 1) < 1e-12 else s)
        disp_sub = None
        if params.jitter is not None:
            jit = np.asarray(params.jitter, dtype=np.float64)
            if jit.ndim != 4 or jit.shape[0] != 3:
                raise ValueError(f"jitter must have shape (3, cz, cy, cx), got {jit.shape}")
            n_sub = tuple(_n_points(n, cfg.elastic_subsample) for n in in_shape)
            # cubic spline through the control points, sampled on the coarse grid: ndi.zoom
            # (order 3, mode nearest) is separable, so one matrix per axis does it
            w = [_zoom_matrix(nc, ns) for nc, ns in zip(jit.shape[1:], n_sub)]
            disp_sub = np.einsum("ai,bj,ck,dijk->dabc", *w, jit, optimize=True).astype(np.float32)
            assert disp_sub.shape[1:] == n_sub, (disp_sub.shape, n_sub)
            margin = float(math.ceil(4.0 * cfg.jitter_sigma))
            np.clip(disp_sub, -margin, margin, out=disp_sub)
        return cls(in_shape, centre, c, s, disp_sub)

    @property
    def is_identity(self) -> bool:
        return self.disp_sub is None and self.cos == 1.0 and self.sin == 0.0

    def coords(self, box: tuple[slice, slice, slice]) -> np.ndarray:
        """Upstream coordinates (3, nz, ny, nx), float64 voxels, of the input-grid ``box``."""
        return warp_coordinates(box, self.in_shape, self.centre, self.cos, self.sin, self.disp_sub)

    def sample(
        self,
        array: np.ndarray,
        box: tuple[slice, slice, slice],
        order: int,
        dtype: type,
        params: AugmentParams,
        threads: int = 1,
    ) -> np.ndarray:
        """Sample ``array`` (the upstream block) at the coordinates of ``box``: linear
        (``order=1``) or nearest (``order=0``), scipy's ``reflect`` beyond its border;
        then mirrored and transposed as ``params`` says."""
        return warp_sample(
            array, box, self.in_shape, self.centre, self.cos, self.sin, self.disp_sub, order, dtype,
            params.mirror, params.permutation, threads,
        )  # fmt: skip


def _full_box(shape: Shape3) -> tuple[slice, slice, slice]:
    return slice(0, shape[0]), slice(0, shape[1]), slice(0, shape[2])


def _centred_box(in_shape: Shape3, out_shape: Shape3) -> tuple[slice, slice, slice]:
    z, y, x = (slice((n - m) // 2, (n - m) // 2 + m) for n, m in zip(in_shape, out_shape))
    return z, y, x


def coordinate_map(
    in_shape: Sequence[int], up_shape: Sequence[int], params: AugmentParams, cfg: AugmentConfig
) -> np.ndarray:
    """Full coordinate map (3, *in_shape), float32: where each input voxel samples the upstream block.

    Coordinates are upstream voxel indices (z, y, x); the identity maps input
    index i to i + (up_shape - in_shape) // 2. Mirror/transpose are not included
    (they act on the sampled arrays).
    """
    in_shape = _shape3(in_shape, "in_shape")
    up_shape = _shape3(up_shape, "up_shape")
    return _Warp.build(in_shape, up_shape, params, cfg).coords(_full_box(in_shape)).astype(np.float32)


# --------------------------------------------------------------------------- main entry points


def _check_binary(a: np.ndarray, name: str) -> None:
    if a.dtype == np.bool_:
        return
    if np.issubdtype(a.dtype, np.unsignedinteger):
        ok = a.size == 0 or int(a.max()) <= 1
    elif np.issubdtype(a.dtype, np.integer):
        ok = a.size == 0 or (int(a.min()) >= 0 and int(a.max()) <= 1)
    else:
        ok = bool(np.all((a == 0) | (a == 1)))
    if not ok:
        vals = np.unique(a)
        shown = ", ".join(str(v) for v in vals[:8]) + (", ..." if vals.size > 8 else "")
        raise ValueError(f"{name} must be binary (values in {{0, 1}}), found values [{shown}]")


def _as_uint8(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint8) if a.dtype == np.bool_ else a.astype(np.uint8, copy=False)


def apply_params(
    raw: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray,
    in_shape: Sequence[int],
    out_shape: Sequence[int],
    params: AugmentParams,
    cfg: AugmentConfig,
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply a fixed parameter draw; see :func:`augment` for arrays, ``threads`` and return values.

    ``cfg`` supplies ``elastic_subsample``, the displacement clip
    (ceil(4 * jitter_sigma)) and ``intensity_clip``.
    """
    in_shape = _shape3(in_shape, "in_shape")
    out_shape = _shape3(out_shape, "out_shape")
    if raw.ndim != 3 or labels.shape != raw.shape or mask.shape != raw.shape:
        raise ValueError(
            f"raw, labels and mask must be 3D with equal shapes, got {raw.shape}, {labels.shape}, {mask.shape}"
        )
    up = raw.shape
    if any(u < n for u, n in zip(up, in_shape)):
        raise ValueError(f"upstream block {up} is smaller than in_shape {in_shape}")
    if any(m > n or (n - m) % 2 for n, m in zip(in_shape, out_shape)):
        raise ValueError(
            f"out_shape {out_shape} must be <= in_shape {in_shape} with an even difference per axis "
            "(the output must be exactly centred in the input)"
        )
    if sorted(params.permutation) != [0, 1, 2]:
        raise ValueError(f"permutation must be a permutation of (0, 1, 2), got {params.permutation}")
    if any(in_shape[a] != in_shape[p] or out_shape[a] != out_shape[p] for a, p in enumerate(params.permutation)):
        raise ValueError(f"permutation {params.permutation} exchanges axes of different size {in_shape}/{out_shape}")
    _check_binary(labels, "labels")
    _check_binary(mask, "mask")
    labels8, mask8 = _as_uint8(labels), _as_uint8(mask)

    warp = _Warp.build(in_shape, up, params, cfg)
    if warp.is_identity:
        raw_in = np.array(center_crop(raw, in_shape), dtype=np.float32, copy=True)
        lab_out = np.array(center_crop(labels8, out_shape), dtype=np.uint8, copy=True)
        mask_out = np.array(center_crop(mask8, out_shape), dtype=np.uint8, copy=True)
        flips = tuple(a for a in range(3) if params.mirror[a])
        perm = tuple(params.permutation)
        if flips or perm != (0, 1, 2):
            raw_in, lab_out, mask_out = (
                np.ascontiguousarray(np.transpose(np.flip(a, flips), perm)) for a in (raw_in, lab_out, mask_out)
            )
    else:
        raw_in = warp.sample(raw, _full_box(in_shape), 1, np.float32, params, threads)
        box = _centred_box(in_shape, out_shape)
        lab_out = warp.sample(labels8, box, 0, np.uint8, params, threads)
        mask_out = warp.sample(mask8, box, 0, np.uint8, params, threads)

    if params.scale != 1.0 or params.shift != 0.0:
        # gunpowder IntensityAugment on [0, 1] data: mean + (a - mean) * scale + shift;
        # on [-1, 1] the same change scales about the block mean and doubles the shift.
        mean = np.float32(raw_in.mean())
        raw_in -= mean
        raw_in *= np.float32(params.scale)
        raw_in += mean + np.float32(2.0 * params.shift)
        if cfg.intensity_clip:
            np.clip(raw_in, -1.0, 1.0, out=raw_in)

    _check_binary(lab_out, "augmented labels")
    _check_binary(mask_out, "augmented mask")
    return raw_in, lab_out, mask_out


def augment(
    raw: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray,
    in_shape: Sequence[int],
    out_shape: Sequence[int],
    cfg: AugmentConfig,
    rng: np.random.Generator,
    transpose_axes: Sequence[int] | None = None,
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Randomly augment one upstream block; return network input and target.

    Args:
        raw: float upstream block (z, y, x), intensities in [-1, 1].
        labels, mask: binary (0/1) arrays of the same shape, same centre.
        in_shape: network input shape (voxels, z, y, x).
        out_shape: network output shape, centred in ``in_shape``; ``in - out``
            must be even per axis.
        cfg: augmentation settings; the upstream block should be at least
            :func:`upstream_shape` (``in_shape``, ``cfg``), otherwise samples
            beyond its border are reflected (fallback only).
        rng: source of all randomness.
        transpose_axes: axes with equal voxel size that may be permuted (None:
            all three), e.g. from :func:`transpose_axes_from_voxel_size`.
        threads: threads that sample the warp at once (the result does not
            depend on it; training's data workers parallelise across batches instead).

    Returns:
        ``raw_in`` float32 of ``in_shape``; ``labels_out`` and ``mask_out``
        uint8 (0/1) of ``out_shape``; all C-contiguous and new arrays. Order of
        operations: rotation + elastic (one coordinate map; raw linear, labels
        and mask nearest), mirror, transpose, then gunpowder's intensity change
        ``mean + (raw - mean) * scale + 2 * shift`` (the shift is given on the
        [0, 1] scale; clipped to [-1, 1] if ``cfg.intensity_clip``).

    Raises:
        ValueError: on inconsistent shapes or non-binary labels / mask.
    """
    params = sample_params(in_shape, out_shape, cfg, rng, transpose_axes)
    return apply_params(raw, labels, mask, in_shape, out_shape, params, cfg, threads)
