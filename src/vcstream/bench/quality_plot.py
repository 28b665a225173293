"""The PNG of ``vcstream bench quality``, drawn from its JSON in a child process.

``bench quality`` loads GStreamer (it decodes and converts files), and libgstreamer brings libunwind,
whose ``_Unwind_Resume`` then serves matplotlib's ft2font: its first C++ exception aborts the process
(see ``load_plot``). So the figure is drawn by ``python -m vcstream.bench.quality_plot JSON PNG TITLE``,
a process that imports only this module, json and matplotlib."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def draw_in_child_process(results_json: Path, png: Path, title: str) -> None:
    """Draw ``png`` from the results file ``bench quality`` wrote, in a process without GStreamer."""
    subprocess.run(
        [sys.executable, "-m", "vcstream.bench.quality_plot", str(results_json), str(png), title], check=True
    )


def _mean_by_path(rows: Sequence[dict[str, Any]], pick: Any) -> tuple[list[str], list[float]]:
    """Mean of ``pick(row)`` per path (engine/transport) over the source/reference pairs, in row order."""
    values: dict[str, list[float]] = {}
    for row in rows:
        if not row["available"]:
            continue
        label = row["engine"] if row["transport"] == "-" else f"{row['engine']}/{row['transport']}"
        value = pick(row)
        values.setdefault(label, [])
        if value is not None:
            values[label].append(float(value))
    labels = list(values)
    return labels, [sum(v) / len(v) if v else float("nan") for v in values.values()]


def plot_quality(results: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    panels = [
        ("speaker similarity to the reference", lambda r: r["similarity_to_reference"], (0.0, 1.0)),
        ("speaker similarity to the source", lambda r: r["similarity_to_source"], (0.0, 1.0)),
        ("DNSMOS OVRL", lambda r: r["dnsmos"]["ovrl"], (1.0, 5.0)),
        ("word error rate (%)", lambda r: None if r["wer"] is None else 100 * r["wer"], None),
        ("median F0 (Hz)", lambda r: r["f0"]["median_hz"], None),
        ("voiced frames (%)", lambda r: 100 * r["f0"]["voiced_ratio"], (0.0, 100.0)),
    ]
    figure, axes = plt.subplots(3, 2, figsize=(10, 9))
    for axis, (name, pick, limits) in zip(axes.flat, panels, strict=True):
        labels, means = _mean_by_path(rows, pick)
        colours = ["tab:gray" if "/" not in label else "tab:blue" for label in labels]
        axis.barh(labels, means, color=colours)
        axis.invert_yaxis()
        axis.set_title(name, fontsize="medium")
        if limits is not None:
            axis.set_xlim(*limits)
        axis.grid(axis="x", alpha=0.3)
        axis.tick_params(axis="y", labelsize="small")
    missing = sorted({f"{r['engine']}/{r['transport']}" for r in rows if not r["available"]})
    note = f"  (not available: {', '.join(missing)})" if missing else ""
    figure.suptitle(f"{title}{note}\nmeans over source/reference pairs; grey: baselines", fontsize="medium")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: Sequence[str]) -> int:
    results_json, png, title = argv
    plot_quality(json.loads(Path(results_json).read_text()), Path(png), title)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
