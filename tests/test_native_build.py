"""The native room (``vig_pyg.native``): its C files compile without a single warning in
every build the loader makes, its header ``vig_native.h`` declares exactly the functions
the library exports (the C files include it, so their definitions must match it), and the
ctypes bindings are read from that header by a parser that refuses what it cannot read."""
from __future__ import annotations

import ctypes
import os
import platform
import shutil
import subprocess

import pytest

from vig_pyg.native import bindings, build, library

CC = os.environ.get("CC", "cc")
needs_cc = pytest.mark.skipif(shutil.which(CC) is None, reason="no C compiler here")

#: Any warning fails; -Wmissing-prototypes: a function defined without static must be
#: declared first, i.e. in the header (no C file declares another's functions).
WARNINGS = ("-Wall", "-Wextra", "-Werror", "-Wmissing-prototypes")
#: The builds the loader makes (OpenMP where it joins torch's runtime, the portable loops),
#: and, on x86, a processor with AVX2 but no AVX-512 (the other branches of the vector
#: code, which -march=native on an AVX-512 machine never compiles).
BUILDS = {
    "native": build.openmp_flags(),
    "portable": build.PORTABLE,
    "avx2": ("-march=haswell",),
}


def _compile(extra, tmp_path, *sources, syntax_only=False):
    flags = [f for f in build.FLAGS if f != "-shared"]
    cmd = [CC, *flags, *WARNINGS, *extra, "-fsyntax-only" if syntax_only else "-c",
           *map(str, sources)]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)


@needs_cc
@pytest.mark.parametrize("name", list(BUILDS))
def test_every_source_compiles_without_warnings(name, tmp_path):
    """Each C file, and the header on its own, with -Wall -Wextra -Werror (and
    -Wmissing-prototypes) at the build's -O3, whose passes some warnings come from."""
    if name == "avx2" and platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("-march=haswell is an x86 target")
    done = _compile(BUILDS[name], tmp_path, *build.SOURCES)
    assert done.returncode == 0, f"{name} build:\n{done.stderr}"
    header = _compile(BUILDS[name], tmp_path, "-x", "c", build.HEADER, syntax_only=True)
    assert header.returncode == 0, f"the header alone:\n{header.stderr}"


def test_the_room_lists_every_c_file():
    """A C file or header in the package that the build leaves out would be dead code (or a
    function the bindings miss)."""
    here = build.HEADER.parent
    assert sorted(here.glob("*.c")) == sorted(build.SOURCES)
    assert sorted(here.glob("*.h")) == [build.HEADER]


def _exported(path) -> set[str]:
    """The functions a shared library defines, by ``nm``."""
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("no nm here")
    out = subprocess.run([nm, "-D", "--defined-only", str(path)], capture_output=True,
                         text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines()
            if len(line.split()) == 3 and line.split()[1] == "T"}


@needs_cc
@pytest.mark.parametrize("extra", [build.openmp_flags(), build.PORTABLE],
                         ids=["native", "portable"])
def test_header_declares_exactly_what_the_library_exports(extra):
    path = build.build(extra)
    declared = {p.name for p in bindings.prototypes()}
    exported = {name for name in _exported(path) if name.startswith("vig_")}
    assert declared == exported
    lib = library.open_library(path)  # binds every declared function
    for p in bindings.prototypes():
        fn = getattr(lib, p.name)
        assert fn.argtypes == list(p.argtypes) and fn.restype == p.restype, p.name


@needs_cc
def test_a_definition_that_leaves_its_header_fails_to_compile(tmp_path):
    """The C files include the header, so one that changes a signature without the header
    (which the bindings read) does not build: here vig_nearest_split's last argument."""
    for path in (*build.SOURCES, build.HEADER):
        shutil.copy(path, tmp_path / path.name)
    source = tmp_path / "_nearest.c"
    text = source.read_text()
    signature = "int64_t vig_nearest_split(int64_t g, int64_t n, int64_t threads, int64_t t)"
    assert text.count(signature) == 1
    source.write_text(text.replace(signature, signature.replace("int64_t t)", "int32_t t)")))
    assert _compile((), tmp_path, tmp_path / "_select.c", syntax_only=True).returncode == 0
    broken = _compile((), tmp_path, source, syntax_only=True)
    assert broken.returncode != 0 and "vig_nearest_split" in broken.stderr


def test_bindings_of_the_header():
    """A few of the header's signatures, as the bindings give them to ctypes."""
    found = {p.name: p for p in bindings.prototypes()}
    assert found["vig_select_openmp"].argtypes == () and \
        found["vig_select_openmp"].restype is ctypes.c_int
    forward = found["vig_bn_act_forward"]
    assert forward.restype is None and len(forward.argtypes) == 15
    assert forward.argnames[6:9] == ("eps", "act", "slope")
    assert forward.argtypes[6:9] == (ctypes.c_double, ctypes.c_int32, ctypes.c_float)
    assert found["vig_nearest_scratch"].argtypes == (ctypes.c_int64,) * 5
    assert found["vig_nearest_scratch"].restype is ctypes.c_int64
    block = found["vig_select_block"]  # const float* const* d
    assert block.argtypes == (ctypes.c_void_p,) + (ctypes.c_int64,) * 3 + (ctypes.c_void_p,) * 3


def test_parser_reads_its_subset():
    text = """/* a comment; with a semicolon */
#ifndef X
#define X 8
#include <stdint.h>
int64_t f(const float* const* a, int64_t n, float s, double e, int32_t t, uint8_t* r);
void g(void);
const void * h(float const *p, int k);
#endif
"""
    f, g, h = bindings.parse(text)
    assert (f.name, f.restype, f.argnames) == ("f", ctypes.c_int64, ("a", "n", "s", "e", "t", "r"))
    assert f.argtypes == (ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_double,
                          ctypes.c_int32, ctypes.c_void_p)
    assert (g.name, g.restype, g.argtypes) == ("g", None, ())
    assert (h.restype, h.argtypes) == (ctypes.c_void_p, (ctypes.c_void_p, ctypes.c_int))


@pytest.mark.parametrize("text,match", [
    ("typedef int t;", "not a function prototype"),
    ("struct s* f(int a);", "cannot read|unknown type"),
    ("unsigned int f(int a);", "cannot read"),
    ("long f(int a);", "unknown type"),
    ("int f(size_t n);", "unknown type"),
    ("int f(int a[4]);", "cannot read"),
    ("int f(int (*cb)(int));", "not a function prototype"),
    ("int f(int a)", "after the last ';'"),
    ("int f();", "empty argument list"),
    ("int f(int);", "cannot read"),
    ("int f(floatx y);", "unknown type"),
    ("int f(void x);", "argument of type void"),
    ("static int f(int a);", "cannot read"),
    ("int f(int a); // why", "'//' comments"),
    ("int f(int a); /* open", "unterminated comment"),
    ("#define A \\\n  1\nint f(int a);", "continued"),
    ("int f(int a);\nint f(int b);", "declared twice"),
    ("int f(float int);", "type where its name"),
])
def test_parser_refuses_the_rest(text, match):
    with pytest.raises(bindings.HeaderError, match=match):
        bindings.parse(text)
