"""The PNG of ``vcstream bench load``: latency and refusals against concurrent calls (matplotlib, no
display: the Agg backend).

Draw in a process that has not loaded GStreamer: libgstreamer brings libunwind, whose
``_Unwind_Resume`` then serves matplotlib's ft2font, and its first C++ exception aborts the process.
``bench load`` is such a process (its calls run in client processes)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vcstream.bench.load import StepResult


def plot_load(steps: Sequence[StepResult], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    calls = [step.dialled for step in steps]
    nan = float("nan")
    p50 = [nan if s.latency_ms_p50 is None else s.latency_ms_p50 for s in steps]
    p95 = [nan if s.latency_ms_p95 is None else s.latency_ms_p95 for s in steps]
    figure, (latency, refused) = plt.subplots(
        2, 1, figsize=(7, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.4]}
    )
    latency.plot(calls, p50, "o-", label="p50")
    latency.plot(calls, p95, "s--", label="p95")
    latency.set_ylabel("mouth-to-ear latency (ms)")
    latency.set_ylim(bottom=0)
    latency.grid(alpha=0.3)
    latency.legend()
    latency.set_title(title)
    cumulative = [sum(s.refusals for s in steps[: k + 1]) for k in range(len(steps))]
    refused.bar(calls, cumulative, width=0.6, color="tab:red", label="refused (total)")
    refused.plot(calls, [s.gaps for s in steps], "k^:", label="gaps > 60 ms in the step")
    refused.set_xlabel("concurrent calls dialled")
    refused.set_ylabel("count")
    refused.grid(alpha=0.3)
    lost = refused.twinx()
    lost.plot(
        calls,
        [100 * (1 - s.markers_found / s.markers) if s.markers else nan for s in steps],
        "x-",
        color="tab:purple",
        label="markers lost (%)",
    )
    lost.set_ylabel("markers lost (%)")
    lost.set_ylim(0, 100)
    handles, labels = refused.get_legend_handles_labels()
    more_handles, more_labels = lost.get_legend_handles_labels()
    refused.legend(handles + more_handles, labels + more_labels, fontsize="small", loc="upper left")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
