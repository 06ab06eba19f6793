"""One call for the whole read-out of a case: measurements, lesion location and (optionally) confidence."""

from __future__ import annotations

from typing import Any

import numpy as np

from .location import locate_lesions
from .measure import measure

NOTICE = "Not for clinical use: research software; every number needs a qualified reader's review."


def case_readout(labels: np.ndarray, affine_ras: np.ndarray, probabilities: np.ndarray | None = None,
                 ) -> dict[str, Any]:
    """``measure`` + ``location`` (each lesion component also gets its own ``location``) + ``confidence`` (from
    softmax probabilities (C, X, Y, Z) on the same grid, when given; else null with a reason)."""
    out = measure(labels, affine_ras)
    out["location"] = locate_lesions(labels, affine_ras, out)
    if probabilities is None:
        out["confidence"] = None
        out["confidence_reason"] = "no probabilities given"
    else:
        from .confidence import confidence_summary

        out["confidence"] = confidence_summary(probabilities, labels, affine_ras)
    out["notice"] = NOTICE
    return out
