"""The released ``pancreas_ct_dints_segmentation`` weights: file names, md5s and URLs (facts, not code).

Copied from the released bundle's ``large_files.yml`` (bundle versions 0.3.7 - 0.5.x share these files). "Official"
means exactly these digests, compiled into the package; a list that comes with a zip or folder being installed is
never trusted for that.
"""

from __future__ import annotations

DEFAULT_VERSION = "0.5.0"  # the released bundle version `download` installs (its checksums below)

_BASE = "https://developer.download.nvidia.com/assets/Clara/monai/tutorials/model_zoo/model_pancreas_ct_dints_segmentation"

# path inside the bundle -> (md5, url); every official install has these files with exactly these digests.
RELEASED_REQUIRED: dict[str, tuple[str, str]] = {
    "models/search_code_18590.pt": ("2ff53724aa9d80d9025034d36785cdb8", f"{_BASE}_search_code.pt"),
    "models/model.pt": ("ce8531b5143b417f65d5b481f72bc911", f"{_BASE}.pt"),
}
# Released too, but optional in an install; when present it must have this digest.
RELEASED_OPTIONAL: dict[str, tuple[str, str]] = {
    "models/model.ts": ("b42221639099a5548c1a0e27772252ec", f"{_BASE}.ts"),
}
