"""µm/px reconciliation: pick one estimate, warn when independent estimates disagree.

The one rule for every place that holds more than one µm/px of an image: the
readers (platform geometry vs image metadata vs the user's value) and
[`stalign.im.open_image`][stalign.im.open_image] (the user's value vs the file's tags; an AnnData's
µm/px vs its image's tags).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

logger = logging.getLogger(__name__)

#: Relative disagreement above which two µm/px estimates trigger a warning.
MPP_TOLERANCE = 0.10
#: Plausible µm/px of a histology image (a 40x scan is ~0.25, a 600-px thumbnail of a
#: 6.5 mm array ~11); estimates outside come from broken metadata or coordinates.
MPP_PLAUSIBLE_RANGE = (0.01, 50.0)

# priority when several estimates exist: the user knows best, then geometry the platform
# guarantees, then image metadata (often a scanner default or lost on conversion)
_PRIORITY = (
    "user",
    "hest_metadata",
    "scalefactors",
    "xenium_alignment",
    "spot_pitch",
    "tiff_metadata",
    # the tags behind tiff_metadata, as stalign.im.open_image names them
    "ome",
    "aperio",
    "tiff_resolution",
    "openslide",
)


class MppMismatchWarning(UserWarning):
    """Two µm/px estimates of the same image differ by more than 10 %."""


def reconcile_mpp(
    estimates: dict[str, float | None],
    *,
    context: str,
    tolerance: float = MPP_TOLERANCE,
    prefer: Sequence[str] = (),
) -> tuple[float | None, str]:
    """Choose the µm/px of an image from several estimates and warn on disagreement.

    Parameters
    ----------
    estimates
        Source name → µm/px (``None`` entries are ignored). Known sources, in priority
        order: ``user``, ``hest_metadata``, ``scalefactors``, ``xenium_alignment``,
        ``spot_pitch``, ``tiff_metadata`` (then the TIFF tags it comes from:
        ``ome``, ``aperio``, ``tiff_resolution``, ``openslide``); unknown sources
        rank last.
    context
        What is being read (named in the warning), e.g. the sample path.
    tolerance
        Relative difference (to the chosen value) above which a
        [`MppMismatchWarning`][stalign.io.MppMismatchWarning] is emitted.
    prefer
        Sources ranked ahead of the order above, first one first (e.g. the
        already reconciled µm/px of an AnnData over its image's tags).

    Returns
    -------
    tuple[float | None, str]
        ``(mpp, source)``; ``(None, "unknown")`` when no estimate exists.

    Raises
    ------
    ValueError
        When an estimate is not a positive finite number.
    """
    valid: dict[str, float] = {}
    for src, value in estimates.items():
        if value is None:
            continue
        v = float(value)
        if not (v > 0 and v < float("inf")):
            msg = f"{context}: µm/px from {src} must be a positive number, got {value!r}"
            raise ValueError(msg)
        valid[src] = v
    if not valid:
        return None, "unknown"
    ranking = [*prefer, *_PRIORITY]
    order = sorted(valid, key=lambda s: ranking.index(s) if s in ranking else len(ranking))
    chosen = order[0]
    mpp = valid[chosen]
    for other in order[1:]:
        rel = abs(valid[other] - mpp) / mpp
        if rel > tolerance:
            warnings.warn(
                f"{context}: µm/px estimates disagree by {rel:.0%}: {chosen}={mpp:.4g} vs "
                f"{other}={valid[other]:.4g} µm/px; using {chosen}. Check the image and "
                "pass mpp= explicitly if neither is right.",
                MppMismatchWarning,
                stacklevel=3,
            )
    return mpp, chosen
