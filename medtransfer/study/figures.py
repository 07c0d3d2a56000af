"""The study's figures (PNG, matplotlib Agg): Dice vs fraction, validation curves, strategy × fraction heat-map."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medtransfer.study.analysis import COMPARISONS
from medtransfer.study.spec import NO_SOURCE


def _pyplot():
    # matplotlib only when figures are drawn: status, results.csv and summary.md do without it
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _arms(keys) -> list[tuple[str, str]]:
    """(objective, strategy) pairs: no-source arms (scratch first) then each objective's strategies."""
    arms = sorted({(k[0], k[1]) for k in keys}, key=lambda a: (a[0] != NO_SOURCE, a[0], a[1] != "scratch", a[1]))
    return arms


def _label(arm: tuple[str, str]) -> str:
    return arm[1] if arm[0] == NO_SOURCE else f"{arm[0]} / {arm[1]}"


# One colour and marker per strategy in every panel and figure (colour-blind-safe Okabe–Ito palette); strategies
# outside the known six get the remaining ones in name order.
STRATEGY_STYLE = {
    "scratch": ("#000000", "o"),
    "encoder": ("#0072B2", "s"),
    "decoder": ("#E69F00", "^"),
    "full": ("#009E73", "D"),
    "encoder_frozen": ("#D55E00", "v"),
    "random_encoder_frozen": ("#CC79A7", "P"),
}
_EXTRA_STYLES = [("#56B4E9", "X"), ("#F0E442", "*"), ("#999999", "h"), ("#882255", "<"), ("#117733", ">")]
OBJECTIVE_LINES = ["-", "-.", ":", (0, (5, 1, 1, 1, 1, 1))]  # per pretraining objective where panels mix them


def strategy_style(strategy: str, known: list[str] | None = None) -> tuple[str, str]:
    """(colour, marker) of a strategy: fixed for the known strategies, stable by name order for others."""
    if strategy in STRATEGY_STYLE:
        return STRATEGY_STYLE[strategy]
    others = sorted(s for s in (known or [strategy]) if s not in STRATEGY_STYLE)
    index = others.index(strategy) if strategy in others else 0
    return _EXTRA_STYLES[index % len(_EXTRA_STYLES)]


def _colours(arms):
    strategies = sorted({a[1] for a in arms})
    return {arm: strategy_style(arm[1], strategies)[0] for arm in arms}


MIN_DICE_SPAN = 0.10  # Dice: the smallest y range a Dice panel shows


def _min_span(ax, span: float) -> None:
    """Widen the y range to at least `span` around its middle, so that the axis never magnifies a small gap."""
    low, high = ax.get_ylim()
    if high - low < span:
        middle = (low + high) / 2
        ax.set_ylim(middle - span / 2, middle + span / 2)


def _offsets(count: int, spread: float = 0.035) -> list[float]:
    """Multiplicative x offsets (log axis) that put `count` arms side by side around each fraction."""
    if count <= 1:
        return [1.0] * count
    return [10 ** (spread * (i - (count - 1) / 2) / (count - 1) * 2) for i in range(count)]


def dice_vs_fraction(path: Path, table: list[dict]) -> None:
    """One panel per pretraining objective; no-source arms (scratch, random_encoder_frozen) in every panel.

    Points: mean over seeds of the per-seed mean test Dice, side by side per fraction so that intervals never hide
    each other; error bars: 95% t-interval over seeds (medtransfer.evaluation.statistics.cell_summary; none below
    3 seeds); small open markers: the individual per-seed means."""
    plt = _pyplot()
    arms = _arms([(r["objective"], r["strategy"]) for r in table])
    strategies = sorted({a[1] for a in arms})
    objectives = sorted({a[0] for a in arms if a[0] != NO_SOURCE}) or [NO_SOURCE]
    fig, axes = plt.subplots(1, len(objectives), figsize=(5.5 * len(objectives), 4.2), squeeze=False, sharey=True)
    fractions = sorted({r["fraction"] for r in table})
    any_interval = any(r.get("ci_low") is not None for r in table)
    for ax, objective in zip(axes[0], objectives):
        shown = [arm for arm in arms if arm[0] in (objective, NO_SOURCE)]
        for arm, offset in zip(shown, _offsets(len(shown))):
            rows = sorted((r for r in table if (r["objective"], r["strategy"]) == arm and r["mean"] is not None),
                          key=lambda r: r["fraction"])
            if not rows:
                continue
            colour, marker = strategy_style(arm[1], strategies)
            x = np.asarray([r["fraction"] for r in rows]) * offset
            y = np.asarray([r["mean"] for r in rows])
            low = np.asarray([r["ci_low"] if r.get("ci_low") is not None else r["mean"] for r in rows])
            high = np.asarray([r["ci_high"] if r.get("ci_high") is not None else r["mean"] for r in rows])
            ax.errorbar(x, y, yerr=[y - low, high - y], fmt=marker, color=colour, markersize=6, capsize=3,
                        elinewidth=1.2, linestyle="--" if arm[0] == NO_SOURCE else "-", linewidth=1.0,
                        label=arm[1], zorder=3)
            for xi, r in zip(x, rows):
                seeds = list((r.get("seed_means") or {}).values())
                ax.plot([xi] * len(seeds), seeds, marker, color=colour, markersize=3.5, markerfacecolor="none",
                        markeredgewidth=0.7, alpha=0.7, linestyle="none", zorder=2)
        ax.set_xscale("log")
        ax.set_xlim(min(fractions) / 1.6, max(fractions) * 1.6)  # a single fraction is not spread edge to edge
        ax.set_xticks(fractions)
        ax.set_xticklabels([f"{f:g}" for f in fractions])
        ax.minorticks_off()
        ax.set_xlabel("fraction of training cases (log)")
        ax.set_title(f"pretraining: {objective}" if objective != NO_SOURCE else "no pretraining")
        ax.grid(alpha=0.3)
    _min_span(axes[0][0], MIN_DICE_SPAN)  # shared y: a 0.01 difference must not fill the panel
    axes[0][0].set_ylabel("test Dice: mean of seed means, 95% CI over seeds" if any_interval else
                          "test Dice: mean of seed means (○ seeds; < 3 seeds: no CI)")
    handles, labels = [], []  # one legend for all panels: the styles are the same everywhere
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    columns = min(6, len(labels))
    fig.legend(handles, labels, loc="lower center", ncol=columns, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 * ((len(labels) + columns - 1) // columns), 1, 1))
    fig.savefig(path, dpi=120, bbox_inches="tight")  # never clip the legend
    plt.close(fig)


def validation_curves(path: Path, curves: dict) -> None:
    """One panel per fraction; mean validation Dice per epoch over seeds, a band of ± sd."""
    plt = _pyplot()
    arms = _arms(curves)
    colours = _colours(arms)
    strategies = sorted({a[1] for a in arms})
    objectives = sorted({a[0] for a in arms if a[0] != NO_SOURCE})
    fractions = sorted({k[2] for k in curves})
    fig, axes = plt.subplots(1, len(fractions), figsize=(5 * len(fractions), 4.2), squeeze=False, sharey=True)
    for ax, fraction in zip(axes[0], fractions):
        for arm in arms:
            series = curves.get((arm[0], arm[1], fraction))
            if not series:
                continue
            length = min(len(s) for s in series)
            if length == 0:
                continue
            data = np.asarray([s[:length] for s in series], dtype=float)
            epochs = np.arange(1, length + 1)
            mean = data.mean(axis=0)
            style = "--" if arm[0] == NO_SOURCE else OBJECTIVE_LINES[objectives.index(arm[0]) % len(OBJECTIVE_LINES)]
            marker = strategy_style(arm[1], strategies)[1]
            ax.plot(epochs, mean, linestyle=style, marker=marker, markevery=max(1, length // 6), markersize=4,
                    color=colours[arm], label=_label(arm))
            if len(series) > 1:  # light band with outlines: overlapping bands stay readable
                sd = data.std(axis=0, ddof=1)
                ax.fill_between(epochs, mean - sd, mean + sd, color=colours[arm], alpha=0.08, linewidth=0)
                for edge in (mean - sd, mean + sd):
                    ax.plot(epochs, edge, color=colours[arm], linewidth=0.5, alpha=0.5, linestyle=style)
        ax.set_title(f"fraction {fraction:g}")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation Dice (mean ± sd over seeds)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        for h, l in zip(*ax.get_legend_handles_labels()):
            if l not in labels:
                handles.append(h)
                labels.append(l)
    columns = 2 if len(axes[0]) == 1 else min(4, len(labels))  # a single panel is narrow: fewer columns
    rows = (len(labels) + columns - 1) // columns
    fig.legend(handles, labels, loc="lower center", ncol=columns, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05 * rows, 1, 1))
    fig.savefig(path, dpi=120, bbox_inches="tight")  # never clip the legend
    plt.close(fig)


def heatmap(path: Path, table: list[dict]) -> None:
    """Rows: objective / strategy; columns: fraction; cells: mean test Dice."""
    plt = _pyplot()
    arms = _arms([(r["objective"], r["strategy"]) for r in table])
    fractions = sorted({r["fraction"] for r in table})
    grid = np.full((len(arms), len(fractions)), np.nan)
    for r in table:
        if r["mean"] is not None:
            grid[arms.index((r["objective"], r["strategy"])), fractions.index(r["fraction"])] = r["mean"]
    fig, ax = plt.subplots(figsize=(1.4 * len(fractions) + 3.5, 0.45 * len(arms) + 1.6))
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto",
                      vmin=np.nanmin(grid) if np.isfinite(grid).any() else 0,
                      vmax=np.nanmax(grid) if np.isfinite(grid).any() else 1)
    ax.set_xticks(range(len(fractions)), [f"{f:g}" for f in fractions])
    ax.set_yticks(range(len(arms)), [_label(a) for a in arms])
    ax.set_xlabel("fraction of training cases")
    mid = np.nanmean(grid) if np.isfinite(grid).any() else 0.5
    for i in range(len(arms)):
        for j in range(len(fractions)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", fontsize=8,
                        color="white" if grid[i, j] < mid else "black")
    fig.colorbar(image, ax=ax, label="mean test Dice")
    ax.set_title("test Dice: strategy × fraction")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def write_figures(folder: str | Path, analysis: dict) -> list[str]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    if analysis["table"]:
        dice_vs_fraction(folder / "dice_vs_fraction.png", analysis["table"])
        heatmap(folder / "dice_heatmap.png", analysis["table"])
        written += [str(folder / "dice_vs_fraction.png"), str(folder / "dice_heatmap.png")]
    if analysis["curves"]:
        validation_curves(folder / "validation_curves.png", analysis["curves"])
        written.append(str(folder / "validation_curves.png"))
    if analysis.get("cka"):
        cka_layers(folder / "cka_layers.png", analysis["cka"])
        written.append(str(folder / "cka_layers.png"))
    transfer = analysis.get("transferability")
    if transfer and any(r["dice"] is not None for r in transfer["rows"]):
        score_vs_dice(folder / "transferability_vs_dice.png", transfer)
        written.append(str(folder / "transferability_vs_dice.png"))
    return written


def cka_layers(path: Path, table: list[dict]) -> None:
    """One heat map per comparison: U-Net levels (rows) × study cells (columns), mean CKA over seeds."""
    plt = _pyplot()
    comparisons = [c for c in COMPARISONS if any(r["comparison"] == c for r in table)]
    layers = sorted({(r["layer_index"], r["layer"], r["part"]) for r in table})
    cells = list(dict.fromkeys((r["objective"], r["strategy"], r["fraction"]) for r in table))
    fig, axes = plt.subplots(1, len(comparisons), squeeze=False,
                             figsize=(2.5 + 0.55 * len(cells) * len(comparisons), 1.6 + 0.38 * len(layers)))
    for ax, comparison in zip(axes[0], comparisons):
        values = np.full((len(layers), len(cells)), np.nan)
        for r in table:
            if r["comparison"] == comparison:
                values[[l[1] for l in layers].index(r["layer"]), cells.index((r["objective"], r["strategy"],
                                                                                r["fraction"]))] = r["cka"]
        image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(cells)), [f"{_label((o, s))} @{f:g}" for o, s, f in cells], rotation=60, ha="right",
                      fontsize=7)
        ax.set_yticks(range(len(layers)), [f"{name} ({part})" for _, name, part in layers], fontsize=7)
        ax.set_title(f"CKA {comparison}", fontsize=9)
    fig.colorbar(image, ax=list(axes[0]), fraction=0.03)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def score_vs_dice(path: Path, transfer: dict) -> None:
    """Checkpoint score against the Dice fine-tuning reached from it, one colour per pretraining stage."""
    plt = _pyplot()
    scores = [("robustness", "robustness (lower = more transferable)"), ("logme", "LogME (higher = better)")]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), squeeze=False)
    stages = list(dict.fromkeys(r["stage"] for r in transfer["rows"]))
    rho = {(s["stage"], s["score"]): s["rho"] for s in transfer["spearman"]}
    for ax, (score, label) in zip(axes[0], scores):
        for index, stage in enumerate(stages):
            points = [r for r in transfer["rows"] if r["stage"] == stage and r["dice"] is not None
                      and r[score] is not None]
            ax.plot([r[score] for r in points], [r["dice"] for r in points], "o-", color=f"C{index}", label=stage)
            for r in points:
                ax.annotate(str(r["epoch"]), (r[score], r["dice"]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        pooled = rho.get(("all", score))
        ax.set_title(f"{score}: Spearman ρ (all) = {'–' if pooled is None else f'{pooled:.2f}'}", fontsize=9)
        ax.set_xlabel(label, fontsize=8)
        ax.set_ylabel(f"test Dice after {transfer['strategy']} @ {transfer['fraction']:g}", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, title="pretraining (labels: epoch)", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
