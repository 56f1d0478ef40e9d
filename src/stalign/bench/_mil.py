"""Attention-MIL (gated ABMIL, Ilse et al. 2018) marker prediction with group-level CV.

torch is imported inside the functions so that ``import stalign.bench`` stays light.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .._utils import limit_threads

__all__ = ["MarkerResult", "marker_prediction"]

logger = logging.getLogger(__name__)


@dataclass
class MarkerResult:
    """Outcome of [`marker_prediction`][stalign.bench.marker_prediction].

    Attributes
    ----------
    per_fold
        One row per (seed, fold): ``seed``, ``fold``, ``test_groups``, ``n_train``,
        ``n_test``, ``n_pos_test``, ``auc`` (NaN when the test fold holds one class).
    scores
        ``(n_seeds, n_bags)`` out-of-fold positive-class probabilities.
    labels
        ``(n_bags,)`` the labels.
    params
        Parameters of the run.
    """

    per_fold: pd.DataFrame
    scores: np.ndarray
    labels: np.ndarray
    params: dict = field(default_factory=dict)

    @property
    def auc_mean(self) -> float:
        """Mean ROC-AUC over folds and seeds (folds with one class skipped)."""
        return float(np.nanmean(self.per_fold["auc"]))

    @property
    def auc_std(self) -> float:
        """Standard deviation (``ddof=0``) of the ROC-AUC over folds and seeds."""
        return float(np.nanstd(self.per_fold["auc"]))

    @property
    def pooled_auc(self) -> float:
        """ROC-AUC of all out-of-fold scores pooled, averaged over seeds."""
        from sklearn.metrics import roc_auc_score

        if np.unique(self.labels).size < 2:
            return float("nan")
        return float(np.mean([roc_auc_score(self.labels, s) for s in self.scores]))

    def summary(self) -> dict:
        """Flat dict: ``auc_mean``, ``auc_std``, ``pooled_auc``, ``n_bags``, ``n_pos``."""
        return {
            "auc_mean": self.auc_mean,
            "auc_std": self.auc_std,
            "pooled_auc": self.pooled_auc,
            "n_bags": int(self.labels.size),
            "n_pos": int(self.labels.sum()),
        }


def _make_model(d_in: int, hidden: int, attn: int, dropout: float):
    import torch
    from torch import nn

    class GatedABMIL(nn.Module):
        """Gated attention pooling over instances, then a linear classifier."""

        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout))
            self.att_v = nn.Linear(hidden, attn)
            self.att_u = nn.Linear(hidden, attn)
            self.att_w = nn.Linear(attn, 1)
            self.head = nn.Linear(hidden, 1)

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = self.embed(x)  # (B, N, H)
            a = self.att_w(torch.tanh(self.att_v(h)) * torch.sigmoid(self.att_u(h))).squeeze(-1)
            a = a.masked_fill(~mask, float("-inf")).softmax(dim=1)  # (B, N)
            z = torch.einsum("bn,bnh->bh", a, h)
            return self.head(z).squeeze(-1), a

    return GatedABMIL()


def _pad(bags: list[np.ndarray]):
    import torch

    n_max = max(b.shape[0] for b in bags)
    d = bags[0].shape[1]
    x = np.zeros((len(bags), n_max, d), dtype=np.float32)
    m = np.zeros((len(bags), n_max), dtype=bool)
    for i, b in enumerate(bags):
        x[i, : b.shape[0]] = b
        m[i, : b.shape[0]] = True
    return torch.from_numpy(x), torch.from_numpy(m)


def _train_predict(
    train_bags,
    y_train,
    test_bags,
    *,
    seed,
    epochs,
    lr,
    weight_decay,
    hidden,
    attn,
    dropout,
    batch_size,
) -> np.ndarray:
    import torch

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = _make_model(train_bags[0].shape[1], hidden, attn, dropout)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    x, m = _pad(train_bags)
    y = torch.as_tensor(y_train, dtype=torch.float32)
    pos = float(y.sum())
    pos_weight = torch.tensor((len(y) - pos) / max(pos, 1.0))
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), batch_size):
            b = perm[start : start + batch_size]
            opt.zero_grad()
            logits, _ = model(x[b], m[b])
            loss_fn(logits, y[b]).backward()
            opt.step()
    model.eval()
    xt, mt = _pad(test_bags)
    with torch.no_grad():
        logits, _ = model(xt, mt)
    return torch.sigmoid(logits).numpy()


def _checked_bags(bags, labels, groups) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Check the bags; return them as float32 arrays, 0/1 labels and string groups."""
    bags = [np.asarray(b, dtype=np.float32) for b in bags]
    y = np.asarray(labels).astype(int)
    g = np.asarray(groups).astype(str)
    nb = len(bags)
    if nb == 0:
        msg = "bags is empty"
        raise ValueError(msg)
    if y.shape != (nb,) or g.shape != (nb,):
        msg = f"labels and groups need one entry per bag ({nb}), got {y.shape} and {g.shape}"
        raise ValueError(msg)
    if not set(np.unique(y)) <= {0, 1}:
        msg = f"labels must be 0/1, found {sorted(set(np.unique(y)))}"
        raise ValueError(msg)
    dims = {b.shape[1] if b.ndim == 2 else -1 for b in bags}
    if len(dims) != 1 or -1 in dims or any(b.shape[0] == 0 for b in bags):
        msg = f"every bag must be a non-empty (n_i, dim) array with one dim; got dims {dims}"
        raise ValueError(msg)
    return bags, y, g


def _group_splits(
    g: np.ndarray, test_groups: Sequence[str] | None
) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """Plan the folds as ``(test bag indices, training bag indices, fold name)``.

    Leave-one-group-out, or the one fixed split where ``test_groups`` are the test set.
    """
    uniq = list(dict.fromkeys(g.tolist()))
    if len(uniq) < 2:
        msg = f"group-level CV needs >= 2 groups (patients or sections), found {uniq}"
        raise ValueError(msg)
    if test_groups is None:
        return [(np.flatnonzero(g == u), np.flatnonzero(g != u), u) for u in uniq]
    test = [str(t) for t in test_groups]
    if not test or [t for t in test if t not in uniq] or len(set(test)) == len(uniq):
        msg = f"test_groups must name some but not all of the groups {uniq}, got {test}"
        raise ValueError(msg)
    m = np.isin(g, test)
    return [(np.flatnonzero(m), np.flatnonzero(~m), "+".join(test))]


def _fitted_transform(train_bags: list[np.ndarray], pca_dim: int | None, seed: int) -> Callable:
    """Fit ``StandardScaler`` (→ ``PCA(pca_dim)``) on the training bags' instances only.

    Returns the function that transforms one bag.
    """
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    inst = np.concatenate(train_bags)
    pre = [StandardScaler().fit(inst)]
    if pca_dim is not None:
        z = pre[0].transform(inst)
        del inst
        k = int(min(pca_dim, z.shape[0], z.shape[1]))
        pre.append(PCA(n_components=k, random_state=seed).fit(z))
        del z  # the PCA is fitted; the bags are transformed one by one

    def tf(b: np.ndarray) -> np.ndarray:
        out = pre[0].transform(b)
        return pre[1].transform(out) if len(pre) > 1 else out

    return tf


def marker_prediction(
    bags: Sequence[np.ndarray],
    labels,
    groups,
    *,
    seeds: Sequence[int] = (0,),
    test_groups: Sequence[str] | None = None,
    pca_dim: int | None = 64,
    epochs: int = 40,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    hidden: int = 64,
    attn: int = 32,
    dropout: float = 0.1,
    batch_size: int = 16,
) -> MarkerResult:
    """Predict a binary bag label with gated attention-MIL under leave-one-group-out CV.

    A group is a patient, or a section for a split by section (pass section ids as
    ``groups``). Per fold (one group held out), fitted on the training bags' instances only:
    ``StandardScaler`` → ``PCA(pca_dim)``; then a gated ABMIL (instance MLP with
    ``hidden`` units, gated attention with ``attn`` units, linear head) trained with
    class-balanced BCE and AdamW for ``epochs`` epochs. Score: ROC-AUC on the held-out
    group's bags, mean ± std over folds and seeds, plus the pooled out-of-fold AUC.

    Parameters
    ----------
    bags
        One ``(n_instances, dim)`` array per bag (e.g. `bags_from_task`).
    labels
        ``(n_bags,)`` 0/1 labels.
    groups
        ``(n_bags,)`` patient (or section) of each bag; one fold per group.
    seeds
        Training seeds (the run is repeated per seed; MIL is stochastic).
    test_groups
        A single fixed split instead of leave-one-group-out: these groups are the test
        set, the others the training set.
    pca_dim
        PCA components on instances (``None``: scaling only).
    epochs, lr, weight_decay, hidden, attn, dropout, batch_size
        Training hyper-parameters.

    Returns
    -------
    MarkerResult
        Per-fold AUCs, out-of-fold scores and labels.
    """
    from sklearn.metrics import roc_auc_score

    bags, y, g = _checked_bags(bags, labels, groups)
    nb = len(bags)
    splits = _group_splits(g, test_groups)
    scores = np.full((len(seeds), nb), np.nan)
    rows = []
    for si, seed in enumerate(seeds):
        for fi, (te, tr, u) in enumerate(splits):
            if np.unique(y[tr]).size < 2:
                logger.warning("fold %s: training bags hold one class only; skipped", u)
                rows.append(_row(seed, fi, u, tr, te, y, float("nan")))
                continue
            tf = _fitted_transform([bags[i] for i in tr], pca_dim, seed)
            # tiny matrices: one thread is faster than several (and kinder to shared machines)
            with limit_threads(1):
                p = _train_predict(
                    [tf(bags[i]) for i in tr],
                    y[tr],
                    [tf(bags[i]) for i in te],
                    seed=int(seed),
                    epochs=epochs,
                    lr=lr,
                    weight_decay=weight_decay,
                    hidden=hidden,
                    attn=attn,
                    dropout=dropout,
                    batch_size=batch_size,
                )
            scores[si, te] = p
            auc = roc_auc_score(y[te], p) if np.unique(y[te]).size == 2 else float("nan")
            if np.isnan(auc):
                logger.warning("fold %s: test bags hold one class only; AUC undefined", u)
            rows.append(_row(seed, fi, u, tr, te, y, float(auc)))
    return MarkerResult(
        per_fold=pd.DataFrame(rows),
        scores=scores,
        labels=y,
        params={
            "model": "gated ABMIL",
            "seeds": list(seeds),
            "pca_dim": pca_dim,
            "epochs": epochs,
            "lr": lr,
            "hidden": hidden,
            "attn": attn,
        },
    )


def _row(seed, fi, u, tr, te, y, auc) -> dict:
    return {
        "seed": int(seed),
        "fold": fi,
        "test_groups": u,
        "n_train": len(tr),
        "n_test": len(te),
        "n_pos_test": int(y[te].sum()),
        "auc": auc,
    }
