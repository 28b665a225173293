"""RTP/Opus end to end on loopback: sender, converting relay and receiver as separate pipelines (and,
for the commands, separate processes). Passthrough output is the input delayed (SNR limited by two
Opus passes); world output takes the reference's pitch."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from conftest import median_f0, snr_db, vcstream_argv, write_wav
from rtp_harness import (
    LISTENING_WITHIN_S,
    align,
    dominant_hz,
    free_udp_port_pair,
    open_chain,
    relay_commands,
    silence_gaps_ms,
    timeline_drift_ms,
    to_rate,
    tone,
)
from vcstream.bench.process_events import read_event
from vcstream.commands.rtp import parse_endpoint, parse_listen
from vcstream.engines.passthrough import PassthroughEngine
from vcstream.engines.world import WorldEngine
from vcstream.errors import ConfigurationError, MediaError
from vcstream.media import decode_file
from vcstream.media.rtp import OPUS_RATE, OpusCodecSettings, RtpOpusReceiver, opus_packet_samples

Speech = Callable[..., tuple[np.ndarray, int]]


def test_passthrough_relay_returns_the_input_delayed(flite_speech: Speech) -> None:
    x = to_rate(*flite_speech("slt"))
    chain = open_chain(PassthroughEngine(), flite_speech("awb")[0])
    try:
        sender = chain.sender()
        chain.send(sender, x)
        sender.stop()  # BYE: the relay sends its last block at once
        y, snapshot, received = chain.finish()
    finally:
        chain.close()
    lag, aligned = align(x, y)
    snr = snr_db(x, aligned)
    print(f"passthrough over RTP: SNR {snr:.1f} dB, index delay {1000 * lag / OPUS_RATE:.1f} ms")
    assert snr > 12  # two Opus passes at 32 kb/s; measured about 17-18 dB
    # continuous: everything arrived, no holes, no time lost or added, the end of the speech too
    # (the relay completes its last block when the stream ends; decoders may keep a FEC frame)
    assert silence_gaps_ms(x, aligned) == []
    assert abs(timeline_drift_ms(x, y)) <= 1.0
    assert -0.06 * OPUS_RATE < y.shape[0] - lag - x.shape[0] < 0.15 * OPUS_RATE
    assert snapshot["stream_flushes"] == 1
    assert snapshot["input"]["packets_lost"] == 0 and received["packets_lost"] == 0
    assert snapshot["input"]["streams_started"] == 1
    session = snapshot["session"]
    assert session["dropped_samples"] == 0 and session["errors"] == 0
    assert session["blocks"] >= x.shape[0] / chain.relay.converter.block_size - 2
    assert snapshot["output"]["packets_sent"] == received["packets_received"]


def test_world_relay_moves_pitch_to_the_reference(flite_speech: Speech) -> None:
    x16, rate = flite_speech("slt")
    reference = flite_speech("kal16")[0]
    chain = open_chain(WorldEngine(), reference)
    try:
        chain.send(chain.sender(), to_rate(x16, rate))
        y, snapshot, _ = chain.finish()
    finally:
        chain.close()
    y16 = to_rate(y, OPUS_RATE, 16000)
    target, source, converted = median_f0(reference, 16000), median_f0(x16, 16000), median_f0(y16, 16000)
    print(f"world over RTP: F0 {source:.0f} Hz -> {converted:.0f} Hz (reference {target:.0f} Hz)")
    assert abs(converted - target) / target < 0.10
    assert snapshot["session"]["late_blocks"] == 0
    assert snapshot["session"]["inference_ms_p50"] < 100


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_relay_over_ipv6() -> None:
    chain = open_chain(PassthroughEngine(), tone(200, 2.0), address="::1")
    try:
        sender = chain.sender()
        chain.send(sender, tone(440, 1.5))
        sender.stop()
        y, snapshot, received = chain.finish()
    finally:
        chain.close()
    stats = snapshot["input"]
    assert stats["packets_received"] >= 70 and stats["packets_lost"] == 0
    assert stats["rtcp_packets_received"] > 0 and received["rtcp_packets_received"] > 0
    assert stats["rtp_from"].rsplit(":", 1)[0] == "::1"  # rtpbin writes "host:port" unbracketed
    assert abs(y.shape[0] / OPUS_RATE - 1.5) < 0.05
    assert abs(dominant_hz(y[OPUS_RATE // 4 : OPUS_RATE]) - 440) < 5


def test_commands_relay_a_file_end_to_end(flite_speech: Speech, tmp_path: Path) -> None:
    """rtp-receive, rtp and rtp-send as three processes; the relay stops on SIGTERM."""
    x = to_rate(*flite_speech("rms"))
    source = write_wav(tmp_path / "source.wav", x, OPUS_RATE)
    reference = write_wav(tmp_path / "reference.wav", *flite_speech("awb"))
    out = tmp_path / "out.flac"
    with relay_commands(reference, out, "--engine", "passthrough", idle_timeout_s=1.0, duration_s=40) as run:
        read_event(run.relay, "listening", LISTENING_WITHIN_S)  # ready before anything is sent
        sent = run.send(source)
        rx_out, _ = run.receiver.communicate(timeout=30)
        assert run.receiver.returncode == 0
        run.relay.send_signal(signal.SIGTERM)
        relay_out, _ = run.relay.communicate(timeout=30)
        assert run.relay.returncode == 0
    final_rx, final_relay, final_tx = (_json_lines(t)[-1] for t in (rx_out, relay_out, sent.stdout))
    assert final_rx["event"] == final_relay["event"] == final_tx["event"] == "final"
    assert final_relay["input"]["packets_received"] == final_tx["packets_sent"]  # type: ignore[index]
    assert final_rx["packets_received"] == final_relay["output"]["packets_sent"]  # type: ignore[index]
    # RTCP both ways: the relay's sender heard the receiver's reports
    assert final_relay["output"]["remote_packets_lost"] == 0  # type: ignore[index]
    y = decode_file(out, OPUS_RATE)
    _, aligned = align(x, y)
    assert snr_db(x, aligned) > 10
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_receive_without_audio_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "never.wav"
    result = subprocess.run(
        vcstream_argv("rtp-receive", "--listen", free_udp_port_pair(), "-o", out, "--duration", 0.5),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2 and "no audio" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_receive_stops_on_sigterm_and_writes_what_it_got(flite_speech: Speech, tmp_path: Path) -> None:
    from vcstream.media.rtp import RtpOpusSender

    out = tmp_path / "partial.wav"
    port = free_udp_port_pair()
    receiver = subprocess.Popen(
        vcstream_argv("rtp-receive", "--listen", port, "-o", out, "--idle-timeout", 30),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        read_event(receiver, "listening", LISTENING_WITHIN_S)
        sender = RtpOpusSender("127.0.0.1", port).start()
        try:
            from vcstream.transports.pacing import push_in_real_time

            push_in_real_time(to_rate(*flite_speech("slt"))[:OPUS_RATE], OPUS_RATE, sender.push)
        finally:
            sender.stop()
        receiver.send_signal(signal.SIGTERM)
        receiver.communicate(timeout=30)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait(10)
    assert receiver.returncode == 0
    assert decode_file(out, OPUS_RATE).shape[0] > 0.8 * OPUS_RATE


def test_a_busy_port_fails_clearly() -> None:
    first = RtpOpusReceiver(0, lambda _samples: None)
    try:
        with pytest.raises(MediaError, match=f"cannot listen on UDP 0.0.0.0:{first.port}"):
            RtpOpusReceiver(first.port, lambda _samples: None)
    finally:
        first.stop()


def test_codec_settings_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="frame size"):
        OpusCodecSettings(frame_ms=15)
    with pytest.raises(ConfigurationError, match="payload type"):
        OpusCodecSettings(payload_type=72)  # would look like RTCP
    with pytest.raises(ConfigurationError, match="bitrate"):
        OpusCodecSettings(bitrate=1000)


def test_endpoint_parsing() -> None:
    assert parse_endpoint("10.200.1.2:5004") == ("10.200.1.2", 5004)
    assert parse_endpoint("[::1]:5004") == ("::1", 5004)
    assert parse_listen("5004") == ("0.0.0.0", 5004)
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)


@pytest.mark.parametrize(
    ("toc", "samples"),
    [
        (bytes([(1 << 3) | 0]), 960),  # SILK 20 ms, one frame
        (bytes([(13 << 3) | 0]), 960),  # hybrid 20 ms
        (bytes([(31 << 3) | 1]), 1920),  # CELT 20 ms, two frames
        (bytes([(16 << 3) | 3, 0x04]), 480),  # CELT 2.5 ms, four frames (code 3)
        (b"", 0),
    ],
)
def test_opus_packet_duration_from_toc(toc: bytes, samples: int) -> None:
    assert opus_packet_samples(toc) == samples
