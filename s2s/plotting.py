"""Attention heatmaps and training curves (matplotlib is an optional extra:
``pip install s2s[plot]``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from torch import Tensor

from s2s.errors import S2SError
from s2s.inference import Translator, clean_input


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise S2SError("plotting needs matplotlib: pip install 'matplotlib>=3.5' "
                       "(or pip install -e '.[plot]')") from None
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt
    return plt


def _save(plt, fig, path: str | Path) -> Path:
    """Write ``fig`` to the PNG ``path`` (its folder made) and close it."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_attention(weights: Tensor, src_pieces: Sequence[str], tgt_pieces: Sequence[str],
                   path: str | Path, title: str = "") -> Path:
    """Draw ``weights [len(tgt_pieces), len(src_pieces)]`` (one row per target subword, rows
    summing to 1) as a heatmap PNG: source subwords along x, target subwords along y."""
    plt = _pyplot()
    matrix = weights.detach().float().cpu().numpy()
    rows, cols = matrix.shape
    if (rows, cols) != (len(tgt_pieces), len(src_pieces)):
        raise ValueError(f"weights are {rows}×{cols} but there are {len(tgt_pieces)} target and "
                         f"{len(src_pieces)} source labels")
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * cols + 2), max(3.0, 0.4 * rows + 1.5)))
    image = ax.imshow(matrix, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(cols), labels=list(src_pieces), rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(rows), labels=list(tgt_pieces), fontsize=8)
    ax.set_xlabel("source")
    ax.set_ylabel("output")
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.04)
    return _save(plt, fig, path)


def plot_translation(translator: Translator, sentence: str, path: str | Path,
                     beam_size: int = 1) -> str:
    """Translate ``sentence`` and plot its attention; returns the translation."""
    text, hyp = translator.translate_nbest([sentence], beam_size, 1, keep_attention=True)[0][0]
    if hyp.attention is None:
        raise S2SError("the input is empty: nothing to plot")
    tokenizers = translator.tokenizers
    src_pieces = tokenizers.src.pieces(clean_input(sentence)) + ["</s>"]
    tgt_pieces = tokenizers.tgt.id_to_piece(hyp.tokens)
    if hyp.attention.size(0) > len(hyp.tokens):  # the EOS step
        tgt_pieces.append("</s>")
    plot_attention(hyp.attention[:, :len(src_pieces)], src_pieces, tgt_pieces, path,
                   title=f"{sentence}\n→ {text}")
    return text


def read_metrics(run: str | Path) -> list[dict]:
    """The validation records of a run directory's ``metrics.jsonl``, in order."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise S2SError(f"'{path}' does not exist: not a training run's directory")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise S2SError(f"{path}, line {number}: not a JSON record") from None
    return records


def plot_curves(runs: Sequence[str | Path], path: str | Path,
                labels: Sequence[str] | None = None) -> Path:
    """Validation BLEU and loss of each run against updates and, where the runs recorded it,
    against wall time (minutes): a 2 × 2 PNG (2 × 1 when no run has times), one line per run."""
    plt = _pyplot()
    metrics = [read_metrics(run) for run in runs]
    timed = any("elapsed" in r for records in metrics for r in records)
    fig, axes = plt.subplots(2, 2 if timed else 1, figsize=(10 if timed else 6, 7),
                             sharey="row", squeeze=False)
    for records, label in zip(metrics, labels or [Path(run).name for run in runs]):
        steps = [r["step"] for r in records]
        minutes = [r.get("elapsed", float("nan")) / 60.0 for r in records]
        for row, key in enumerate(("bleu", "val_loss")):
            values = [r[key] for r in records]
            axes[row][0].plot(steps, values, marker=".", label=label)
            if timed:
                axes[row][1].plot(minutes, values, marker=".", label=label)
    for row, name in enumerate(("validation BLEU", "validation loss")):
        axes[row][0].set_ylabel(name)
    axes[1][0].set_xlabel("updates")
    if timed:
        axes[1][1].set_xlabel("minutes of training")
    axes[0][-1].legend(fontsize=8)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    return _save(plt, fig, path)
