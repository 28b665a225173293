"""Whether Seed-VC can serve in real time here, in words, without loading it and without asking the
hub: a CUDA GPU, and its weights in the model cache."""

from __future__ import annotations

from pathlib import Path


def gpu_obstacle(device: str) -> str | None:
    """Why Seed-VC would not get a CUDA GPU here, or None."""
    if device == "cpu":
        return "the CPU device was requested"
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU found"
    if device.startswith("cuda:"):
        index = device.partition(":")[2]
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            return f"no GPU {device}"
    return None


def weights_obstacle(model_cache: Path | None) -> str | None:
    """Why Seed-VC's weights are not usable from the cache (never asks the hub), or None."""
    try:
        from vcstream.engines.seedvc.weights import check_weights, default_cache_dir
    except ImportError as exc:
        return f"Seed-VC is not installed ({exc})"
    missing = [entry for entry in check_weights(model_cache) if not entry.present]
    if not missing:
        return None
    cache = default_cache_dir(model_cache)
    where = str(cache) if cache else "the default Hugging Face cache"
    return (
        f"Seed-VC weights not found in {where} ({len(missing)} file(s) missing; "
        "`vcstream models download` fetches them)"
    )


def obstacles(device: str, model_cache: Path | None) -> list[str]:
    return [reason for reason in (gpu_obstacle(device), weights_obstacle(model_cache)) if reason]
