"""Figures: the needle-in-a-haystack heatmap, perplexity-by-position curves and the attention probe
(matplotlib, no display)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> None:
    """Write a finished figure (tight layout, 120 dpi) and free it."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)


def short_tokens(n: float) -> str:
    """1000 -> 1K, 131072 -> 128K, 1500 -> 1.5K (axis labels)."""
    if n >= 1024 and n % 1024 == 0:
        return f"{int(n // 1024)}K"
    if n >= 1000:
        return f"{n / 1000:g}K"
    return f"{int(n)}"


def niah_heatmap(results: dict[str, Any], path: str | Path) -> None:
    """Context length on x, needle depth on y (0% at the top), score as colour: red 0, yellow, green 1."""
    import numpy as np
    from matplotlib.colors import LinearSegmentedColormap

    plt = _pyplot()
    cells = results["cells"]
    lengths = sorted({c["length"] for c in cells})
    depths = sorted({c["depth"] for c in cells})
    grid = np.full((len(depths), len(lengths)), np.nan)
    for c in cells:
        grid[depths.index(c["depth"]), lengths.index(c["length"])] = c["score"]
    cmap = LinearSegmentedColormap.from_list("niah", ["#F0496E", "#EBB839", "#0CD79F"])
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(lengths) + 2.5), max(3.0, 0.45 * len(depths) + 1.8)))
    im = ax.imshow(grid, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(lengths)), [short_tokens(n) for n in lengths],
                  rotation=45 if len(lengths) > 8 else 0)
    ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
    if len(lengths) * len(depths) <= 200:  # numbers stay readable on small grids only
        for i in range(len(depths)):
            for j in range(len(lengths)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.2g}", ha="center", va="center", fontsize=8)
    ax.set_xlabel("Context length (tokens)")
    ax.set_ylabel("Needle depth (%)")
    ax.set_title(f"Needle in a haystack: {Path(str(results.get('model', ''))).name}\n"
                 f"{results.get('mode', 'generate')}, mean score {results.get('mean', float('nan')):.2f}",
                 fontsize=9)
    fig.colorbar(im, ax=ax, label="score")
    _save(fig, path)


def ppl_curves(results: dict[str, Any], path: str | Path) -> None:
    """Perplexity per position bucket, one line per model (log scale when the values span a decade, as past a
    broken window); a dotted line marks a model's window when the sequences go past it."""
    from matplotlib.ticker import ScalarFormatter

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    for m in results["models"]:
        xs = [(b["start"] + b["end"]) / 2 for b in m["curve"]]
        line, = ax.plot(xs, [b["ppl"] for b in m["curve"]], marker="o", label=f"{m['model']} ({m['ppl']:.1f})")
        if m.get("window") and m["window"] < results["length"]:  # where the model's trained window ends
            ax.axvline(m["window"], color=line.get_color(), linestyle=":", alpha=0.7)
    ax.set_xlabel("Position in sequence (tokens)")
    ax.set_ylabel("Perplexity")
    values = [b["ppl"] for m in results["models"] for b in m["curve"]]
    if max(values) > 10 * min(values):
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
    ctx = f", {short_tokens(results['context'])} context" if results.get("context") else ""
    ax.set_title(f"Perplexity by position, sequences of {short_tokens(results['length'])} tokens{ctx}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def ratio_lines(ratios: list[dict[str, Any]], path: str | Path) -> None:
    """Long-context perplexity over the same model's short-context control, per position bucket (report's
    control_ratios), one line per curve; 1 is where the long context neither helps nor hurts."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    for x in ratios:
        xs = [(b[0] + b[1]) / 2 for b in x["buckets"]]
        run = Path(x["file"]).parent.name  # the curve's output folder names the run
        label = f"{run + ': ' if run else ''}{x['model']}, W={short_tokens(x['context'])}"
        ax.plot(xs, [b[2] for b in x["buckets"]], marker="o", label=f"{label} ({x['ratio']:.2f})")
    ax.axhline(1.0, color="grey", linestyle=":")
    ax.set_xlabel("Position in sequence (tokens)")
    ax.set_ylabel("perplexity / short-context control")
    ax.set_title("Long context against its own short-context control", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)


def probe_lines(results: dict[str, Any], path: str | Path) -> None:
    """Attention probe: the retrieval heads' share of attention on the needle (left) and the needle's logit
    margin (right) against context length, one line per needle depth."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.0, 3.8))
    depths = sorted({s["depth"] for s in results["summary"]})
    lengths = sorted({s["length"] for s in results["summary"]})
    for d in depths:
        rows = sorted((s for s in results["summary"] if s["depth"] == d), key=lambda s: s["length"])
        xs = [s["length"] for s in rows]
        left.plot(xs, [s["needle"] for s in rows], marker="o", label=f"depth {d:g}%")
        right.plot(xs, [s["margin"] for s in rows], marker="o", label=f"depth {d:g}%")
    for ax, label in ((left, "share of attention on the needle"), (right, "needle logit - best other key")):
        ax.set_xscale("log")
        ax.set_xticks(lengths, [short_tokens(n) for n in lengths])
        ax.minorticks_off()
        ax.set_xlabel("Context length (tokens)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    right.axhline(0.0, color="grey", linewidth=0.8)
    left.legend(fontsize=8)
    fig.suptitle(f"Attention of the {len(results['retrieval_heads'])} retrieval heads from the question: "
                 f"{Path(str(results.get('model', ''))).name}", fontsize=10)
    _save(fig, path)
