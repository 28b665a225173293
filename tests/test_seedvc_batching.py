"""Batched Seed-VC on the reduced model (random weights, same code paths as full size): prompt buckets,
batched blocks equal to each session run alone while sessions join and leave and partners change,
concealment, the compile switch and the reduced model's flags."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from vcstream.engines.base import VoiceProfile
from vcstream.engines.registry import EngineOptions, create_engine
from vcstream.engines.seedvc import SeedVCEngine, SeedVCSession, SeedVCSettings
from vcstream.engines.seedvc.model import SeedVCModels, build_random
from vcstream.engines.seedvc.session import BlockRequest, compiled_estimator
from vcstream.engines.seedvc.shapes import PROMPT_BUCKETS_S, prompt_bucket
from vcstream.errors import ConfigurationError
from vcstream.streaming.converter import StreamConverter
from vcstream.streaming.live import LiveSession
from vcstream.streaming.scheduler import BlockScheduler, SchedulerConfig
from waiting import wait_until

SR = 22050
Speech = Callable[..., tuple[np.ndarray, int]]
#: two settings presets: different steps and guidance, so different batch keys
PRESETS = {
    "p2": {"diffusion_steps": 2, "cfg_rate": 0.7},
    "p3": {"diffusion_steps": 3, "cfg_rate": 0.0},
}
#: voices with references of different lengths, so their prompts land in different buckets
REFERENCE_S = {"slt": 2.3, "rms": 1.4, "kal16": 0.7}
#: batched vs alone: one padded batch through XLS-R and the DiT, equal up to float summation order
#: (measured: at most 9e-8 on outputs peaking at 0.07); HiFT with random weights barely hears its mel
#: input, so the DiT's own output is compared too (``test_generate_pads_prompts_of_different_buckets``)
BATCH_ATOL = 1e-5
#: mel frames (natural-log magnitudes, about -11..3), batched vs alone
MEL_ATOL = 1e-4


def test_prompt_bucket_is_the_largest_bucket_that_fits() -> None:
    assert prompt_bucket(3.0, 10 * SR, SR) == 3 * SR
    assert prompt_bucket(3.0, int(2.7 * SR), SR) == 2 * SR  # the reference is the limit
    assert prompt_bucket(4.0, 10 * SR, SR) == 3 * SR  # the setting is the limit
    assert prompt_bucket(25.0, 25 * SR, SR) == 25 * SR
    assert prompt_bucket(1.0, SR, SR) == SR  # exactly a bucket
    # below the smallest bucket the exact length is kept
    assert prompt_bucket(0.3, 10 * SR, SR) == round(0.3 * SR)
    assert prompt_bucket(3.0, 5000, SR) == 5000


def test_every_prompt_length_maps_to_few_shapes() -> None:
    lengths = {prompt_bucket(s / 10, 25 * SR, SR) for s in range(5, 251)}
    assert len(lengths) == len(PROMPT_BUCKETS_S)
    assert lengths == {round(b * SR) for b in PROMPT_BUCKETS_S}


@pytest.fixture(scope="module")
def models() -> SeedVCModels:
    return build_random("cpu", seed=0, size="reduced")


@pytest.fixture(scope="module")
def engine(models: SeedVCModels) -> SeedVCEngine:
    return SeedVCEngine(models, SeedVCSettings(block_time=0.12, max_prompt_length=3.0))


@pytest.fixture(scope="module")
def voices(engine: SeedVCEngine, flite_speech: Speech) -> dict[str, VoiceProfile]:
    out = {}
    for name, seconds in REFERENCE_S.items():
        samples, rate = flite_speech(name)
        out[name] = engine.prepare_voice(samples[: int(seconds * rate)], rate)
    return out


@pytest.fixture(scope="module")
def source(flite_speech: Speech) -> np.ndarray:
    samples, _ = flite_speech("awb", rate=SR)
    return samples[int(0.3 * SR) :]


@dataclass(frozen=True)
class Stream:
    """One session's part in the test: voice, preset, seed, its input blocks and the rounds it runs in."""

    voice: str
    preset: str
    seed: int
    rounds: tuple[int, ...]

    def open(self, engine: SeedVCEngine, voices: dict[str, VoiceProfile]) -> SeedVCSession:
        settings = engine.settings(seed=self.seed, **PRESETS[self.preset])
        return engine.open_session(voices[self.voice], settings)

    def inputs(self, source: np.ndarray, block: int) -> list[np.ndarray]:
        start = (self.seed * 7919) % (source.shape[0] - (len(self.rounds) + 1) * block)
        return [source[start + k * block : start + (k + 1) * block] for k in range(len(self.rounds))]


#: A joins first and leaves after round 2; B joins in round 1; C skips round 2 and comes back;
#: D joins last. Every round has a different mix of voices, buckets and presets.
STREAMS = {
    "A": Stream("slt", "p2", 1, (0, 1, 2)),
    "B": Stream("rms", "p2", 2, (1, 2, 3)),
    "C": Stream("kal16", "p3", 3, (0, 1, 3)),
    "D": Stream("slt", "p3", 4, (2, 3, 4)),
}


@pytest.fixture(scope="module")
def alone(
    engine: SeedVCEngine, voices: dict[str, VoiceProfile], source: np.ndarray
) -> dict[str, list[np.ndarray]]:
    out = {}
    for name, stream in STREAMS.items():
        session = stream.open(engine, voices)
        out[name] = [session.process(x) for x in stream.inputs(source, session.block_size)]
    return out


def test_voices_use_different_prompt_buckets(engine: SeedVCEngine, voices: dict[str, VoiceProfile]) -> None:
    lengths = {name: engine.session_prompt(v, 3.0).frames for name, v in voices.items()}
    hop = engine.models.hop_size
    assert lengths == {"slt": 2 * SR // hop, "rms": SR // hop, "kal16": SR // 2 // hop}


@pytest.mark.slow
def test_batched_blocks_match_sessions_run_alone_as_partners_change(
    engine: SeedVCEngine,
    voices: dict[str, VoiceProfile],
    source: np.ndarray,
    alone: dict[str, list[np.ndarray]],
) -> None:
    sessions = {name: stream.open(engine, voices) for name, stream in STREAMS.items()}
    inputs = {name: s.inputs(source, sessions[name].block_size) for name, s in STREAMS.items()}
    done = dict.fromkeys(STREAMS, 0)
    keys_seen: list[set[object]] = []
    for round_ in range(5):
        names = [n for n, s in STREAMS.items() if round_ in s.rounds]
        batch = [sessions[n] for n in names]
        blocks = [inputs[n][done[n]] for n in names]
        outputs = engine.process_batch(batch, blocks)
        for name, out in zip(names, outputs, strict=True):
            np.testing.assert_allclose(out, alone[name][done[name]], atol=BATCH_ATOL, err_msg=name)
            done[name] += 1
        keys_seen.append({(PRESETS[STREAMS[n].preset]["diffusion_steps"]) for n in names})
    assert done == {name: len(s.rounds) for name, s in STREAMS.items()}
    assert any(len(keys) == 2 for keys in keys_seen)  # two batch keys in one process_batch
    # the outputs are not all alike (the comparison above could not pass by accident)
    assert np.max(np.abs(alone["A"][1] - alone["B"][0])) > 10 * BATCH_ATOL


@pytest.mark.slow
def test_requests_of_different_buckets_share_one_batch(
    engine: SeedVCEngine, voices: dict[str, VoiceProfile], source: np.ndarray
) -> None:
    sessions = [engine.open_session(v, engine.settings(**PRESETS["p2"])) for v in voices.values()]
    requests = [s.prepare(source[: s.block_size]) for s in sessions]
    assert isinstance(requests[0], BlockRequest)
    assert len({engine.batch_key(r) for r in requests}) == 1
    assert len({r.prompt.frames for r in requests}) == 3
    frames = engine.run_batch(sessions, requests)
    assert [f.shape for f in frames] == [(sessions[0].layout.frame,)] * 3


@pytest.mark.slow
def test_generate_pads_prompts_of_different_buckets(
    engine: SeedVCEngine, voices: dict[str, VoiceProfile]
) -> None:
    """The DiT's batch: prompts of three buckets padded to the longest, with and without guidance."""
    import torch

    prompts = [engine.session_prompt(v, 3.0) for v in voices.values()]
    g = torch.Generator().manual_seed(11)
    frames = 20
    width = prompts[0].condition.shape[2]
    conditions = [torch.randn(1, frames, width, generator=g) for _ in prompts]
    noises = [torch.randn(1, 80, p.frames + frames, generator=g) for p in prompts]
    for steps, cfg in ((2, 0.7), (3, 0.0)):
        batched = engine.generate(prompts, torch.cat(conditions), noises, steps, cfg)
        for i, prompt in enumerate(prompts):
            alone = engine.generate([prompt], conditions[i], [noises[i]], steps, cfg)
            torch.testing.assert_close(batched[i : i + 1], alone, rtol=0, atol=MEL_ATOL)
        assert float((batched[0] - batched[1]).abs().max()) > 100 * MEL_ATOL


@pytest.mark.slow
def test_conceal_then_continue_fades_back_in(
    engine: SeedVCEngine, voices: dict[str, VoiceProfile], source: np.ndarray
) -> None:
    session = engine.open_session(voices["slt"], engine.settings(seed=5, **PRESETS["p2"]))
    size = session.block_size
    fade = session.layout.sola_buffer
    first = session.process(source[:size])
    session.prepare(source[size : 2 * size])  # the block the scheduler then skipped
    concealed = session.conceal()
    assert concealed.shape == (size,) and np.all(np.isfinite(concealed))
    assert np.all(concealed[fade:] == 0)  # the held tail fades out within the crossfade
    assert np.max(np.abs(concealed[:fade])) > 0
    after = session.process(source[2 * size : 3 * size])
    assert np.all(np.isfinite(after)) and np.max(np.abs(after)) > 0
    # it fades in from silence: the first samples are scaled by a sin^2 ramp from zero
    assert abs(after[0]) < 1e-6
    assert np.max(np.abs(after[: fade // 8])) < np.max(np.abs(after[fade:])) / 4
    assert np.max(np.abs(first)) > 0


def test_compile_modes_are_checked(models: SeedVCModels) -> None:
    assert compiled_estimator(models, "off") is models.estimator
    with pytest.raises(ConfigurationError, match="CUDA"):
        compiled_estimator(models, "cudagraphs")
    with pytest.raises(ConfigurationError, match="compile mode"):
        SeedVCEngine(models, compile_mode="fast")


def test_reduced_model_is_flagged_and_selectable() -> None:
    engine = create_engine(
        "seedvc", EngineOptions(device="cpu", random_weights=True, model_size="reduced", seed=1)
    )
    info = engine.describe()
    assert info["random_weights"] is True
    assert info["size"] == "reduced"
    assert info["compile"] == "off"
    assert "reduced" in info["weights"]
    with pytest.raises(ConfigurationError, match="random weights"):
        create_engine("seedvc", EngineOptions(device="cpu", model_size="reduced"))
    with pytest.raises(ConfigurationError, match="model size"):
        create_engine("seedvc", EngineOptions(device="cpu", random_weights=True, model_size="tiny"))


@pytest.mark.slow
def test_compiled_dit_matches_eager(models: SeedVCModels) -> None:
    """torch.compile of the DiT (inductor, C++ on the CPU: about two minutes to compile here) gives
    the eager output up to float reassociation."""
    import torch

    from vcstream.engines.seedvc.session import PromptFeatures

    eager, compiled = SeedVCEngine(models), SeedVCEngine(models, compile_mode="compile")
    g = torch.Generator().manual_seed(3)
    width = int(models.estimator.cond_projection.in_features)  # the DiT's content width
    prompt = PromptFeatures(
        condition=torch.randn(1, 43, width, generator=g),
        mel=torch.randn(1, 80, 43, generator=g),
        style=torch.randn(1, 192, generator=g),
    )
    condition, noise = torch.randn(1, 20, width, generator=g), torch.randn(1, 80, 63, generator=g)
    expected = eager.generate([prompt], condition, [noise], 1, 0.0)
    actual = compiled.generate([prompt], condition, [noise], 1, 0.0)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-4)
    assert compiled.describe()["compile"] == "compile"


@pytest.mark.slow
def test_live_sessions_through_the_scheduler_equal_the_file_path(
    engine: SeedVCEngine, voices: dict[str, VoiceProfile], source: np.ndarray
) -> None:
    """The live path end to end: three sessions (two presets, two buckets) fed through LiveSession and
    one scheduler, one leaving early and one joining late, give what each gives alone through the
    synchronous converter; and they shared forward passes on the way."""
    chosen = {"A": STREAMS["A"], "B": STREAMS["B"], "D": STREAMS["D"]}
    block = engine.open_session(voices["slt"], engine.settings()).block_size
    half = block // 2
    fed = {"A": 2 * block, "B": 3 * block, "D": 3 * block}  # A leaves after two blocks
    feeds = {name: source[s.seed * 2000 : s.seed * 2000 + fed[name]] for name, s in chosen.items()}

    def converter(name: str) -> StreamConverter:
        stream = chosen[name]
        settings = engine.settings(seed=stream.seed, **PRESETS[stream.preset])
        return StreamConverter(engine, voices[stream.voice], SR, settings)

    expected = {}
    for name in chosen:
        alone_converter = converter(name)
        expected[name] = alone_converter.push(feeds[name])
        alone_converter.close()
    scheduler = BlockScheduler(engine, SchedulerConfig(workers=1, max_batch=4, max_wait_s=0.05))
    outputs: dict[str, list[np.ndarray]] = {name: [] for name in chosen}

    def live(name: str) -> LiveSession:
        # deadlines far off: this test is about equal output, not about this CPU keeping up
        return LiveSession(converter(name), outputs[name].append, scheduler, max_backlog_s=60, due_blocks=1e4)

    def feed(session: LiveSession, name: str, at: int) -> None:
        session.feed(feeds[name][at : at + half])

    def delivered(name: str) -> int:
        return sum(o.shape[0] for o in outputs[name])

    sessions = {"A": live("A"), "B": live("B")}
    try:
        for at in range(0, 2 * block, half):  # A and B, chunk by chunk
            feed(sessions["A"], "A", at)
            feed(sessions["B"], "B", at)
        sessions["D"] = live("D")  # D joins as A has sent its last chunk
        for at in range(0, 3 * block, half):
            feed(sessions["D"], "D", at)
            if at >= 2 * block:
                feed(sessions["B"], "B", at)
        wait_until(
            lambda: all(delivered(n) == expected[n].shape[0] for n in chosen),
            120,
            "every session's blocks came back",
            state=lambda: {n: (delivered(n), expected[n].shape[0]) for n in chosen},
        )
    finally:
        for session in sessions.values():
            session.stop()
        scheduler.close()
    for name in chosen:
        np.testing.assert_allclose(
            np.concatenate(outputs[name]), expected[name], atol=BATCH_ATOL, err_msg=name
        )
    stats = scheduler.snapshot()
    assert stats.skipped == 0 and stats.failed == 0
    assert stats.largest_batch >= 2  # sessions shared forward passes


def test_the_vocoder_runs_a_batch_with_each_items_own_noise(models: SeedVCModels) -> None:
    """HiFT in one pass for the batch, and still each item's excitation noise from its own seed."""
    import torch

    mel = torch.randn(3, 80, 40, generator=torch.Generator().manual_seed(3))
    alone = torch.cat([models.vocode(mel[i : i + 1], 7 + i) for i in range(3)])
    batched = models.vocode_batch(mel, [7, 8, 9])
    torch.testing.assert_close(batched, alone, rtol=0, atol=BATCH_ATOL)
    reseeded = models.vocode_batch(mel, [7, 8, 10])
    torch.testing.assert_close(reseeded[:2], batched[:2], rtol=0, atol=BATCH_ATOL)
    assert float((reseeded[2] - batched[2]).abs().max()) > 100 * BATCH_ATOL  # the seed is heard
    with pytest.raises(RuntimeError, match="2 vocoder seeds for a batch of 3"):
        models.vocode_batch(mel, [1, 2])
