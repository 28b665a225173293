"""``vcstream bench quality``: converts each source toward each reference with each engine over one
transport and scores the result, beside baselines measured in the same run: the unconverted source, the
reference itself and, where its real weights are present, Seed-VC's offline (whole-utterance) inference.

Scores: CAM++ speaker similarity to the reference and to the source, DNSMOS SIG/BAK/OVRL/P.808,
pocketsphinx WER/CER against the given text (or the source's own transcript), and F0 statistics."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from vcstream.audio.types import Audio
from vcstream.bench.quality_paths import convert_via
from vcstream.engines.registry import EngineOptions
from vcstream.errors import ConfigurationError, ModelUnavailableError
from vcstream.media import decode_file
from vcstream.quality.intelligibility import Intelligibility, Transcriber
from vcstream.quality.naturalness import Naturalness, NaturalnessRater
from vcstream.quality.pitch import PitchStats, pitch_stats
from vcstream.quality.speaker import SpeakerEncoder, cosine

log = logging.getLogger(__name__)

#: the rate sources and references are read at for scoring (the scorers resample as they need)
SCORING_RATE = 48000
#: engine names of the baseline rows
UNCONVERTED, REFERENCE, OFFLINE = "source (unconverted)", "reference", "seedvc offline"


@dataclass(frozen=True)
class QualityPlan:
    sources: Sequence[Path]
    references: Sequence[Path]
    engines: Sequence[str]
    transport: str = "file"
    loss_pct: float = 0.0
    #: expected text per source (one for all, or one each); empty: each source's own transcript
    texts: Sequence[str] = ()
    workdir: Path = Path("quality-bench")
    options: EngineOptions = field(default_factory=EngineOptions)
    #: add Seed-VC's offline inference as a baseline when its real weights are present
    offline_baseline: bool = True


@dataclass(frozen=True)
class ClipScores:
    seconds: float
    similarity_to_reference: float
    similarity_to_source: float
    naturalness: Naturalness
    #: None where no expected text applies (the reference row)
    intelligibility: Intelligibility | None
    pitch: PitchStats


#: scores converted audio of one source/reference pair (samples, rate)
Score = Callable[[Audio, int], "ClipScores"]


@dataclass(frozen=True)
class PathResult:
    source: str
    reference: str
    engine: str
    transport: str
    scores: ClipScores | None
    #: why the path could not run ("not available: ..."), None when it did
    unavailable: str | None = None
    wall_s: float | None = None

    @property
    def label(self) -> str:
        return self.engine if self.transport == "-" else f"{self.engine}/{self.transport}"

    def as_json(self) -> dict[str, Any]:
        s = self.scores
        words = s.intelligibility if s else None
        return {
            "source": self.source,
            "reference": self.reference,
            "engine": self.engine,
            "transport": self.transport,
            "available": s is not None,
            "unavailable": self.unavailable,
            "wall_s": self.wall_s,
            "seconds": s.seconds if s else None,
            "similarity_to_reference": s.similarity_to_reference if s else None,
            "similarity_to_source": s.similarity_to_source if s else None,
            "dnsmos": asdict(s.naturalness) if s else None,
            "transcript": words.transcript if words else None,
            "wer": words.wer if words else None,
            "cer": words.cer if words else None,
            "f0": asdict(s.pitch) if s else None,
        }


@dataclass
class QualityResult:
    plan: QualityPlan
    rows: list[PathResult]
    expected_texts: dict[str, str]

    def as_json(self) -> dict[str, Any]:
        return {
            "transport": self.plan.transport,
            "loss_pct": self.plan.loss_pct,
            "engines": list(self.plan.engines),
            "expected_texts": self.expected_texts,
            "rows": [row.as_json() for row in self.rows],
        }


class Scorers:
    """The models, loaded once per run; references and sources are embedded once each."""

    def __init__(self) -> None:
        self.speaker = SpeakerEncoder.load()
        self.naturalness = NaturalnessRater.load()
        self.transcriber = Transcriber.load()

    def score(
        self,
        samples: Audio,
        rate: int,
        reference_embedding: np.ndarray,
        source_embedding: np.ndarray,
        expected_text: str | None,
    ) -> ClipScores:
        embedding = self.speaker.embed(samples, rate)
        return ClipScores(
            seconds=samples.shape[0] / rate,
            similarity_to_reference=cosine(embedding, reference_embedding),
            similarity_to_source=cosine(embedding, source_embedding),
            naturalness=self.naturalness.rate(samples, rate),
            intelligibility=(
                None if expected_text is None else self.transcriber.score(samples, rate, expected_text)
            ),
            pitch=pitch_stats(samples, rate),
        )


def _texts_by_source(plan: QualityPlan) -> list[str | None]:
    if not plan.texts:
        return [None] * len(plan.sources)
    if len(plan.texts) == 1:
        return [plan.texts[0]] * len(plan.sources)
    if len(plan.texts) != len(plan.sources):
        raise ConfigurationError(
            f"{len(plan.texts)} texts for {len(plan.sources)} sources: give one or one each"
        )
    return list(plan.texts)


def _offline_obstacle(options: EngineOptions) -> str | None:
    """Why Seed-VC's offline baseline cannot run: its real weights must be in the cache (never fetched)."""
    if options.random_weights:
        return "not available: random weights are no quality baseline"
    from vcstream.engines.seedvc.availability import weights_obstacle

    reason = weights_obstacle(options.model_cache)
    return None if reason is None else f"not available: {reason}"


def run_quality_bench(plan: QualityPlan, scorers: Scorers | None = None) -> QualityResult:
    if not plan.sources or not plan.references or not plan.engines:
        raise ConfigurationError("give at least one source, one reference and one engine")
    scorers = scorers or Scorers()
    texts = _texts_by_source(plan)
    offline_obstacle = _offline_obstacle(plan.options) if plan.offline_baseline else None
    # Offline inference wants the weights, never a download; the streaming engines may be told otherwise.
    offline_options = EngineOptions(
        device=plan.options.device, model_cache=plan.options.model_cache, local_paths=plan.options.local_paths
    )
    # Baselines are scored once; only their similarity to the other clip of each pair changes.
    reference_scores: dict[Path, ClipScores] = {}
    reference_embeddings: dict[Path, np.ndarray] = {}
    for path in plan.references:
        samples = decode_file(path, SCORING_RATE, channels=1)
        reference_embeddings[path] = embedding = scorers.speaker.embed(samples, SCORING_RATE)
        reference_scores[path] = scorers.score(samples, SCORING_RATE, embedding, embedding, None)
    rows: list[PathResult] = []
    expected_texts: dict[str, str] = {}
    for source, text in zip(plan.sources, texts, strict=True):
        original = decode_file(source, SCORING_RATE, channels=1)
        source_embedding = scorers.speaker.embed(original, SCORING_RATE)
        expected = text if text is not None else scorers.transcriber.transcribe(original, SCORING_RATE)
        expected_texts[source.name] = expected
        unconverted = scorers.score(original, SCORING_RATE, source_embedding, source_embedding, expected)
        for reference in plan.references:
            pair = (source.name, reference.name)
            to_reference = reference_embeddings[reference]
            apart = cosine(source_embedding, to_reference)
            rows.append(
                PathResult(*pair, UNCONVERTED, "-", replace(unconverted, similarity_to_reference=apart))
            )
            own = replace(reference_scores[reference], similarity_to_source=apart)
            rows.append(PathResult(*pair, REFERENCE, "-", own))
            score: Score = partial(
                scorers.score,
                reference_embedding=to_reference,
                source_embedding=source_embedding,
                expected_text=expected,
            )
            for engine in plan.engines:
                rows.append(_converted(plan, engine, source, reference, score))
            if plan.offline_baseline:
                if offline_obstacle is not None:
                    rows.append(PathResult(*pair, OFFLINE, "file", None, offline_obstacle))
                else:
                    rows.append(_converted(plan, "seedvc", source, reference, score, offline_options))
    return QualityResult(plan=plan, rows=rows, expected_texts=expected_texts)


def _converted(
    plan: QualityPlan,
    engine: str,
    source: Path,
    reference: Path,
    score: Score,
    offline_options: EngineOptions | None = None,
) -> PathResult:
    offline = offline_options is not None
    name, transport = (OFFLINE, "file") if offline else (engine, plan.transport)
    started = time.perf_counter()
    try:
        samples, rate = convert_via(
            transport,
            engine,
            source,
            reference,
            0.0 if offline else plan.loss_pct,
            plan.workdir,
            options=offline_options or plan.options,
            offline=offline,
        )
    except ModelUnavailableError as exc:
        return PathResult(source.name, reference.name, name, transport, None, f"not available: {exc}")
    wall_s = time.perf_counter() - started
    log.info(
        "%s over %s: %.1f s of audio converted in %.1f s", name, transport, samples.shape[0] / rate, wall_s
    )
    return PathResult(source.name, reference.name, name, transport, score(samples, rate), None, wall_s)


def _fmt(value: float | None, spec: str) -> str:
    """``value`` formatted by ``spec`` ("6.1%"), or a dash just as wide when there is none."""
    return "-".rjust(int(spec.partition(".")[0])) if value is None else format(value, spec)


def format_table(result: QualityResult) -> str:
    """One line per path, grouped by source/reference pair; baselines first."""
    header = (
        f"{'path':<26} {'sim ref':>7} {'sim src':>7} {'SIG':>5} {'BAK':>5} {'OVRL':>5} {'P808':>5} "
        f"{'WER':>6} {'CER':>6} {'F0 med':>7} {'F0 IQR':>7} {'voiced':>6}"
    )
    lines: list[str] = []
    pair: tuple[str, str] | None = None
    for row in result.rows:
        if (row.source, row.reference) != pair:
            pair = (row.source, row.reference)
            loss = f", {result.plan.loss_pct:g}% loss" if result.plan.loss_pct else ""
            lines += ["", f"{row.source} -> {row.reference} ({result.plan.transport}{loss})", header]
        s = row.scores
        if s is None:
            lines.append(f"{row.label:<26} {row.unavailable}")
            continue
        words = s.intelligibility
        lines.append(
            f"{row.label:<26} {s.similarity_to_reference:7.3f} {s.similarity_to_source:7.3f} "
            f"{s.naturalness.sig:5.2f} {s.naturalness.bak:5.2f} {s.naturalness.ovrl:5.2f} "
            f"{s.naturalness.p808:5.2f} {_fmt(words.wer if words else None, '6.1%')} "
            f"{_fmt(words.cer if words else None, '6.1%')} {_fmt(s.pitch.median_hz, '7.1f')} "
            f"{_fmt(s.pitch.iqr_hz, '7.1f')} {s.pitch.voiced_ratio:6.2f}"
        )
    for source, text in result.expected_texts.items():
        lines.append(f"expected text for {source}: {text!r}")
    return "\n".join(lines)
