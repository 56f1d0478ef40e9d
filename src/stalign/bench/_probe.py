"""Spot-level probes: HEST-Benchmark ridge protocol, inner-CV ridge, MLP.

The core takes plain arrays so that any embedding (an encoder's, a baseline's)
can be scored the same way. See [`gene_prediction`][stalign.bench.gene_prediction]
for the protocol.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ._genes import hest_gene_panel
from ._probe_fit import _run
from ._probe_result import (
    PROTOCOLS,
    TARGETS,
    Probe,
    ProbeResult,
    Protocol,
    Targets,
    _check_protocol,
    pearson_columns,
)

__all__ = [
    "PROTOCOLS",
    "ProbeResult",
    "gene_prediction",
    "pathway_prediction",
    "pearson_columns",
]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# public API


def _gene_targets(Yd, idx: np.ndarray, targets: str) -> np.ndarray:
    """Dense float64 targets of the panel columns ``idx`` of the counts ``Yd``."""
    if targets not in TARGETS:
        msg = f"targets must be one of {TARGETS}, got {targets!r}"
        raise ValueError(msg)
    if targets == "log1p_cp10k":
        from ..pp import lognorm_matrix

        # per spot to 10,000 counts over ALL columns (the library size), then the panel
        Yd = lognorm_matrix(sp.csr_matrix(Yd, dtype=np.float64) if sp.issparse(Yd) else Yd)
    out = Yd[:, idx]
    out = np.asarray(out.toarray() if sp.issparse(out) else out, dtype=np.float64)
    if targets == "log1p":
        if out.min(initial=0) < 0:
            msg = "targets='log1p' expects raw counts in Y (found negative values)"
            raise ValueError(msg)
        out = np.log1p(out)
    return out


def _legacy_protocol(protocol: str, targets: str) -> tuple[str, str]:
    """Map the old ``protocol="none"`` (targets as given) onto ``targets="none"``."""
    if protocol != "none":
        return protocol, targets
    import warnings

    warnings.warn(
        "gene_prediction(protocol='none') is deprecated: use targets='none' "
        "(protocol now names the feature pipeline, 'hest' or 'hest_robust')",
        FutureWarning,
        stacklevel=3,
    )
    return "hest", "none"


def gene_prediction(
    X,
    Y,
    groups,
    *,
    protocol: Protocol = "hest",
    targets: Targets = "log1p",
    gene_names: Sequence[str] | None = None,
    genes: Sequence[str] | None = None,
    samples=None,
    probe: Probe = "ridge",
    n_genes: int = 50,
    min_spot_fraction: float = 0.1,
    pca_dim: int | None = 256,
    folds: str | int = "lopo",
    test_groups: Sequence[str] | None = None,
    alphas: Sequence[float] | None = None,
    max_iter: int = 1000,
    random_state: int = 0,
    mlp_hidden: tuple[int, ...] = (256,),
) -> ProbeResult:
    """Predict gene expression from patch embeddings (HEST-Benchmark protocol).

    With the defaults (``protocol="hest"``, ``targets="log1p"``, ``probe="ridge"``)
    this is the HEST-Benchmark linear probe, step for step:

    1. panel: genes detected in ≥ 10 % of all spots, then the 50 with the largest
       variance of ``log1p(counts)`` ([`hest_gene_panel`][stalign.bench.hest_gene_panel]),
       unless ``genes`` is given;
    2. targets: ``log1p(counts)`` of the panel (no library-size normalisation, as HEST);
    3. per fold, fitted on the training spots only: ``StandardScaler`` → ``PCA(256)``
       (``min(256, n_train, dim)`` components; HEST always asks for 256) →
       ``Ridge(alpha = 100 / (n_components · n_genes), solver="lsqr",
       fit_intercept=False)``; the test features are transformed as they are (nothing
       clipped, no column dropped);
    4. folds: leave one patient (``groups`` value) out;
    5. score: Pearson per gene on the fold's concatenated test spots, averaged over
       genes; reported as mean ± std (``ddof=0``) over folds.

    ``protocol="hest_robust"`` changes step 3 only: columns constant on the training
    spots (sd below 1e-6 of the median feature sd) are dropped, and each test feature
    is clipped to the range it spans on the training spots. It protects the probe from
    ReLU units dead on the training sections and alive on the test ones (which
    standardisation turns into huge values); its numbers are not HEST's.

    ``probe="ridge_cv"`` chooses alpha by an inner grouped CV on the training fold
    (split by ``samples`` when given, else by ``groups``; score = mean Pearson);
    ``probe="mlp"`` fits an ``MLPRegressor`` (one hidden layer, early stopping) on the
    same PCA features with standardised targets. With ``samples`` the Pearson is also
    computed inside each test sample (``ProbeResult.per_sample``).

    Parameters
    ----------
    X
        ``(n_spots, dim)`` embeddings or any image features.
    Y
        ``(n_spots, n_genes_total)`` raw counts (dense or sparse); with
        ``targets="none"`` already-transformed targets used as they are.
    groups
        ``(n_spots,)`` group of each spot (a patient id; or a section id for a split by
        section); one fold per group.
    protocol
        Feature pipeline: ``"hest"`` (HEST-Benchmark exactly) or ``"hest_robust"``.
    targets
        ``"log1p"`` (HEST: ``log1p`` of raw counts), ``"log1p_cp10k"`` (each spot
        scaled to 10,000 counts over all columns of ``Y``, then ``log1p``; the panel is
        still chosen on ``log1p`` raw counts) or ``"none"`` (``Y`` as given, every
        column unless ``genes`` is given).
    gene_names
        Names of ``Y``'s columns (default ``gene_0``, ...).
    genes
        Explicit panel (names in ``gene_names``); skips the HEST panel rule.
    samples
        ``(n_spots,)`` sample (section) id of each spot, for per-sample Pearson and the
        inner CV of ``ridge_cv``.
    probe
        ``"ridge"`` (HEST), ``"ridge_cv"`` or ``"mlp"``.
    n_genes, min_spot_fraction
        Panel rule (HEST: 50 genes, 10 % of spots).
    pca_dim
        PCA components (HEST: 256); ``None`` skips PCA (scaling only).
    folds
        ``"lopo"`` (leave one group out) or ``k`` group folds (groups assigned
        round-robin in order of first appearance).
    test_groups
        A single fixed split instead of ``folds``: these groups are the test set,
        the others the training set (e.g. patients an aligned encoder never saw).
    alphas
        Grid for ``ridge_cv`` (default ``10**-3 … 10**5``).
    max_iter
        Iterations of the lsqr solver / the MLP.
    random_state
        Seed of PCA and the MLP.
    mlp_hidden
        Hidden layer sizes of the MLP probe.

    Returns
    -------
    ProbeResult
        ``.mean`` / ``.std`` are the headline mean ± std over folds; ``.per_target`` /
        ``.per_fold`` / ``.per_sample`` the tidy tables.
    """
    protocol, targets = _legacy_protocol(protocol, targets)
    _check_protocol(protocol)
    Yd = sp.csc_matrix(Y) if sp.issparse(Y) else np.asarray(Y)  # only the panel densified
    if Yd.ndim != 2:
        msg = f"Y must be 2-D (spots × genes), got shape {Yd.shape}"
        raise ValueError(msg)
    names = (
        [f"gene_{i}" for i in range(Yd.shape[1])]
        if gene_names is None
        else [str(x) for x in gene_names]
    )
    if len(names) != Yd.shape[1]:
        msg = f"gene_names has {len(names)} entries but Y has {Yd.shape[1]} columns"
        raise ValueError(msg)
    if genes is not None:
        pos = {n: i for i, n in enumerate(names)}
        missing = [g for g in genes if g not in pos]
        if missing:
            msg = f"genes not found in gene_names: {missing[:10]}"
            raise ValueError(msg)
        idx = np.array([pos[g] for g in genes], dtype=int)
    elif targets != "none":
        idx = hest_gene_panel(Yd, names, n_genes=n_genes, min_spot_fraction=min_spot_fraction)
    else:
        idx = np.arange(Yd.shape[1])
    return _run(
        X,
        _gene_targets(Yd, idx, targets),
        groups,
        [names[i] for i in idx],
        samples=samples,
        probe=probe,
        pca_dim=pca_dim,
        folds=folds,
        test_groups=test_groups,
        alphas=alphas,
        max_iter=max_iter,
        random_state=random_state,
        mlp_hidden=mlp_hidden,
        protocol=protocol,
        params={
            "task": "genes",
            "targets": targets,
            "n_genes": n_genes,
            "min_spot_fraction": min_spot_fraction,
            "panel": [names[i] for i in idx],
        },
    )


def pathway_prediction(
    X,
    scores,
    groups,
    *,
    pathway_names: Sequence[str] | None = None,
    protocol: Protocol = "hest",
    samples=None,
    probe: Probe = "ridge",
    pca_dim: int | None = 256,
    folds: str | int = "lopo",
    test_groups: Sequence[str] | None = None,
    alphas: Sequence[float] | None = None,
    max_iter: int = 1000,
    random_state: int = 0,
    mlp_hidden: tuple[int, ...] = (256,),
) -> ProbeResult:
    """Predict pathway scores from patch embeddings with the HEST probe.

    Identical to [`gene_prediction`][stalign.bench.gene_prediction] (scaler → PCA 256 →
    ridge with ``alpha = 100 / (n_components · n_pathways)``, leave one group out,
    Pearson per pathway on the concatenated test set, mean ± std over folds) except
    that the targets are the pathway scores as given (e.g. ``obsm['pathway_scores']``),
    all columns, without a panel rule or log transform.

    Parameters
    ----------
    X
        ``(n_spots, dim)`` embeddings.
    scores
        ``(n_spots, n_pathways)`` array or DataFrame of pathway scores.
    groups
        ``(n_spots,)`` patient (or section) id of each spot.
    pathway_names
        Column names (taken from a DataFrame's columns when omitted).
    protocol, samples, probe, pca_dim, folds, test_groups, alphas, max_iter, random_state
        As in [`gene_prediction`][stalign.bench.gene_prediction].
    mlp_hidden
        As in [`gene_prediction`][stalign.bench.gene_prediction].

    Returns
    -------
    ProbeResult
        One target per pathway.
    """
    if isinstance(scores, pd.DataFrame):
        names = [str(c) for c in scores.columns] if pathway_names is None else pathway_names
        arr = scores.to_numpy(dtype=np.float64)
    else:
        arr = np.asarray(scores, dtype=np.float64)
        if arr.ndim != 2:
            msg = f"scores must be 2-D (spots × pathways), got shape {arr.shape}"
            raise ValueError(msg)
        names = (
            [f"pathway_{i}" for i in range(arr.shape[1])]
            if pathway_names is None
            else pathway_names
        )
    names = [str(x) for x in names]
    if len(names) != arr.shape[1]:
        msg = f"pathway_names has {len(names)} entries but scores has {arr.shape[1]} columns"
        raise ValueError(msg)
    return _run(
        X,
        arr,
        groups,
        names,
        samples=samples,
        probe=probe,
        pca_dim=pca_dim,
        folds=folds,
        test_groups=test_groups,
        alphas=alphas,
        max_iter=max_iter,
        random_state=random_state,
        mlp_hidden=mlp_hidden,
        protocol=protocol,
        params={"task": "pathways"},
    )
