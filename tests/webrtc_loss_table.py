"""The before/after table of WebRTC calls on a lossy link (scripts/webrtc-loss-table.sh).

"before": the caller offers no FEC, no NACK and no RED (so the server sends none of them, as main did
before issue 12) and both ends run webrtcbin's own handshake (VCSTREAM_WEBRTC_HANDSHAKE_PROTECTION=0);
"after": FEC, NACK and RED offered and the handshake protected, the defaults. For each, a server in one
namespace, the Python client in another, a clean call first, then one call per loss level (that % of UDP
datagrams dropped each way), each compared with the clean call of the same mode. ``--legs`` picks the
directions: ``up`` (only the caller's datagrams to the server are lost), ``down`` (only the server's to
the caller), ``both``. One call per cell: figures of a single call, not a distribution.

``--chromium``: the caller is headless Chromium on the server's page instead (tests/webrtc_loss_chromium.py),
defaults only (Chrome offers FEC itself), with Chromium's own figures of each call; ``--legs`` makes the
loss one-way (``up``: caller -> server, ``down``: server -> caller) or both, one row each. A row at 0 %
is a second clean call: how far two clean calls differ (the method's floor).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

from conftest import write_wav  # noqa: E402
from netns import netns_pair  # noqa: E402
from vcstream.bench.signals import flite_speech  # noqa: E402
from vcstream.media.handshake_protection import PROTECTION_VARIABLE  # noqa: E402
from webrtc_loss_chromium import chromium_call_on  # noqa: E402
from webrtc_loss_harness import (  # noqa: E402
    PYTHON_CALL_SERVER_ENV,
    CallRecord,
    Comparison,
    LossyLink,
    compare,
)

HEADER = (
    "| loss | lost on | mode | frames too quiet | envelope corr. | latency p95 (clean) | "
    "offer -> first audio | ICE+DTLS connected |"
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--losses", default="0,5,10,20", help="loss levels, %% each way")
    parser.add_argument("--seconds", type=float, default=10.0, help="talk track per call")
    parser.add_argument("--legs", default="both", help="up, down and/or both, comma-separated")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new temporary folder")
    parser.add_argument("--chromium", action="store_true", help="Chromium as the caller (one mode)")
    args = parser.parse_args()
    losses = [float(x) for x in args.losses.split(",")]
    legs = args.legs.split(",")
    # a fresh folder per run: a server started on the last run's data would refuse the voice's name
    args.workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vcstream-webrtc-loss-"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    reference = write_wav(args.workdir / "reference.wav", flite_speech("slt", 16000), 16000)
    if args.chromium:
        chromium_table(args.workdir, reference, losses, legs, args.seconds)
        return
    rows: dict[tuple[float, str, str], str] = {}
    with netns_pair() as pair:
        for mode, on in (("before", False), ("after", True)):
            workdir = args.workdir / mode
            workdir.mkdir(exist_ok=True)
            link = LossyLink(pair, workdir, env={**PYTHON_CALL_SERVER_ENV, PROTECTION_VARIABLE: str(int(on))})
            with link.serving(reference):
                clean = link.python_call(0, args.seconds, fec=on, protection=on)
                for loss in losses:
                    for leg in legs if loss else ["both"]:
                        key = (loss, leg, mode)
                        cell = f"| {loss:g} % | {leg} | {mode} |"
                        try:
                            call = link.python_call(loss, args.seconds, fec=on, protection=on, legs=leg)
                        except AssertionError as failure:
                            why = " ".join(str(failure).split())[-70:].replace("|", "/")
                            rows[key] = f"{cell} call failed: ...{why} | | | | |"
                            print(rows[key], flush=True)
                            continue
                        c = compare(clean, call)
                        connected = "-" if c.connected_s is None else f"{c.connected_s:.2f} s"
                        rows[key] = (
                            f"{cell} {c.too_quiet_pct:.1f} % | {c.envelope_correlation:.3f} | "
                            f"{c.latency_p95_ms:.0f} ms ({c.clean_latency_p95_ms:.0f}) | "
                            f"{c.connect_s:.2f} s | {connected} |"
                        )
                        print(rows[key], flush=True)
    print()
    print(HEADER)
    print("|---|---|---|---|---|---|---|---|")
    for loss in losses:
        for leg in legs if loss else ["both"]:
            for mode in ("before", "after"):
                print(rows.get((loss, leg, mode), f"| {loss:g} % | {leg} | {mode} | (not run) |"))


CHROMIUM_HEADER = (
    "| loss | legs | frames too quiet | envelope corr. | latency p95 (clean) | offer -> first audio | "
    "lost in / up | concealed | FEC received (discarded) | NACKs to Chromium / retransmitted | "
    "latency first -> last marker |"
)


def _chromium_row(loss: float, legs: str, c: Comparison, call: CallRecord) -> str:
    f = call.summary["chromium"]
    concealed = f.get("in_concealedSamples", 0) / max(1, f.get("in_totalSamplesReceived", 1))
    trace = call.latencies_s() or [float("nan")]
    return (
        f"| {loss:g} % | {legs} | {c.too_quiet_pct:.1f} % | {c.envelope_correlation:.3f} | "
        f"{c.latency_p95_ms:.0f} ms ({c.clean_latency_p95_ms:.0f}) | {c.connect_s:.2f} s | "
        f"{f.get('in_packetsLost')} of {f.get('in_packetsReceived')} / {f.get('remote_packetsLost')} | "
        f"{100 * concealed:.1f} % | {f.get('in_fecPacketsReceived')} ({f.get('in_fecPacketsDiscarded')}) | "
        f"{f.get('out_nackCount')} / {f.get('out_retransmittedPacketsSent')} | "
        f"{1000 * trace[0]:.0f} -> {1000 * trace[-1]:.0f} ms |"
    )


def chromium_table(
    workdir: Path, reference: Path, losses: list[float], legs: list[str], seconds: float
) -> None:
    """Chromium calls: a clean one, then one per loss level and leg, each against the clean one."""
    rows = []
    with netns_pair() as pair, LossyLink(pair, workdir).serving(reference) as link:
        clean = chromium_call_on(link, 0, seconds)
        trace = [round(1000 * lag) for lag in clean.latencies_s()]
        connect = clean.summary["connect_s"]
        print(f"clean call: offer -> first audio {connect:.2f} s, latency per marker {trace} ms", flush=True)
        for loss in losses:
            for leg in legs:
                try:
                    call = chromium_call_on(link, loss, seconds, leg)
                except AssertionError as failure:
                    why = " ".join(str(failure).split())[-70:].replace("|", "/")
                    rows.append(f"| {loss:g} % | {leg} | call failed: ...{why} |")
                else:
                    rows.append(_chromium_row(loss, leg, compare(clean, call), call))
                print(rows[-1], flush=True)
    print()
    print(CHROMIUM_HEADER)
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
