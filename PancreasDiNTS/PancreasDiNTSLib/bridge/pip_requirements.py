"""Python requirements of the modules: read from a requirements file and checked against installed distributions
(``importlib.metadata``), never by importing the packages.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def read_requirements(path: str | Path) -> list[str]:
    """Requirement lines of a requirements.txt (comments and blanks dropped)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def missing_requirements(requirements: Iterable[str]) -> list[str]:
    """The requirements not satisfied by installed distributions (name absent or version outside the spec)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    missing = []
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            missing.append(text)
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            missing.append(text)
    return missing


def requirement_installed(requirement: str) -> bool:
    """True when some version of the requirement's distribution is installed (an upgrade may need a restart)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    try:
        metadata.version(Requirement(requirement).name)
    except metadata.PackageNotFoundError:
        return False
    return True
