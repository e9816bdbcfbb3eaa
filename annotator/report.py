"""Pictures for people: the active-learning simulation's learning curves, and the explanation of
one prediction (`annotator.explain`); each as a PNG, or an HTML page embedding it."""

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


def draw_explanation(explanation, path: Path) -> None:
    """One prediction explained: the image with its occlusion heatmap, the text with each word
    shaded by its weight, the audio's segment weights, the modality weights and the top classes;
    for a co-attention model also its own attention over the image's regions and the text's tokens.
    PNG, or an HTML page (the words as shaded text, the figure embedded) when ``path`` ends in .html."""
    import base64
    import html
    import io
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    e = explanation
    panels = (["image"] if e.image is not None else []) + (["text"] if e.words else []) + \
        (["audio"] if e.audio_segments else []) + \
        (["attention: image"] if e.attention_image is not None and e.image is not None else []) + \
        (["attention: text"] if e.attention_tokens else []) + ["scores"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.4), squeeze=False)
    fig.suptitle(f"item {e.item}: {e.label} ({e.top_classes[0][1]:.0%}), model {e.version}", fontsize=11)
    # each panel is shaded against its own largest weight (named in its title): a modality whose
    # parts each matter little would otherwise vanish beside one that hangs on a single word
    top_words = max([w for _, w in e.words] + [1e-6])
    for ax, panel in zip(axes[0], panels):
        if panel == "image":
            ax.imshow(e.image)
            width, height = e.image.size
            top = max(float(e.image_heatmap.max()), 1e-6)
            ax.imshow(e.image_heatmap, cmap="inferno", alpha=0.55, vmin=0, vmax=top, extent=(0, width, height, 0),
                      interpolation="bilinear")
            ax.set_title(f"image: where hiding costs the prediction\n(largest fall in probability: {top:.3f})", fontsize=9)
            ax.axis("off")
        elif panel == "text":
            ax.axis("off")
            ax.set_title(f"text: each word's weight\n(largest fall in probability: {top_words:.3f})", fontsize=9)
            x, y = 0.0, 0.95
            for word, weight in e.words:
                step = 0.022 * (len(word) + 1)
                if x + step > 1.0:
                    x, y = 0.0, y - 0.09
                ax.text(x, y, word, fontsize=10, va="top", transform=ax.transAxes,
                        bbox={"boxstyle": "round,pad=0.15", "lw": 0, "facecolor": plt.cm.inferno(0.75),
                              "alpha": min(1.0, 0.1 + 0.9 * weight / top_words)})
                x += step
        elif panel.startswith("attention"):
            _draw_attention(ax, e, plt, panel.endswith("image"))
        elif panel == "audio":
            starts = [a for a, _, _ in e.audio_segments]
            widths = [b - a for a, b, _ in e.audio_segments]
            ax.bar(starts, [w for _, _, w in e.audio_segments], width=widths, align="edge", color=plt.cm.inferno(0.6))
            ax.set_xlabel("seconds")
            ax.set_title("audio: each segment's weight", fontsize=9)
        else:
            labels = [textwrap.shorten(c, 22) for c, _ in e.top_classes][::-1]
            ax.barh(labels, [p for _, p in e.top_classes][::-1], color="#2f6db5")
            ax.set_xlim(0, 1)
            mods = ", ".join(f"{m} {w:.0%}" for m, w in e.modality_weights.items())
            ax.set_title(f"top classes; modality weights: {mods}", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    path = Path(path)
    if path.suffix != ".html":
        path.write_bytes(buf.getvalue())
        return
    words = " ".join(f"<span title='{w:.3f}' style='background: rgba(230,120,30,{min(1.0, 0.1 + 0.9 * w / top_words):.2f}); "
                     f"padding: 1px 3px; border-radius: 3px'>{html.escape(word)}</span>" for word, w in e.words)
    classes = "".join(f"<tr><td>{html.escape(c)}</td><td>{p:.3f}</td></tr>" for c, p in e.top_classes)
    top_tokens = max([w for _, w in e.attention_tokens] + [1e-6])
    tokens = " ".join(f"<span title='{w:.3f}' style='background: rgba(40,110,200,{min(1.0, 0.1 + 0.9 * w / top_tokens):.2f}); "
                      f"padding: 1px 3px; border-radius: 3px'>{html.escape(t)}</span>" for t, w in e.attention_tokens)
    if tokens:
        words += f"</p><p>The co-attention head's attention over the text's tokens:</p><p style='font-size: 1.3em'>{tokens}"
    path.write_text(f"<html><body><h1>Item {html.escape(e.item)}: {html.escape(e.label)}</h1>"
                    f"<p>model {html.escape(e.version)}; {html.escape(e.summary())}</p>"
                    f"<p style='font-size: 1.3em; line-height: 1.8'>{words}</p>"
                    f"<table><tr><th>class</th><th>probability</th></tr>{classes}</table>"
                    f"<img src='data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}'/>"
                    f"<p>Weights are how much the predicted class's probability falls when that part is hidden "
                    f"(occlusion).</p></body></html>")


def _draw_attention(ax, e, plt, image: bool) -> None:
    """A co-attention model's own attention: over the image's regions (as a heatmap on the image),
    or over the text's tokens (the most attended, as bars)."""
    if image:
        ax.imshow(e.image)
        width, height = e.image.size
        ax.imshow(e.attention_image, cmap="viridis", alpha=0.55, vmin=0, vmax=max(float(e.attention_image.max()), 1e-6),
                  extent=(0, width, height, 0), interpolation="nearest")
        ax.set_title(f"co-attention over the image's regions\n(largest weight {e.attention_image.max():.2f}; "
                     f"they sum to 1 with the whole image's)", fontsize=9)
        ax.axis("off")
        return
    top = sorted(enumerate(e.attention_tokens), key=lambda itw: -itw[1][1])[:10][::-1]
    ax.barh(range(len(top)), [w for _, (_, w) in top], color=plt.cm.viridis(0.4))
    ax.set_yticks(range(len(top)), [f"{t} (#{i})" for i, (t, _) in top])  # a word may occur twice
    ax.set_title("co-attention over the text's tokens", fontsize=9)
