"""Versions of installed packages, recorded next to what they produced.

A leaf helper (it imports nothing from the project): the store records the packages that
shape its bytes, the score tables those that shape the scores, each with its own list.
"""

from __future__ import annotations

import sys
from importlib import metadata as importlib_metadata


def package_versions(names) -> dict:
    """``{"python": version, name: version or None, ...}``: the running Python's version and
    each named distribution's installed version (None when it is not installed)."""
    out: dict = {"python": sys.version.split()[0]}
    for name in names:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = None
    return out


__all__ = ["package_versions"]
