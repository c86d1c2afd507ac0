"""Shared by the tests of the compiled kernels (vig_pyg.native's library)."""
from __future__ import annotations

import pytest


def spy_native(monkeypatch, *names: str, lib=None, openmp: bool | None = None) -> list:
    """Counts the calls of the compiled library's functions ``names`` (one count each, in
    that order) while handing every call through: the tests' proof of which path ran.
    ``lib`` replaces the library (another build); ``openmp=False`` hides its OpenMP build,
    so that the callers split rows over Python threads. Skips the test where the library
    cannot be built."""
    from vig_pyg.native import library

    lib = lib or library.load()
    if lib is None:
        pytest.skip("the native library could not be built here")
    count = [0] * len(names)

    class Spy:
        def __getattr__(self, name):
            if name == "vig_select_openmp" and openmp is not None:
                return lambda: int(openmp)
            attr = getattr(lib, name)
            if name not in names:
                return attr

            def counted(*args):
                count[names.index(name)] += 1
                return attr(*args)
            return counted

    spy = Spy()
    monkeypatch.setattr(library, "load", lambda: spy)
    return count
