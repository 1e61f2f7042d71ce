"""Pretrained models by name: a registry of checkpoints downloaded once and cached.

``organet predict --model NAME`` and ``organet models fetch NAME`` resolve a model name
to an organet checkpoint on disk (:func:`resolve_model`). Each :class:`ModelEntry` says
what the model segments (organelle, voxel size in nm (z, y, x), intensity
normalization), where its file comes from and under which licence:

* ``url``: downloaded with pooch into the user cache, verified by SHA-256. Where no hash
  is published (``sha256=None``) the hash of the first download is pinned in the cache
  (trust on first use) and every later use is verified against the pin.
* ``package``: a file shipped inside organet (``organet/model/weights/``).

``kind="incasem"`` entries are incasem/funlib ``.pt`` files; they are converted once with
:func:`organet.model.incasem.import_incasem` and the organet checkpoint is cached next to
the download, keyed by the download's SHA-256.

Cache layout (root: ``$ORGANET_CACHE_DIR``, default ``pooch.os_cache("organet")``)::

    models/NAME/FILE                   the download
    models/NAME/organet-SHA16.pt       the imported checkpoint (incasem entries)
    pins/NAME.sha256                   the pinned hash (entries without a published one)

Deleting ``models/NAME`` (or :meth:`Registry.clear`) forces a new download that must
match the pin; deleting the pin as well trusts whatever is downloaded next. A cache hit
does not touch the network. ``$ORGANET_MODELS_URL`` replaces the folder part of every
download URL (a mirror, or a local server in tests).
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from organet.errors import CheckpointError, InputError
from organet.model.checkpoint import file_sha256
from organet.organelles import canonical_organelle
from organet.progress import ProgressFn, advance, announce

CACHE_ENV = "ORGANET_CACHE_DIR"
"""Environment variable: the cache root (default ``pooch.os_cache("organet")``)."""

URL_ENV = "ORGANET_MODELS_URL"
"""Environment variable: replaces the folder of every download URL (``BASE/FILE``)."""

ASEM_URL = "https://asem-project.s3.amazonaws.com/models/pretrained_checkpoints"
"""The public ASEM bucket (``s3://asem-project``, folder ``models/pretrained_checkpoints/``)."""

Kind = Literal["organet", "incasem"]
KINDS: tuple[str, ...] = ("organet", "incasem")
Importer = Callable[..., Any]
"""``import_incasem(src, dst, organelle, voxel_size, normalization=...)``."""

_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ModelDownloadError(InputError):
    """A model file could not be downloaded (no network, HTTP error, bad URL)."""


class ModelHashError(CheckpointError):
    """A downloaded model file does not have the expected SHA-256 (it was discarded)."""


@dataclass(frozen=True)
class ModelEntry:
    """One pretrained model of the registry.

    Parameters
    ----------
    name : str
        Registry name (lower case, digits, ``-`` and ``.``), e.g. ``asem-mito-cf``.
    description : str
        One line: what the model is.
    organelle : str
        What it segments; stored canonical (``mito``, ``golgi``, ``er``, ``np``, ``ccp``).
    voxel_size : tuple of float
        Voxel size the model was trained at, nm (z, y, x).
    normalization : str
        One line: the intensity normalization the input must have. For incasem entries it
        is also passed to the importer (``clahe-incasem``).
    kind : {"organet", "incasem"}
        ``organet``: the file is an organet checkpoint; ``incasem``: an incasem ``.pt``
        imported on first use.
    licence, citation : str
        Terms of use of the weights and what to cite.
    url : str, optional
        Download URL (the file name is its last part). Exactly one of ``url``/``package``.
    sha256 : str, optional
        Published SHA-256 of the download; None: pinned on first download (trust on first use).
    url_confirmed : bool
        False where the file name is inferred from a naming pattern, not published.
    package : str, optional
        A file shipped inside organet, relative to the ``organet.model`` package
        (``weights/NAME.pt``).
    notes : str
        Anything else worth knowing (provenance, discrepancies between sources).
    """

    name: str
    description: str
    organelle: str
    voxel_size: tuple[float, float, float]
    normalization: str
    kind: Kind
    licence: str
    citation: str
    url: str | None = None
    sha256: str | None = None
    url_confirmed: bool = True
    package: str | None = None
    notes: str = ""

    def __post_init__(self) -> None:
        where = f"model entry {self.name!r}"
        if not _NAME.match(self.name):
            raise InputError(f"{where}: name must be lower case letters, digits, '-' or '.'")
        object.__setattr__(self, "organelle", canonical_organelle(self.organelle, f"{where}: organelle"))
        if len(self.voxel_size) != 3 or not all(float(v) > 0 for v in self.voxel_size):
            raise InputError(f"{where}: voxel_size must be 3 positive numbers (nm, z y x), got {self.voxel_size}")
        object.__setattr__(self, "voxel_size", tuple(float(v) for v in self.voxel_size))
        if self.kind not in KINDS:
            raise InputError(f"{where}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if (self.url is None) == (self.package is None):
            raise InputError(f"{where}: give exactly one source, 'url' or 'package'")
        if self.sha256 is not None:
            if not _SHA256.match(self.sha256.lower()):
                raise InputError(f"{where}: sha256 must be 64 hex digits, got {self.sha256!r}")
            object.__setattr__(self, "sha256", self.sha256.lower())
        if "\n" in self.normalization:
            raise InputError(f"{where}: normalization must be one line")

    @property
    def file_name(self) -> str:
        """The name of the model file (last part of the URL or package path)."""
        src = self.url if self.url is not None else self.package
        assert src is not None
        return src.rstrip("/").rsplit("/", 1)[-1]

    @property
    def short_normalization(self) -> str:
        """The normalization without its explanation in parentheses (for tables)."""
        return self.normalization.split(" (", 1)[0].split(";", 1)[0].strip()

    @property
    def short_licence(self) -> str:
        """The licence without its explanation (for tables): ``CC BY-SA 4.0``, ``research use``."""
        return self.licence.split(" (", 1)[0].split(";", 1)[0].strip()

    @property
    def voxel_size_text(self) -> str:
        """``5`` for isotropic 5 nm voxels, else ``z×y×x`` (nm)."""
        vs = [f"{v:g}" for v in self.voxel_size]
        return vs[0] if len(set(vs)) == 1 else "×".join(vs)


def cache_dir() -> Path:
    """The cache root: ``$ORGANET_CACHE_DIR`` or ``pooch.os_cache("organet")`` (user cache folder)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import pooch

    return Path(pooch.os_cache("organet")).expanduser()


class _ProgressAdapter:
    """pooch's progress-bar protocol (``total``, ``update``, ``reset``, ``close``) as a ProgressFn."""

    def __init__(self, progress: ProgressFn, stage: str) -> None:
        self.progress, self.stage = progress, stage
        self._total = 0
        self.done = 0

    @property
    def total(self) -> int:
        return self._total

    @total.setter
    def total(self, total: int) -> None:
        self._total = int(total or 0)
        self.done = 0
        announce(self.progress, self.stage, self._total)

    def update(self, n: int) -> None:
        n = int(n) if self._total == 0 else min(int(n), self._total - self.done)
        if n > 0:
            self.done += n
            advance(self.progress, self.stage, n, max(self._total, self.done))

    def reset(self) -> None:
        self.done = 0
        announce(self.progress, self.stage, self._total)

    def close(self) -> None:
        pass


def _reason(e: BaseException) -> str:
    """A short one-line reason of a failed download."""
    import requests

    if isinstance(e, requests.HTTPError) and e.response is not None:
        return f"HTTP {e.response.status_code} {e.response.reason}".strip()
    if isinstance(e, requests.Timeout):
        return "the connection timed out"
    text = str(e)
    m = re.search(r"\[Errno -?\d+\] [^'\")\]]+", text)
    if m:
        return m.group(0).strip()
    return " ".join(text.split()) or type(e).__name__


class _VerifyingDownloader:
    """A pooch downloader that translates network errors into :class:`ModelDownloadError`
    and checks the SHA-256 of the downloaded (temporary) file itself, so a mismatch is
    reported with both hashes before pooch discards the file."""

    def __init__(self, entry: ModelEntry, expected: str | None, pin: Path | None, hint: str) -> None:
        self.entry, self.expected, self.pin, self.hint = entry, expected, pin, hint
        self.progressbar: _ProgressAdapter | bool = False
        self.sha256: str | None = None

    def __call__(self, url: str, output_file: Any, pooch_obj: Any) -> None:
        import pooch
        import requests

        try:
            downloader = pooch.HTTPDownloader(progressbar=self.progressbar, timeout=60)
        except ValueError as e:
            raise ModelDownloadError(f"cannot download model {self.entry.name!r} from {url}: {e}") from None
        try:
            downloader(url, output_file, pooch_obj)
        except (requests.RequestException, OSError) as e:
            raise ModelDownloadError(
                f"cannot download model {self.entry.name!r} from {url}: {_reason(e)}; {self.hint}"
            ) from None
        found = file_sha256(output_file)
        if self.expected is not None and found != self.expected:
            if self.pin is not None:
                origin = (
                    f"pinned on first download in {self.pin}; if the file was changed on purpose, "
                    f"delete the pin to trust the new one"
                )
            else:
                origin = "published in organet's model registry"
            raise ModelHashError(
                f"model {self.entry.name!r}: the file downloaded from {url} has sha256 {found}, "
                f"expected {self.expected} ({origin}); the download was discarded"
            )
        self.sha256 = found


@contextmanager
def _quiet_pooch() -> Iterator[None]:
    import pooch

    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _default_importer() -> Importer:
    from organet.model.incasem import import_incasem

    return import_incasem


class Registry:
    """A set of :class:`ModelEntry` by name, with their download cache.

    Parameters
    ----------
    entries : iterable of ModelEntry
        The models (names must be unique).
    importer : callable, optional
        Converts an incasem ``.pt``: ``importer(src, dst, organelle, voxel_size,
        normalization=...)``; default :func:`organet.model.incasem.import_incasem`.
    package_dir : path, optional
        Folder that ``package`` sources are relative to; default the installed
        ``organet.model`` package.
    cache : path, optional
        Cache root; default :func:`cache_dir` (read at each use, so the environment
        variable may change).
    """

    def __init__(
        self,
        entries: Iterable[ModelEntry] = (),
        *,
        importer: Importer | None = None,
        package_dir: str | os.PathLike[str] | None = None,
        cache: str | os.PathLike[str] | None = None,
    ) -> None:
        self._entries: dict[str, ModelEntry] = {}
        self.importer = importer
        self.package_dir = Path(package_dir) if package_dir is not None else Path(__file__).parent
        self._cache = Path(cache) if cache is not None else None
        for e in entries:
            self.register(e)

    # -- the entries -------------------------------------------------------------------------

    def register(self, entry: ModelEntry, *, replace: bool = False) -> None:
        """Add ``entry``; a name that exists already is refused unless ``replace``."""
        if entry.name in self._entries and not replace:
            raise InputError(f"model {entry.name!r} is already in the registry")
        self._entries[entry.name] = entry

    def unregister(self, name: str) -> None:
        """Remove the entry called ``name`` (no-op when absent)."""
        self._entries.pop(name, None)

    @property
    def entries(self) -> Mapping[str, ModelEntry]:
        """Name -> entry, in registration order."""
        return dict(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str) -> ModelEntry:
        """The entry called ``name``; :class:`InputError` listing the names and the nearest one."""
        if name in self._entries:
            return self._entries[name]
        raise InputError(f"unknown model {name!r}: expected one of {', '.join(self._entries)}{self._near(name)}")

    def _near(self, name: str) -> str:
        near = difflib.get_close_matches(name.lower(), list(self._entries), n=1, cutoff=0.5)
        return f" (did you mean {near[0]!r}?)" if near else ""

    # -- where things are --------------------------------------------------------------------

    @property
    def cache(self) -> Path:
        """The cache root (see :func:`cache_dir`)."""
        return self._cache if self._cache is not None else cache_dir()

    def url(self, entry: ModelEntry) -> str | None:
        """The download URL of ``entry`` (``$ORGANET_MODELS_URL/FILE`` where the variable is set)."""
        if entry.url is None:
            return None
        base = os.environ.get(URL_ENV)
        return f"{base.rstrip('/')}/{entry.file_name}" if base else entry.url

    def model_dir(self, entry: ModelEntry) -> Path:
        """The cache folder of ``entry``'s download and imported checkpoint."""
        return self.cache / "models" / entry.name

    def download_path(self, entry: ModelEntry) -> Path:
        """Where the downloaded file is (``url`` entries) or the packaged file (``package``)."""
        if entry.package is not None:
            return self.package_dir / entry.package
        return self.model_dir(entry) / entry.file_name

    def pin_path(self, entry: ModelEntry) -> Path:
        """The file that holds the SHA-256 pinned on first download."""
        return self.cache / "pins" / f"{entry.name}.sha256"

    def pinned_sha256(self, entry: ModelEntry) -> str | None:
        """The pinned SHA-256 of ``entry`` (None before the first download)."""
        p = self.pin_path(entry)
        if not p.is_file():
            return None
        text = p.read_text().split()
        if not text or not _SHA256.match(text[0].lower()):
            raise CheckpointError(f"pin file {p} does not hold a sha256 (64 hex digits); delete it to pin anew")
        return text[0].lower()

    def expected_sha256(self, entry: ModelEntry) -> str | None:
        """The published SHA-256, else the pinned one, else None."""
        return entry.sha256 if entry.sha256 is not None else self.pinned_sha256(entry)

    def imported_path(self, entry: ModelEntry, source_sha256: str) -> Path:
        """The organet checkpoint imported from a download with SHA-256 ``source_sha256``."""
        return self.model_dir(entry) / f"organet-{source_sha256[:16]}.pt"

    def is_cached(self, entry: ModelEntry) -> bool:
        """Whether resolving ``entry`` needs no network (its download or packaged file is here)."""
        return self.download_path(entry).is_file()

    def clear(self, name: str, *, forget_pin: bool = False) -> None:
        """Delete the cached download and imported checkpoint of ``name``; the pinned hash
        stays unless ``forget_pin`` (so a new download must match the first one)."""
        from organet.volumes.atomic import remove_path

        entry = self.get(name)
        remove_path(self.model_dir(entry))
        if forget_pin:
            remove_path(self.pin_path(entry))

    # -- resolving ---------------------------------------------------------------------------

    def resolve(self, name_or_path: str | os.PathLike[str], *, progress: ProgressFn | None = None) -> Path:
        """The organet checkpoint for a file path or a registry name.

        An existing file is returned as is. A name is fetched into the cache (once; a
        cache hit does not touch the network), verified against its SHA-256 (published or
        pinned on first download), imported if it is an incasem entry (once per download
        hash), and the path of its organet checkpoint returned.

        Raises :class:`InputError` for an unknown name that is no file either,
        :class:`ModelDownloadError` when the file cannot be downloaded,
        :class:`ModelHashError` on a hash mismatch (nothing is cached then) and
        :class:`CheckpointError` for a packaged file missing from the installation.
        """
        p = Path(name_or_path).expanduser()
        if p.is_file():
            return p
        name = str(name_or_path)
        if name not in self._entries:
            looks_like_path = os.sep in name or "/" in name or name.endswith((".pt", ".pth"))
            what = f"checkpoint file not found: {name}" if looks_like_path else f"no checkpoint file {name!r}"
            raise InputError(
                f"{what}, and no model of that name: known models are {', '.join(self._entries)}{self._near(name)}"
            )
        return self.fetch(name, progress=progress)

    def fetch(self, name: str, *, progress: ProgressFn | None = None) -> Path:
        """Download (or find in the cache), verify and import the model ``name``; returns the
        path of its organet checkpoint. See :meth:`resolve`."""
        entry = self.get(name)
        if entry.package is not None:
            src = self.download_path(entry)
            if not src.is_file():
                raise CheckpointError(
                    f"the packaged weights file {src} of model {entry.name!r} is missing from this installation; "
                    f"reinstall organet, or train the model yourself and pass its checkpoint path"
                )
            return src if entry.kind == "organet" else self._imported(entry, src, file_sha256(src))
        src, sha = self._download(entry, progress)
        return src if entry.kind == "organet" else self._imported(entry, src, sha)

    def _download(self, entry: ModelEntry, progress: ProgressFn | None) -> tuple[Path, str]:
        import pooch

        from organet.volumes.atomic import atomic_write_text

        url = self.url(entry)
        assert url is not None
        pinned = entry.sha256 is None
        expected = self.expected_sha256(entry)
        if entry.kind == "incasem":
            vs = " ".join(f"{v:g}" for v in entry.voxel_size)
            hint = (
                "connect to the internet once, or download the file yourself and run `organet import incasem "
                f"{entry.file_name} {entry.name}.pt --organelle {entry.organelle} --voxel-size {vs}` "
                f"(then pass {entry.name}.pt with --model)"
            )
        else:
            hint = "connect to the internet once, or download the file yourself and pass its path with --model"
        downloader = _VerifyingDownloader(entry, expected, self.pin_path(entry) if pinned else None, hint)
        if progress is not None:
            downloader.progressbar = _ProgressAdapter(progress, "download")
        path = self.download_path(entry)
        if path.is_file():  # a cache hit is verified here, without pooch and the network
            found = file_sha256(path)
            if expected is None or found == expected:
                if expected is None:
                    atomic_write_text(self.pin_path(entry), f"{found}  {entry.file_name}\n")
                return path, found
            path.unlink()  # no longer the file it was: download it again (verified below)
        with _quiet_pooch():
            try:
                pooch.retrieve(
                    url,
                    known_hash=None if expected is None else f"sha256:{expected}",
                    fname=path.name,
                    path=path.parent,
                    downloader=downloader,
                )
            except ValueError as e:
                if isinstance(e, InputError):
                    raise
                # pooch's own check (should not differ from ours); keep its message on one line
                raise ModelHashError(f"model {entry.name!r}: {' '.join(str(e).split())}") from None
        sha = downloader.sha256 or file_sha256(path)
        if expected is None:
            atomic_write_text(self.pin_path(entry), f"{sha}  {entry.file_name}\n")
        return path, sha

    def _imported(self, entry: ModelEntry, src: Path, sha: str) -> Path:
        from organet.volumes.atomic import atomic_path

        dst = self.imported_path(entry, sha)
        if dst.is_file():
            return dst
        importer = self.importer if self.importer is not None else _default_importer()
        with atomic_path(dst) as tmp:
            importer(src, tmp, entry.organelle, entry.voxel_size, normalization=entry.normalization)
        for old in dst.parent.glob("organet-*.pt"):
            if old != dst:
                old.unlink(missing_ok=True)
        return dst


# -- the built-in models ---------------------------------------------------------------------

ASEM_LICENCE = "CC BY-SA 4.0"
ASEM_CITATION = (
    "Gallusser B. et al., Deep neural network automated segmentation of cellular structures in "
    "volume electron microscopy, J Cell Biol 2023, doi:10.1083/jcb.202208005"
)
LUCCHI_CITATION = (
    "Lucchi A. et al., Learning Structured Models for Segmentation of 2D and 3D Imagery, IEEE Trans "
    "Med Imaging 2015; Casser V. et al., Fast Mitochondria Detection for Connectomics, MIDL 2020; " + ASEM_CITATION
)
_CF = "chemically fixed cells (FIB-SEM)"
_HPF = "high-pressure frozen cells (FIB-SEM)"
_INFERRED = (
    "The file name follows the pattern of the two names incasem's repository confirms "
    "(model_checkpoint_<id>_<organelle>_<CF|HPF>.pt); it is inferred, not published."
)
_ASEM_NOTE = (
    "Input must be CLAHE-equalized as incasem's raw_equalized_0.02 (organet preprocess --method clahe-incasem)."
)


def _asem(
    name: str, run: int, organelle: str, label: str, tag: str, nm: float, confirmed: bool, extra: str = ""
) -> ModelEntry:
    prep = _CF if tag == "CF" else _HPF
    return ModelEntry(
        name=name,
        description=f"ASEM {label} model (incasem run {run}), {prep}, {nm:g} nm",
        organelle=organelle,
        voxel_size=(nm, nm, nm),
        normalization="clahe-incasem",
        kind="incasem",
        licence=ASEM_LICENCE,
        citation=ASEM_CITATION,
        url=f"{ASEM_URL}/model_checkpoint_{run}_{organelle}_{tag}.pt",
        sha256=None,
        url_confirmed=confirmed,
        notes=" ".join(n for n in (_ASEM_NOTE, "" if confirmed else _INFERRED, extra) if n),
    )


_PIT_PORE_NOTE = (
    "incasem's README lists the coated-pit and nuclear-pore models as high-pressure frozen at 5x5x5 nm; "
    "our issue 14 said 4 nm. organet follows the README (5 nm)."
)

BUILTIN_ENTRIES: tuple[ModelEntry, ...] = (
    ModelEntry(
        name="mito-lucchi",
        description="organet mitochondria model trained on Lucchi++ (mouse hippocampus CA1 FIB-SEM)",
        organelle="mito",
        voxel_size=(10.0, 10.0, 10.0),
        normalization="none (uint8 dtype range)",
        kind="organet",
        licence="research use (trained on Lucchi++); cite Lucchi et al. 2015 and Casser et al. 2020",
        citation=LUCCHI_CITATION,
        package="weights/mito-lucchi.pt",
        notes=(
            "Trained at 10 nm on 5 nm planes 0-123 of Lucchi++ (1400 iterations, reduced network of "
            "configs/lucchi_mito_cpu.yaml; optimizer state stripped). Held-out planes 125-164 at 5 nm: F1 0.901 "
            "(mito exclusion zone, threshold 0.5); its run's last 5 checkpoints 0.893 +- 0.006 (docs/results.md). "
            "Applied to data of any voxel size through resampling (5 nm: the mean of 2x2x2 voxels)."
        ),
    ),
    _asem("asem-mito-cf", 1847, "mito", "mitochondria", "CF", 5.0, True),
    _asem("asem-golgi-cf", 1837, "golgi", "Golgi apparatus", "CF", 5.0, False),
    _asem("asem-er-cf", 1841, "er", "endoplasmic reticulum", "CF", 5.0, True),
    _asem("asem-mito-hpf", 1675, "mito", "mitochondria", "HPF", 4.0, False),
    _asem("asem-er-hpf", 1669, "er", "endoplasmic reticulum", "HPF", 4.0, False),
    _asem("asem-ccp-hpf", 1986, "ccp", "clathrin-coated pit", "HPF", 5.0, False, _PIT_PORE_NOTE),
    _asem("asem-np-hpf", 2000, "np", "nuclear pore", "HPF", 5.0, False, _PIT_PORE_NOTE),
)

DEFAULT_REGISTRY = Registry(BUILTIN_ENTRIES)
"""The registry the command line uses; add entries with :meth:`Registry.register`."""


def resolve_model(name_or_path: str | os.PathLike[str], *, progress: ProgressFn | None = None) -> Path:
    """The organet checkpoint for a file path or a model name of :data:`DEFAULT_REGISTRY`
    (see :meth:`Registry.resolve`)."""
    return DEFAULT_REGISTRY.resolve(name_or_path, progress=progress)


__all__ = [
    "ASEM_URL",
    "BUILTIN_ENTRIES",
    "CACHE_ENV",
    "DEFAULT_REGISTRY",
    "URL_ENV",
    "ModelDownloadError",
    "ModelEntry",
    "ModelHashError",
    "Registry",
    "cache_dir",
    "file_sha256",
    "resolve_model",
]
