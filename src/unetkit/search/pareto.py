"""The Pareto front of (latency, Dice): its table and its figure."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence


def pareto_front(records: Sequence[dict[str, Any]], x: str = "measured_s", y: str = "dice") -> list[dict[str, Any]]:
    """The records no other record beats on both `x` (lower is better) and `y` (higher is
    better), sorted by `x`."""
    points = sorted((r for r in records if r.get(x) is not None and r.get(y) is not None),
                    key=lambda r: (r[x], -r[y]))
    front: list[dict[str, Any]] = []
    best = float("-inf")
    for r in points:
        if r[y] > best:
            front.append(r)
            best = r[y]
    return front


def format_front(front: Sequence[dict[str, Any]], budget_s: float, chosen_key: str | None = None) -> str:
    lines = [f"Pareto front (latency budget {budget_s * 1000:.1f} ms):",
             "| | latency ms | predicted ms | val Dice | GFLOP | params | candidate |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in front:
        mark = "*" if r["key"] == chosen_key else ""
        ref = f" (= {r['reference']})" if r.get("reference") else ""
        pred = f"{r['predicted_s'] * 1000:.1f}" if r.get("predicted_s") is not None else "-"
        lines.append(f"| {mark} | {r['measured_s'] * 1000:.1f} | {pred} | {r['dice']:.4f} | "
                     f"{r['gflop']:.2f} | {r['params']:,} | {r['label']}{ref} |")
    return "\n".join(lines)


def plot_front(records: Sequence[dict[str, Any]], budget_s: float, path: str | Path, title: str = "",
               chosen_key: str | None = None) -> Path:
    """PNG: every trained candidate (grey), the front (line), the hand-picked registry models
    (labelled), the chosen one (star) and the budget (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from unetkit.io.atomic import atomic_path

    trained = [r for r in records if r.get("measured_s") is not None and r.get("dice") is not None]
    front = pareto_front(trained)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.scatter([r["measured_s"] * 1000 for r in trained], [r["dice"] for r in trained], s=18, c="0.6",
               label="trained candidates", zorder=2)
    ax.plot([r["measured_s"] * 1000 for r in front], [r["dice"] for r in front], "-o", c="C0", ms=5,
            label="Pareto front", zorder=3)
    for r in trained:
        if r.get("reference"):
            ax.scatter([r["measured_s"] * 1000], [r["dice"]], marker="s", s=40, c="C1", zorder=4)
            ax.annotate(r["reference"], (r["measured_s"] * 1000, r["dice"]), textcoords="offset points",
                        xytext=(4, -10), fontsize=8, color="C1")
    chosen = [r for r in trained if r["key"] == chosen_key]
    if chosen:
        ax.scatter([chosen[0]["measured_s"] * 1000], [chosen[0]["dice"]], marker="*", s=160, c="C3", zorder=5,
                   label=f"chosen: {chosen[0]['label']}")
    ax.axvline(budget_s * 1000, ls="--", c="C3", lw=1, label=f"budget {budget_s * 1000:.0f} ms")
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("validation Dice (proxy training)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
