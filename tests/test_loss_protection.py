"""The FEC policy: a floor from the start, up at once with reported loss, down slowly, capped, and
the bitrate following; nothing at all when the remote decoder did not ask for FEC."""

from __future__ import annotations

from vcstream.media.loss_protection import (
    DECAY_PCT_PER_REPORT,
    FEC_CEILING_PCT,
    FEC_FLOOR_PCT,
    LossProtection,
    Protection,
)


def test_the_first_packets_are_already_protected() -> None:
    assert LossProtection(48000, inband_fec=True).current() == Protection(True, FEC_FLOOR_PCT, 52800)


def test_reported_loss_raises_protection_at_once_and_it_decays_slowly() -> None:
    policy = LossProtection(48000, inband_fec=True)
    assert policy.report(0.2).packet_loss_pct == 20
    assert policy.report(0.0).packet_loss_pct == 20 - DECAY_PCT_PER_REPORT
    for _ in range(20):
        settled = policy.report(0.0)
    assert settled.packet_loss_pct == FEC_FLOOR_PCT


def test_loss_is_capped_and_the_bitrate_follows_it_up_to_its_cap() -> None:
    policy = LossProtection(48000, inband_fec=True, max_bitrate=60000)
    worst = policy.report(0.9)
    assert worst.packet_loss_pct == FEC_CEILING_PCT
    assert worst.bitrate == 60000
    assert LossProtection(48000, inband_fec=True).report(0.25).bitrate == 60000  # 48k x 1.25


def test_a_fraction_is_rounded_up_so_small_losses_count() -> None:
    policy = LossProtection(48000, inband_fec=True, floor_pct=0)
    assert policy.report(0.011).packet_loss_pct == 2


def test_without_fec_nothing_changes() -> None:
    policy = LossProtection(48000, inband_fec=False)
    assert policy.current() == Protection(False, 0, 48000)
    assert policy.report(0.3) == Protection(False, 0, 48000)
