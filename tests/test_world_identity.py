"""The WORLD engine moves the speaker, not only the pitch: converted speech is closer to the reference
voice (CAM++ similarity) than the unconverted source is, on a voice pair its parameters were not
chosen on, with sentences that were not used for tuning either.

Split (decided before tuning): the warp's F0 prior was chosen on awb->slt, rms->slt, kal16->awb,
slt->awb, awb->kal16, espeak-ng en-us+m3->en-us+f2, en-us+f4->en+m1, en+m1->slt, rms->en-us+f2, with
sentences of my own (not those in conftest). Held out: kal16->slt, slt->rms and rms->awb. This test
asserts on kal16->slt (the pair the issue measured: 0.28 through the old engine, below the source's
0.31). Measured here: source 0.272, old engine 0.419, this engine 0.467 (deterministic: seeded noise);
the 0.45 floor fails the old engine, the margin over the source is about half the gain."""

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
    assert after > 0.45
    assert np.isfinite(converted).all() and converted.shape[0] >= source.shape[0]


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
