"""Matplotlib helpers shared by scripts/figures.py, the demo and evaluate.py's confusion matrix: a headless
backend, atomic PNG/PDF writes, small PNGs, one colour per method. Figures are built from stored records only; every
plotted array carries a `gid` (or a label) so tests read the data back from the figure's artists."""
import io
import os

from utils.io import atomic_write_bytes

DPI = 80  # small PNGs (tens of KB): the figures are for looking, the numbers stay in the records
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf"]


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def color(i):
    return COLORS[i % len(COLORS)]


def save_figure(fig, path, formats=("png",)):
    """Write `fig` as <path without .png/.pdf/.svg>.<fmt> for each format, atomically; returns the written paths.
    The figure is closed (its artists stay readable)."""
    plt = pyplot()
    base, ext = os.path.splitext(path)
    if ext.lower() not in (".png", ".pdf", ".svg"):  # a stem such as finetune-lambda_r-0.0005
        base = path
    written = []
    for fmt in formats:
        buf = io.BytesIO()
        # PDF and PNG metadata without dates: the same records give the same bytes
        meta = {"CreationDate": None} if fmt == "pdf" else {"Software": None} if fmt == "png" else {}
        fig.savefig(buf, format=fmt, dpi=DPI, bbox_inches="tight", metadata=meta)
        atomic_write_bytes(f"{base}.{fmt}", buf.getvalue())
        written.append(f"{base}.{fmt}")
    plt.close(fig)
    return written


def find(ax, gid):
    """The artist of `ax` with this gid (tests and callers read plotted data back), else None."""
    for a in ax.get_children():
        if a.get_gid() == gid:
            return a
    return None


def confusion_figure(matrix, names, title):
    """The confusion matrix (rows: true class, columns: predicted) as an image with counts; returns the figure."""
    import numpy as np
    plt = pyplot()
    m = np.asarray(matrix)
    k = len(m)
    side = min(12.0, 2.0 + 0.45 * k)
    fig, ax = plt.subplots(figsize=(side, side))
    im = ax.imshow(m, cmap="Blues", interpolation="nearest")
    im.set_gid("confusion")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    if k <= 30:
        ax.set_xticks(range(k), names, rotation=90, fontsize=7)
        ax.set_yticks(range(k), names, fontsize=7)
        top = m.max() if m.size else 0
        for i in range(k):
            for j in range(k):
                if m[i, j]:
                    ax.text(j, i, str(int(m[i, j])), ha="center", va="center", fontsize=6,
                            color="white" if m[i, j] > top / 2 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return fig
