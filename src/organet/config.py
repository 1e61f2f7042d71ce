"""Experiment configuration (YAML validated by pydantic).

Relative paths in a config file are resolved against the directory of that
file. Unknown keys and bad values are errors that name the key.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from organet.errors import ConfigError, InputError
from organet.evaluate.exclusion import resolve_exclusion
from organet.model.unet import UNetConfig, output_shape, valid_sizes
from organet.organelles import canonical_organelle
from organet.preprocess.normalize import Normalization
from organet.train.augment import AugmentConfig
from organet.volumes.remote import is_url


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


Triple = tuple[int, int, int]
_PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
PositiveTriple = tuple[_PositiveFloat, _PositiveFloat, _PositiveFloat]


class RoiSpec(_Strict):
    """One block of data: raw + labels (+ optional sample mask) and an ROI.

    ``roi_vox`` / ``roi_nm`` are ``"z0:z1,y0:y1,x0:x1"`` strings (empty parts
    mean the whole axis); give at most one. No ROI = the whole volume.
    """

    name: str | None = None
    raw: str
    labels: str
    mask: str | None = None
    roi_vox: str | None = None
    roi_nm: str | None = None
    voxel_size: PositiveTriple | None = Field(default=None, description="nm (z, y, x); overrides file metadata")
    naive: bool = Field(default=False, description="validation only: a cell never seen in training")
    group: str = Field(default="train", description="training only: sampling group (data.group_weights)")

    @model_validator(mode="after")
    def _one_roi(self) -> RoiSpec:
        if self.roi_vox is not None and self.roi_nm is not None:
            raise ValueError("give either 'roi_vox' or 'roi_nm', not both")
        return self


class DataConfig(_Strict):
    train: list[RoiSpec] = Field(min_length=1)
    validation: list[RoiSpec] = Field(default_factory=list)
    cache_max_gib: float = Field(default=4.0, ge=0, description="training ROIs up to this size are held in RAM")
    resample_raw: Literal["auto", "area", "linear"] = Field(
        default="auto",
        description="training raw of another voxel size than the model's: 'auto' = area means along coarser "
        "axes, linear interpolation along finer ones",
    )
    resample_labels: Literal["majority", "nearest"] = Field(
        default="majority", description="training labels of another voxel size: 'majority' (>= half) or 'nearest'"
    )
    group_weights: dict[str, float] | None = Field(
        default=None,
        description="share of training blocks drawn from each ROI group (e.g. {new: 0.75, old: 0.25} to fine-tune "
        "with some of the original data); within a group by ROI size. Default: all ROIs by size",
    )

    @model_validator(mode="after")
    def _groups(self) -> DataConfig:
        if self.group_weights is None:
            return self
        groups = {r.group for r in self.train}
        if missing := sorted(groups - set(self.group_weights)):
            raise ValueError(f"group_weights has no weight for training group(s) {missing}")
        if unused := sorted(set(self.group_weights) - groups):
            raise ValueError(f"group_weights names group(s) {unused} that no training ROI is in")
        if any(w < 0 or not math.isfinite(w) for w in self.group_weights.values()) or not any(
            w > 0 for w in self.group_weights.values()
        ):
            raise ValueError(f"group_weights must be >= 0 with at least one > 0, got {self.group_weights}")
        return self


class ModelConfig(_Strict):
    num_fmaps: int = Field(default=32, ge=1)
    fmap_inc_factor: int = Field(default=2, ge=1)
    downsample_factors: list[Triple] = Field(default_factory=lambda: [(2, 2, 2)] * 3)
    input_shape: Triple = (204, 204, 204)
    weight_init: Literal["kaiming", "pytorch"] = Field(
        default="kaiming", description="'pytorch' = torch defaults as in funlib/incasem"
    )
    voxel_size: PositiveTriple | None = Field(
        default=None,
        description="nm (z, y, x) the model works at; training sources of other voxel sizes are resampled to it "
        "(default: the first training source's)",
    )

    def architecture(self) -> UNetConfig:
        return UNetConfig(
            num_fmaps=self.num_fmaps,
            fmap_inc_factor=self.fmap_inc_factor,
            downsample_factors=tuple((f[0], f[1], f[2]) for f in self.downsample_factors),
        )

    @model_validator(mode="after")
    def _valid_shape(self) -> ModelConfig:
        arch = self.architecture()
        if output_shape(arch, self.input_shape) is None:
            sizes = [s for s, _ in valid_sizes(arch, 320)]
            near = sorted(sizes, key=lambda s: abs(s - self.input_shape[0]))[:4]
            raise ValueError(
                f"input_shape {list(self.input_shape)} is not valid for this network; "
                f"valid sizes per axis near it: {sorted(near)}"
            )
        return self


class SamplingConfig(_Strict):
    min_foreground: float = Field(default=0.05, ge=0, le=1, description="fraction of fg in the output block")
    reject_probability: float = Field(default=0.9, ge=0, le=1)
    min_masked: float = Field(default=0.75, ge=0, le=1, description="fraction inside the sample mask")
    mask_reject_probability: float = Field(default=0.95, ge=0, le=1)
    context: Literal["volume", "pad"] = Field(
        default="volume",
        description="raw around an ROI: 'volume' = the real data (padded only outside the volume; labels/mask "
        "outside the ROI get loss weight 0); 'pad' = mid-grey, labels 0, mask 1 (runs before this setting)",
    )


class LossConfig(_Strict):
    class_balance: bool = True
    frac_clip: tuple[float, float] = (0.01, 0.99)


class OptimizerConfig(_Strict):
    lr: float = Field(default=3e-5, gt=0)
    weight_decay: float = Field(default=3e-5, ge=0)
    lr_schedule: Literal["constant", "cosine"] = Field(
        default="constant", description="cosine: from lr down to lr_min at training.iterations"
    )
    lr_min: float = Field(default=0.0, ge=0)

    def lr_at(self, iteration: int, total: int) -> float:
        """Learning rate for the step that follows ``iteration`` completed steps."""
        if self.lr_schedule == "constant":
            return self.lr
        t = min(1.0, iteration / max(1, total))
        return self.lr_min + 0.5 * (self.lr - self.lr_min) * (1.0 + math.cos(math.pi * t))


class TrainingConfig(_Strict):
    iterations: int = Field(default=100_000, ge=1)
    batch_size: int = Field(default=1, ge=1)
    checkpoint_every: int = Field(default=1000, ge=1)
    max_minutes: float | None = Field(default=None, gt=0, description="stop (with a checkpoint) after this time")
    device: str = "auto"
    log_every: int = Field(default=10, ge=1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto", description="auto: bf16 on CUDA devices that support it, fp32 elsewhere"
    )
    data_workers: int = Field(
        default=1,
        ge=0,
        le=64,
        description=(
            "background threads that sample and augment the next batches while a step computes (0: inline); "
            "the warp releases the GIL, so on a GPU give it the spare CPU cores"
        ),
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu") and not v.startswith("cuda"):
            raise ValueError(f"must be 'auto', 'cpu' or 'cuda[:N]', got {v!r}")
        return v


class ValidationConfig(_Strict):
    exclusion_zone: tuple[int, int] | None = Field(
        default=None,
        description="(inner, outer) voxels; unset (or null): the organelle's width both ways; [0, 0]: no exclusion",
    )
    threshold: float = Field(default=0.5, gt=0, lt=1)
    tile_input_shape: Triple | None = None
    batch_size: int = Field(default=1, ge=1)

    @field_validator("exclusion_zone")
    @classmethod
    def _widths(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and min(v) < 0:
            raise ValueError(f"widths must be >= 0 voxels, got {list(v)}")
        return v


class ExperimentConfig(_Strict):
    name: str = "experiment"
    organelle: str = "mito"
    output_dir: str = Field(default="runs/experiment", description="run folder (relative to the config file)")
    seed: int = 0
    model: ModelConfig = Field(default_factory=ModelConfig)
    normalization: Normalization = Field(default_factory=Normalization)
    data: DataConfig
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)

    @field_validator("organelle")
    @classmethod
    def _organelle(cls, v: str) -> str:
        try:
            return canonical_organelle(v, "organelle")
        except InputError as e:  # pydantic puts the key in front of the message
            raise ValueError(str(e).removeprefix("organelle: ")) from None

    def validation_exclusion_zone(self) -> tuple[int, int] | None:
        """The exclusion zone of validation F1, ``(inner, outer)`` voxels, or None for none:
        ``validation.exclusion_zone`` if set, else the organelle's width both ways."""
        return resolve_exclusion(self.validation.exclusion_zone, self.organelle)

    def record(self) -> dict[str, Any]:
        """The config as JSON-ready data, with the exclusion zone written out as resolved
        (``[0, 0]`` for none), so a recorded config means the same when read back."""
        d = self.model_dump(mode="json")
        ez = self.validation_exclusion_zone()
        d["validation"]["exclusion_zone"] = list(ez) if ez is not None else [0, 0]
        return d

    def resolve_paths(self, base: Path) -> ExperimentConfig:
        """A copy with data and output paths made absolute against ``base``."""

        def res(p: str | None) -> str | None:
            if p is None:
                return None
            # keep the in-container part (``a.zarr/x`` or ``f.h5:/x``) intact
            return p if is_url(p) or Path(p.split(":/")[0]).is_absolute() else str(base / p)

        d = self.model_dump()
        for group in ("train", "validation"):
            for r in d["data"][group]:
                for k in ("raw", "labels", "mask"):
                    r[k] = res(r[k])
        d["output_dir"] = res(d["output_dir"])
        return ExperimentConfig.model_validate(d)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside a field's type (``X``, ``X | None``, ``list[X]``, ``dict[str, X]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _organet_model(title: str) -> type[BaseModel] | None:
    """organet's pydantic model called ``title`` (the name a ValidationError carries)."""
    todo: list[type[BaseModel]] = [BaseModel]
    while todo:
        cls = todo.pop()
        if cls.__name__ == title and cls.__module__.startswith("organet"):
            return cls
        todo.extend(cls.__subclasses__())
    return None


def known_keys(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str]:
    """The keys valid in the mapping at ``loc`` (a pydantic error location without its last
    part) of ``model``; [] when unknown."""
    for part in loc:
        if model is None:
            return []
        if isinstance(part, int):  # an item of a list: its model was taken with the field
            continue
        field = model.model_fields.get(str(part))
        model = _model_of(field.annotation) if field is not None else None
    return sorted(model.model_fields) if model is not None else []


def unknown_key_message(key: str, valid: list[str]) -> str:
    """``unknown key`` with the nearest valid key (difflib), else the valid keys."""
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if near:
        return f"unknown key; did you mean {near[0]!r}?"
    return f"unknown key; valid keys: {', '.join(valid)}" if valid else "unknown key"


def format_validation_error(e: ValidationError, source: str, model: type[BaseModel] | None = None) -> str:
    """One line per problem: ``source: key.path: message (got value)``; an unknown key
    names the nearest valid one (``model``: the validated model, else found by the
    error's title among organet's models)."""
    lines = []
    model = model if model is not None else _organet_model(e.title)
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = unknown_key_message(str(err["loc"][-1]), known_keys(model, tuple(err["loc"][:-1])))
        got = err.get("input")
        shown = "" if err["type"] in ("missing",) or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{source}: {loc}: {msg}{shown}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], source: str = "config") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, ExperimentConfig)) from None


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """The top-level mapping of a YAML file; ConfigError for a missing file, bad YAML or another type."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        why = getattr(e, "problem", None) or str(e).strip().splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{at}: {why}; expected a YAML mapping of keys") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def load_config(path: str | Path) -> ExperimentConfig:
    """Load, validate and resolve relative paths of a YAML experiment config."""
    path = Path(path)
    return parse_config(read_yaml_mapping(path), str(path)).resolve_paths(path.parent.resolve())
