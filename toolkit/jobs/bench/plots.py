"""The bench's charts, drawn with matplotlib (the ``charts`` extra: ``pip install 'yolokit[charts]'``): titled axes,
every configuration labelled, the spread of the repeats shown as error bars, nothing cut off at the edges
(``bbox_inches="tight"`` grows the canvas to every label). Without matplotlib, no chart is written and the report
says how to get them.

matplotlib's object API (``Figure`` and its Agg canvas) is used, not ``pyplot``: no global state, no display."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

CHARTS_HINT = "pip install 'yolokit[charts]'"
BLUE, RED, GREY = "#3b6ea5", "#c0392b", "#8c8c8c"


def available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> None:
    fig.savefig(str(path), bbox_inches="tight", pad_inches=0.25)


def _spread(rows: list[dict[str, Any]], key: str) -> list[list[float]]:
    """matplotlib's asymmetric error bars: distances from the median to the min and the max of the repeats."""
    lo = [max(0.0, float(r[key]) - float(r.get(f"{key}_min", r[key]))) for r in rows]
    hi = [max(0.0, float(r.get(f"{key}_max", r[key])) - float(r[key])) for r in rows]
    return [lo, hi]


def bar_chart(rows: list[dict[str, Any]], title: str, path: Path, baseline: dict[str, Any] | None = None,
              images: int | None = None) -> None:
    """Whole-run img/s of each configuration, fastest on top, min-max of the repeats as error bars, the value
    written beside each bar."""
    if not rows:
        return
    rows = sorted(rows, key=lambda r: r["img_s"])
    fig = _figure(9, 1.2 + 0.38 * len(rows))
    ax = fig.add_subplot()
    ys = list(range(len(rows)))
    colors = [RED if baseline is not None and r["config"] == baseline["config"] else BLUE for r in rows]
    ax.barh(ys, [r["img_s"] for r in rows], xerr=_spread(rows, "img_s"), color=colors, ecolor="black", capsize=3)
    ax.set_yticks(ys, [r["config"] for r in rows], fontsize=8)
    top = max(float(r.get("img_s_max", r["img_s"])) for r in rows)
    for y, r in zip(ys, rows, strict=True):
        ax.text(float(r.get("img_s_max", r["img_s"])) + top * 0.01, y, f"{r['img_s']:.1f}", va="center", fontsize=8)
    ax.set_xlim(0, top * 1.12)
    ax.set_xlabel("images per second, whole run including start-up (bar: median; whisker: min-max of the repeats)")
    ax.set_ylabel("configuration (backend, precision, batch, mode)")
    what = f" over {images} images" if images else ""
    ax.set_title(title + what + ("; red: the baseline" if baseline is not None else ""), fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path)


def scatter_chart(rows: list[dict[str, Any]], what: str, accuracy: list[float], path: Path,
                  images: int | None = None) -> None:
    """img/s (x, with the repeats' spread) against accuracy (y) for every configuration, each labelled; the Pareto
    front (no configuration both faster and more accurate) in red and joined."""
    if not rows:
        return
    fig = _figure(10, 6.5)
    ax = fig.add_subplot()
    front = sorted((i for i, r in enumerate(rows) if r.get("pareto")), key=lambda i: rows[i]["img_s"])
    if len(front) > 1:
        ax.plot([rows[i]["img_s"] for i in front], [accuracy[i] for i in front], color=RED, lw=1, zorder=1,
                label="Pareto front")
    for i, r in enumerate(rows):
        on = bool(r.get("pareto"))
        ax.errorbar([r["img_s"]], [accuracy[i]], xerr=_spread([r], "img_s"), fmt="o", color=RED if on else GREY,
                    ecolor=RED if on else GREY, capsize=3, ms=6 if on else 5, zorder=2)
    order = sorted(range(len(rows)), key=lambda i: (accuracy[i], rows[i]["img_s"]))
    for k, i in enumerate(order):  # alternate sides and heights so that neighbours' labels do not sit on each other
        dx, dy = (8, 6 + 5 * (k % 3)) if k % 2 == 0 else (-8, -10 - 5 * (k % 3))
        ax.annotate(rows[i]["config"], (rows[i]["img_s"], accuracy[i]), xytext=(dx, dy), textcoords="offset points",
                    ha="left" if dx > 0 else "right", fontsize=7, color=RED if rows[i].get("pareto") else "black",
                    arrowprops={"arrowstyle": "-", "color": GREY, "lw": 0.5})
    xs = [float(r.get("img_s_max", r["img_s"])) for r in rows]
    ax.set_xlim(0, max(xs) * 1.15)
    ax.margins(y=0.12)
    ax.set_xlabel("images per second, whole run including start-up (point: median; whisker: min-max of the repeats)")
    ax.set_ylabel(what)
    what_images = f" over {images} images" if images else ""
    ax.set_title(f"Speed against accuracy{what_images}: every configuration; red, joined: the Pareto front",
                 fontsize=10)
    ax.grid(alpha=0.3)
    if len(front) > 1:
        ax.legend(loc="lower left", fontsize=8)
    _save(fig, path)


def draw(rows: list[dict[str, Any]], out: Path, accuracy_of: Any, images: int | None = None) -> list[str]:
    """The bench's three charts into ``out``: their file names, or none without matplotlib."""
    if not available():
        return []
    ok = [r for r in rows if "error" not in r]
    baseline = rows[0] if rows and "error" not in rows[0] else None
    written = []
    measured = [r for r in ok if accuracy_of(r)[0] is not None]
    if measured:
        what = accuracy_of(measured[0])[1]
        scatter_chart(measured, what, [float(accuracy_of(r)[0]) for r in measured], out / "speed_vs_accuracy.png",
                      images)
        written.append("speed_vs_accuracy.png")
    if ok:
        bar_chart(ok, "Throughput by configuration", out / "throughput.png", baseline, images)
        written.append("throughput.png")
    by_workers = [r for r in ok if r["mode"] in ("thread", "process")]
    if by_workers:
        bar_chart(by_workers, "Throughput by workers (thread and process modes)", out / "throughput_vs_workers.png",
                  None, images)
        written.append("throughput_vs_workers.png")
    return written
