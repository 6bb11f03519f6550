"""bench.png: latency distributions and stream scaling, drawn with matplotlib when installed, else with OpenCV."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np


def plot(r: dict[str, Any], samples: dict[str, np.ndarray], path: Path, engine: str = "auto") -> str:
    """Latency distributions (CDF) and stream scaling, side by side; returns what drew it."""
    curves = {name: np.sort(values) * 1e3 for name, values in samples.items() if len(values)}
    counts = [int(c) for c, row in r["streams"].items() if "skipped" not in row]
    scaling = {mode: [r["streams"][str(c)][mode]["fps"] for c in counts] for mode in ("batched", "unbatched")}
    if engine == "auto":
        try:
            import matplotlib  # noqa: F401 - the optional `bench` extra
        except ImportError:
            engine = "opencv"
        else:
            engine = "matplotlib"
    if engine == "matplotlib":
        _plot_matplotlib(curves, counts, scaling, path, r["machine"])
    else:
        _plot_opencv(curves, counts, scaling, path)
    return engine


def _plot_matplotlib(curves: dict[str, np.ndarray], counts: list[int], scaling: dict[str, list[float]], path: Path,
                     machine: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, values in curves.items():
        left.plot(values, np.arange(1, len(values) + 1) / len(values), label=name)
    left.set_xscale("log")
    left.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    left.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    left.set_xlabel("end-to-end latency per frame (ms)")
    left.set_ylabel("fraction of frames")
    left.set_title("latency distribution")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)
    for mode, values in scaling.items():
        right.plot(counts, values, marker="o", label=mode)
    right.set_xticks(counts)
    right.set_xlabel("streams")
    right.set_ylabel("aggregate frames/s")
    right.set_title("stream scaling")
    right.grid(True, alpha=0.3)
    right.legend(fontsize=8)
    fig.suptitle(f"edge-bench: {machine['cpu']}, {machine['cores']} cores, backend {machine['backend']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


_COLOURS = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148), (75, 86, 140),
            (194, 119, 227), (127, 127, 127), (34, 189, 188), (207, 190, 23)]  # BGR


def _plot_opencv(curves: dict[str, np.ndarray], counts: list[int], scaling: dict[str, list[float]], path: Path) -> None:
    """The same two panels drawn with OpenCV, for machines without matplotlib."""
    image = np.full((480, 1200, 3), 255, np.uint8)

    def panel(x0: int, title: str, xlabel: str, series: dict[str, tuple[np.ndarray, np.ndarray]], xmax: float,
              ymax: float, markers: bool) -> None:
        left, top, width, height = x0 + 60, 40, 500, 360
        cv2.rectangle(image, (left, top), (left + width, top + height), (0, 0, 0), 1)
        cv2.putText(image, title, (left, top - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(image, xlabel, (left, top + height + 36), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        for frac in (0.0, 0.5, 1.0):
            cv2.putText(image, f"{xmax * frac:.3g}", (left + int(frac * width) - 10, top + height + 16),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
            cv2.putText(image, f"{ymax * frac:.3g}", (x0 + 5, top + height - int(frac * height) + 4),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        for i, (name, (xs, ys)) in enumerate(series.items()):
            colour = _COLOURS[i % len(_COLOURS)]
            px = left + np.clip(xs / max(xmax, 1e-9), 0, 1) * width
            py = top + height - np.clip(ys / max(ymax, 1e-9), 0, 1) * height
            points = np.stack([px, py], axis=1).round().astype(np.int32)
            cv2.polylines(image, [points], False, colour, 2, cv2.LINE_AA)
            if markers:
                for point in points:
                    cv2.circle(image, tuple(int(v) for v in point), 4, colour, -1, cv2.LINE_AA)
            cv2.putText(image, name, (left + 10, top + 18 + 16 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.42, colour, 1, cv2.LINE_AA)

    if curves:
        xmax = max(float(np.percentile(values, 99.5)) for values in curves.values())
        series = {name: (values, np.arange(1, len(values) + 1) / len(values)) for name, values in curves.items()}
        panel(0, "latency distribution (fraction of frames)", "end-to-end latency per frame (ms)", series, xmax, 1.0, False)
    if counts:
        ymax = max(max(values) for values in scaling.values()) * 1.1
        series = {mode: (np.array(counts, float), np.array(values, float)) for mode, values in scaling.items()}
        panel(600, "stream scaling (aggregate frames/s)", "streams", series, float(max(counts)), ymax, True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"cannot write {path}")
