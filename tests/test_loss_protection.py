"""The FEC policy: a floor from the start, up at once with reported loss, down slowly, capped, and
the bitrate following; nothing at all when the remote decoder did not ask for FEC. RED redundancy:
on from the start and while reports show loss, off after a run of clean reports."""

from __future__ import annotations

from vcstream.media.loss_protection import (
    DECAY_PCT_PER_REPORT,
    FEC_CEILING_PCT,
    FEC_FLOOR_PCT,
    RED_CLEAN_REPORTS,
    LossProtection,
    Protection,
)


def test_the_first_packets_are_already_protected() -> None:
    assert LossProtection(48000, inband_fec=True).current() == Protection(True, FEC_FLOOR_PCT, 49200, True)


def test_reported_loss_raises_protection_at_once_and_it_decays_slowly() -> None:
    policy = LossProtection(48000, inband_fec=True)
    assert policy.report(0.2).packet_loss_pct == 20
    assert policy.report(0.0).packet_loss_pct == 20 - DECAY_PCT_PER_REPORT
    for _ in range(20):
        settled = policy.report(0.0)
    assert settled.packet_loss_pct == FEC_FLOOR_PCT


def test_loss_is_capped_and_the_bitrate_follows_it_up_to_its_cap() -> None:
    policy = LossProtection(48000, inband_fec=True, max_bitrate=50000)
    worst = policy.report(0.9)
    assert worst.packet_loss_pct == FEC_CEILING_PCT
    assert worst.bitrate == 50000
    assert LossProtection(48000, inband_fec=True).report(0.2).bitrate == 50400  # 48k x (1 + 0.2/4)


def test_a_fraction_is_rounded_up_so_small_losses_count() -> None:
    policy = LossProtection(48000, inband_fec=True, floor_pct=0)
    assert policy.report(0.011).packet_loss_pct == 2


def test_without_fec_nothing_changes() -> None:
    policy = LossProtection(48000, inband_fec=False)
    assert policy.current() == Protection(False, 0, 48000, redundancy=True)
    assert policy.report(0.3) == Protection(False, 0, 48000, redundancy=True)


def test_redundancy_stops_after_a_run_of_clean_reports_and_returns_with_loss() -> None:
    for inband_fec in (True, False):  # RED does not depend on the remote decoder's FEC
        policy = LossProtection(48000, inband_fec=inband_fec)
        for _ in range(RED_CLEAN_REPORTS - 1):
            assert policy.report(0.0).redundancy
        policy.report(0.004)  # any loss at all starts the run again
        for _ in range(RED_CLEAN_REPORTS - 1):
            assert policy.report(0.0).redundancy
        assert not policy.report(0.0).redundancy
        assert not policy.current().redundancy
        assert policy.report(0.02).redundancy
