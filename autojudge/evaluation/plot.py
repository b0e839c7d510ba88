"""The trade-off plot: quality against tau, AutoJudge beside top-K, FLy and lossless (the paper's Figure 3)."""

from __future__ import annotations

from pathlib import Path


def plot_tradeoff(report: dict, path: Path) -> None:
    """Accuracy (gold) and agreement with the target's own answers, each against tau:
    AutoJudge (one point per threshold) beside top-K (one per K), FLy (one per entropy gate) and lossless."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["runs"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=120)
    panels = (("accuracy", f"{report.get('task', 'task')} accuracy vs gold (%)"),
              ("agreement_with_target", "same result as the target alone (%)"))
    for ax, (key, ylabel) in zip(axes, panels):
        target = next(r for r in rows if r["mode"] == "target")
        ax.axhline(100 * target[key], color="grey", ls=":", lw=1, label="target alone (greedy)")
        for mode, style, label in (("judge", "o-", "AutoJudge (threshold)"), ("topk", "s--", "top-K (K)"),
                                   ("fly", "^-.", "FLy (entropy gate)")):
            pts = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["tau"])
            if not pts:
                continue
            ax.plot([r["tau"] for r in pts], [100 * r[key] for r in pts], style, label=label)
            for r in pts:
                tag = (r["top_k"] if mode == "topk" else f"{r['fly_entropy']:g}" if mode == "fly"
                       else "cal." if r["threshold"] is None else f"{r['threshold']:g}")
                ax.annotate(str(tag), (r["tau"], 100 * r[key]), textcoords="offset points",
                            xytext=(4, 4), fontsize=7)
        for r in rows:
            if r["mode"] == "lossless":
                ax.plot(r["tau"], 100 * r[key], "k*", ms=12, label=f"lossless (W={r['window']})")
        ax.set_xlabel("accepted tokens per target call (tau, bonus included)")
        ax.set_ylabel(ylabel)
        top = max(100 * r[key] for r in rows)
        ax.set_ylim(-5, 105) if top > 40 else ax.set_ylim(0, 1.3 * top + 2)  # zoom when all values are low
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(f"{report.get('target')} + {report.get('draft')}: quality vs tokens per target call "
                 f"({report['examples']} examples)", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
