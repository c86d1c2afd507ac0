"""The ctypes bindings of the native library, read from its header ``vig_native.h``.

The header is the one statement of every exported function's signature: the C files
include it (so the compiler holds their definitions to it) and :func:`bind` gives each
function of a loaded library the argument and result types its prototype there names.
:func:`parse` reads only the subset of C the header is written in (its opening comment
says which) and raises :class:`HeaderError` on anything else, rather than guess.
"""
from __future__ import annotations

import ctypes
import re
from dataclasses import dataclass
from pathlib import Path

from .build import HEADER

__all__ = ["Prototype", "HeaderError", "parse", "prototypes", "bind"]

#: The scalar types a prototype may name, as ctypes has them (every pointer is a
#: ``c_void_p``: the callers pass addresses, ``None`` for NULL, or ctypes arrays).
SCALARS = {
    "int": ctypes.c_int,
    "int32_t": ctypes.c_int32,
    "int64_t": ctypes.c_int64,
    "uint8_t": ctypes.c_uint8,
    "float": ctypes.c_float,
    "double": ctypes.c_double,
}


class HeaderError(ValueError):
    """The header holds something outside the subset :func:`parse` reads."""


@dataclass(frozen=True)
class Prototype:
    """One function of the header: its name, its result's ctypes type (``None``: void) and
    its arguments' names and ctypes types, in order."""
    name: str
    restype: type | None
    argnames: tuple[str, ...]
    argtypes: tuple[type, ...]


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _declaration(text: str, where: str) -> tuple[str, type | None]:
    """``(name, ctypes type)`` of ``type name``: a base type, pointers, a name, with
    ``const`` anywhere but in the name's place."""
    tokens = re.findall(r"[A-Za-z_][A-Za-z0-9_]*|\S", text)
    words = [t for t in tokens if t != "const"]
    shown = " ".join(text.split())
    if (len(words) < 2 or not _WORD.fullmatch(words[0]) or not _WORD.fullmatch(words[-1])
            or any(t != "*" for t in words[1:-1]) or tokens[-1] == "const"):
        raise HeaderError(f"{where}: cannot read {shown!r} as a type and a name")
    base, name, stars = words[0], words[-1], len(words) - 2
    if name == "void" or name in SCALARS:
        raise HeaderError(f"{where}: {shown!r} has a type where its name should be")
    if stars:
        if base != "void" and base not in SCALARS:
            raise HeaderError(f"{where}: {shown!r} points to an unknown type {base!r}")
        return name, ctypes.c_void_p
    if base == "void":
        return name, None
    if base not in SCALARS:
        raise HeaderError(f"{where}: {shown!r} has an unknown type {base!r} (the header may "
                          f"use {', '.join(['void', *SCALARS])} and pointers to them)")
    return name, SCALARS[base]


def parse(text: str) -> list[Prototype]:
    """The prototypes of a header in the subset the header uses, in order: comments and
    preprocessor lines are skipped, everything else must be ``type name(args);``."""
    if text.count("/*") != text.count("*/"):
        raise HeaderError("an unterminated comment")
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    if "//" in text:
        raise HeaderError("'//' comments are outside the subset: use /* */")
    lines = text.splitlines()
    if any(line.lstrip().startswith("#") and line.rstrip().endswith("\\") for line in lines):
        raise HeaderError("a preprocessor line continued with '\\' is outside the subset")
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    *declarations, rest = text.split(";")
    if rest.strip():
        raise HeaderError(f"text after the last ';': {rest.strip()[:60]!r}")
    found: list[Prototype] = []
    for declaration in declarations:
        m = re.fullmatch(r"\s*([^()]*?)\(([^()]*)\)\s*", declaration)
        if m is None:
            raise HeaderError(f"not a function prototype: {' '.join(declaration.split())!r}")
        name, restype = _declaration(m.group(1), "a prototype")
        where = f"{name}()"
        args = m.group(2).strip()
        if args == "void":
            pairs = []
        elif not args:
            raise HeaderError(f"{where}: an empty argument list (write (void))")
        else:
            pairs = [_declaration(arg, where) for arg in args.split(",")]
        if any(t is None for _, t in pairs):
            raise HeaderError(f"{where}: an argument of type void")
        if any(p.name == name for p in found):
            raise HeaderError(f"{where} declared twice")
        found.append(Prototype(name, restype, tuple(n for n, _ in pairs),
                               tuple(t for _, t in pairs)))
    return found


def prototypes(header: Path = HEADER) -> list[Prototype]:
    """The prototypes of the library's header."""
    return parse(header.read_text())


def bind(lib: ctypes.CDLL, header: Path = HEADER) -> ctypes.CDLL:
    """``lib`` with every function of ``header`` given its argument and result types;
    :class:`AttributeError` where the library lacks one."""
    for p in prototypes(header):
        fn = getattr(lib, p.name)
        fn.argtypes = list(p.argtypes)
        fn.restype = p.restype
    return lib
