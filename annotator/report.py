"""Pictures for people: the active-learning simulation's learning curves (PNG, or an HTML page)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_curves(result: dict[str, Any], path: Path) -> None:
    """Learning curves as a PNG (and an HTML page embedding it when ``path`` ends in .html)."""
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in result["curves"].items():
        ax.plot([p["labels"] for p in curve], [p["accuracy"] for p in curve], "o-", ms=3, label=name)
    ax.axhline(0.95 * result["full_accuracy"], ls="--", c="grey", lw=1, label="95 % of full-data accuracy")
    ax.set_xlabel("labelled items")
    ax.set_ylabel("test accuracy")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    path = Path(path)
    if path.suffix == ".html":
        needed = result["labels_to_95pct_of_full"]
        rows = "".join(f"<tr><td>{n}</td><td>{v if v is not None else 'not reached'}</td></tr>" for n, v in needed.items())
        path.write_text(f"<html><body><h1>Active-learning simulation</h1><p>{result['items']} items, "
                        f"{result['seeds']} seeds, full-data accuracy {result['full_accuracy']:.3f}</p>"
                        f"<table><tr><th>strategy</th><th>labels to reach 95 %</th></tr>{rows}</table>"
                        f"<img src='data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}'/></body></html>")
    else:
        path.write_bytes(buf.getvalue())
