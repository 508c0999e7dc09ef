"""The run's picture: accuracy against decode speed, one point per benchmarked IR."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any


def plot_accuracy_vs_speed(rows: list[dict[str, Any]], path: Path, verdict: str | None = None) -> Path | None:
    """Accuracy against batch-1 decode tokens/s, one point per benchmarked IR (PNG, written atomically).

    The shipped IR is a star, the plain alternative (LoRA, merged, exported) a square; ``verdict``,
    the one-line comparison of the two, goes under the title.
    """
    points = [r for r in rows if r["score"] is not None and 1 in r["decode_tokens_per_s"]]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in points:
        x, y = r["decode_tokens_per_s"][1], r["score"]
        marker = "*" if r["shipped"] else "s" if r.get("plain") else "o"
        ax.scatter([x], [y], s=90 if r["shipped"] else 60, marker=marker, zorder=3)
        ax.annotate(r["label"], (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("GenAI decode tokens/s, batch 1 (higher is faster)")
    ax.set_ylabel(f"{points[0]['metric']} ({points[0]['task']}, {points[0]['split']} split)")
    ax.margins(x=0.35, y=0.15)
    ax.set_title("What this run made: accuracy against decode speed")
    if verdict:
        fig.text(0.5, 0.01, textwrap.fill(verdict, 110), ha="center", va="bottom", fontsize=7)
    ax.grid(True, alpha=0.3)
    fig.tight_layout(rect=(0, 0.08 if verdict else 0, 1, 1))
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path
