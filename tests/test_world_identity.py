"""The WORLD engine moves the speaker, not only the pitch: converted speech is closer to the reference
voice (CAM++ similarity) than the unconverted source is, on a voice pair its parameters were not
chosen on, with sentences that were not used for tuning either.

Split (decided before tuning): the warp's F0 prior was chosen on awb->slt, rms->slt, kal16->awb,
slt->awb, awb->kal16, espeak-ng en-us+m3->en-us+f2, en-us+f4->en+m1, en+m1->slt, rms->en-us+f2, with
sentences of my own (not those in conftest). Held out: kal16->slt, slt->rms and rms->awb. This test
asserts on kal16->slt (the pair the issue measured: 0.28 through the old engine, below the source's
0.31). Measured here: source 0.272, old engine 0.419, warp + equalisation 0.467, with frame-wise
envelope replacement (world_frames) 0.674 (deterministic: seeded noise); the 0.6 floor fails the
engines before it. The second test asserts on slt->rms: source 0.592, warp + equalisation 0.532 (below the
source), with frame-wise replacement 0.683; both tests fail with world_frames.BLEND = 0."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import Speech
from vcstream.engines.world import WorldEngine, WorldSession
from vcstream.quality.speaker import SpeakerEncoder, cosine

RATE = 16000
SOURCE_TEXT = (
    "We were away a year ago, and now we are home again for the rest of the summer. "
    "Every morning the baker opens his shop before the sun comes up over the roofs."
)
MARGIN = 0.1
SECOND_PAIR_MARGIN = 0.05
SECOND_PAIR_FLOOR = 0.63


def stream(session: WorldSession, x: np.ndarray) -> np.ndarray:
    size = session.block_size
    padded = np.concatenate([x, np.zeros(-len(x) % size, dtype=np.float32)]).astype(np.float32)
    return np.concatenate([session.process(padded[i : i + size]) for i in range(0, len(padded), size)])


def test_converted_speech_is_closer_to_the_reference_than_the_source(flite_speech: Speech) -> None:
    encoder = SpeakerEncoder.load()
    engine = WorldEngine()
    reference = flite_speech("slt")[0]
    source = flite_speech("kal16", SOURCE_TEXT)[0]
    converted = stream(engine.open_session(engine.prepare_voice(reference, RATE)), source)

    target = encoder.embed(reference, RATE)
    before = cosine(encoder.embed(source, RATE), target)
    after = cosine(encoder.embed(converted, RATE), target)
    print(f"kal16->slt CAM++ similarity to the reference: source {before:.3f}, converted {after:.3f}")
    assert after > before + MARGIN
    assert after > 0.6
    assert np.isfinite(converted).all() and converted.shape[0] >= source.shape[0]


def test_a_second_held_out_pair_reaches_the_issues_goal(flite_speech: Speech) -> None:
    """slt->rms (female to male, held out like kal16->slt): the issue's goal is a similarity of at
    least 0.55 and clearly above the unconverted source's, which is already high for this pair."""
    encoder = SpeakerEncoder.load()
    engine = WorldEngine()
    reference = flite_speech("rms")[0]
    source = flite_speech("slt", SOURCE_TEXT)[0]
    converted = stream(engine.open_session(engine.prepare_voice(reference, RATE)), source)

    target = encoder.embed(reference, RATE)
    before = cosine(encoder.embed(source, RATE), target)
    after = cosine(encoder.embed(converted, RATE), target)
    print(f"slt->rms CAM++ similarity to the reference: source {before:.3f}, converted {after:.3f}")
    assert after > before + SECOND_PAIR_MARGIN
    assert after > SECOND_PAIR_FLOOR


@pytest.mark.parametrize("voice", ["slt"])
def test_converting_to_the_callers_own_voice_keeps_it(flite_speech: Speech, voice: str) -> None:
    """The mapping moves toward the reference, not away from the caller: with the caller's own voice
    as the reference the output stays that voice."""
    encoder = SpeakerEncoder.load()
    engine = WorldEngine()
    reference = flite_speech(voice)[0]
    source = flite_speech(voice, SOURCE_TEXT)[0]
    converted = stream(engine.open_session(engine.prepare_voice(reference, RATE)), source)
    similarity = cosine(encoder.embed(converted, RATE), encoder.embed(reference, RATE))
    print(f"{voice}->{voice}: {similarity:.3f}")
    assert similarity > 0.6
