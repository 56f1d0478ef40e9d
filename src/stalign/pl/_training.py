"""Training curves: contrastive loss and validation retrieval against chance."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

__all__ = ["save_training_curves", "training_curves"]


def training_curves(
    history: pd.DataFrame | str | os.PathLike,
    *,
    save: str | os.PathLike | None = None,
    title: str | None = None,
):
    """Plot the loss (train and validation) and validation retrieval over steps.

    Recall is drawn as a fraction of the validation spots (as in ``log.csv`` and the
    evaluation report), each with its chance level (dotted).

    Parameters
    ----------
    history
        ``FitResult.history`` or the path of a run's ``log.csv``.
    save
        Write the figure there (PNG, 150 dpi).
    title
        Figure title.

    Returns
    -------
    Figure
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    if not isinstance(history, pd.DataFrame):
        path = Path(history)
        if not path.is_file():
            msg = f"training_curves: log file {str(path)!r} does not exist"
            raise FileNotFoundError(msg)
        history = pd.read_csv(path)
    if "step" not in history.columns:
        msg = f"training_curves: history needs a 'step' column, got {list(history.columns)}"
        raise ValueError(msg)
    fig, (ax_loss, ax_ret) = plt.subplots(1, 2, figsize=(10, 3.8))
    for col, label, style in (("train_loss", "train", ".-"), ("val_loss", "validation", "o-")):
        if col in history.columns:
            d = history[["step", col]].dropna()
            if len(d):
                ax_loss.plot(d["step"], d[col], style, label=label, ms=3)
    ax_loss.set_xlabel("optimiser step")
    ax_loss.set_ylabel("symmetric InfoNCE loss")
    ax_loss.legend(frameon=False)
    ax_loss.set_title("contrastive loss")
    plotted = False
    for k, color in ((1, "tab:blue"), (5, "tab:orange"), (10, "tab:green")):
        col = f"val_recall@{k}"
        if col in history.columns:
            d = history[["step", col, f"val_chance@{k}"]].dropna()
            if len(d):
                ax_ret.plot(d["step"], d[col], "o-", color=color, ms=3, label=f"recall@{k}")
                ax_ret.axhline(
                    d[f"val_chance@{k}"].iloc[-1],
                    color=color,
                    ls=":",
                    lw=1,
                    label=f"chance@{k}",
                )
                plotted = True
    if plotted:
        ax_ret.set_xlabel("optimiser step")
        ax_ret.set_ylabel("image → profile recall@k (fraction)")
        ax_ret.legend(frameon=False, fontsize=8, ncol=2, loc="upper left", bbox_to_anchor=(1, 1))
        ax_ret.set_title("validation retrieval")
    else:
        ax_ret.text(
            0.5, 0.5, "no validation set", ha="center", va="center", transform=ax_ret.transAxes
        )
        ax_ret.set_axis_off()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if save is not None:
        Path(save).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save, dpi=150)
    return fig


def save_training_curves(
    history: pd.DataFrame | str | os.PathLike, path: str | os.PathLike
) -> Path | None:
    """Draw [`training_curves`][stalign.pl.training_curves] to ``path`` (PNG) and close the figure.

    What ``stalign train`` and the pipeline write as a run folder's ``curves.png``
    from [`stalign.train.FitResult.history`][stalign.train.FitResult.history].

    Parameters
    ----------
    history
        ``FitResult.history`` or the path of a run's ``log.csv``.
    path
        The PNG file to write.

    Returns
    -------
    Path | None
        ``path``, or ``None`` when the history has no rows (nothing is drawn).
    """
    import matplotlib.pyplot as plt

    if isinstance(history, pd.DataFrame) and not len(history):
        return None
    plt.close(training_curves(history, save=path))
    return Path(path)
