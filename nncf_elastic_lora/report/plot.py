"""The run's picture: accuracy against decode speed, one point per benchmarked IR."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_accuracy_vs_speed(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Accuracy against batch-1 decode tokens/s, one point per benchmarked IR (PNG, written atomically)."""
    points = [r for r in rows if r["score"] is not None and 1 in r["decode_tokens_per_s"]]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in points:
        x, y = r["decode_tokens_per_s"][1], r["score"]
        ax.scatter([x], [y], s=60, marker="*" if r["shipped"] else "o", zorder=3)
        ax.annotate(r["label"], (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("GenAI decode tokens/s, batch 1 (higher is faster)")
    ax.set_ylabel(f"{points[0]['metric']} ({points[0]['task']}, {points[0]['split']} split)")
    ax.margins(x=0.35, y=0.15)
    ax.set_title("What this run made: accuracy against decode speed")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path
