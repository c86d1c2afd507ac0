"""The fast-path switches (``vig_pyg.fast_paths``): the registry's contract (names, blocks
that restore and nest, the environment, unknown names) and, for every switch, that it gates
its own path: on, the fast path runs; off, the generic one does, with the same result."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from native_helpers import spy_native
from vig_pyg import fast_paths

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

MODULE = Path(fast_paths.__file__)


def test_names_describe_every_switch_in_one_line():
    names = fast_paths.names()
    assert len(names) >= 10 and all(isinstance(n, str) and n.isidentifier() for n in names)
    for name, what in names.items():
        assert what and "\n" not in what, name
        assert fast_paths.enabled(name), name  # all on by default (no environment here)
    assert set(fast_paths.NATIVE) <= set(names)
    names.clear()  # a copy: the registry keeps its names
    assert fast_paths.names()


def test_disabled_restores_on_exit_and_after_an_exception():
    with fast_paths.disabled("select", "gather"):
        assert not fast_paths.enabled("select") and not fast_paths.enabled("gather")
        assert fast_paths.enabled("normalize")
    assert fast_paths.enabled("select") and fast_paths.enabled("gather")
    with pytest.raises(RuntimeError, match="boom"):
        with fast_paths.disabled("padded"):
            raise RuntimeError("boom")
    assert fast_paths.enabled("padded")
    with fast_paths.disabled():  # no names: nothing changes
        assert all(fast_paths.enabled(n) for n in fast_paths.names())


def test_disabled_as_a_decorator_applies_to_every_call():
    @fast_paths.disabled("fused_conv")
    def state():
        return fast_paths.enabled("fused_conv")

    assert state() is False and state() is False
    assert fast_paths.enabled("fused_conv")


def test_blocks_nest():
    with fast_paths.disabled("select"):
        with fast_paths.disabled("select", "gather"):
            assert not fast_paths.enabled("select") and not fast_paths.enabled("gather")
        assert not fast_paths.enabled("select")  # the outer block still holds it
        assert fast_paths.enabled("gather")
    assert fast_paths.enabled("select")


def test_blocks_of_two_threads_closing_out_of_order():
    """Thread A opens first and closes first while B's block is open: the path stays off
    until B closes too."""
    a_in, b_in, a_out, b_go = (threading.Event() for _ in range(4))
    seen = {}

    def a():
        with fast_paths.disabled("single_pass"):
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def b():
        a_in.wait(10)
        with fast_paths.disabled("single_pass"):
            b_in.set()
            a_out.wait(10)
            seen["after a closed"] = fast_paths.enabled("single_pass")
            b_go.wait(10)

    threads = [threading.Thread(target=f) for f in (a, b)]
    for t in threads:
        t.start()
    a_out.wait(10)
    b_go.set()
    for t in threads:
        t.join(10)
    assert seen == {"after a closed": False}
    assert fast_paths.enabled("single_pass")


def test_unknown_names_raise_one_line_listing_the_known_ones():
    for call in (lambda: fast_paths.enabled("topk"),
                 lambda: fast_paths.disabled("select", "topk")):
        with pytest.raises(ValueError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message and "'topk'" in message
        assert all(name in message for name in fast_paths.names())
    assert fast_paths.enabled("select")  # the failed disabled() changed nothing


def _states(env: dict, script: str | None = None) -> subprocess.CompletedProcess:
    """A fresh interpreter with ``env`` added: the module loaded on its own from its file
    (it needs nothing else of vig_pyg), printing each switch and the vig_pyg modules
    loaded; or ``script``."""
    script = script or (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('fast_paths', {str(MODULE)!r})\n"
        "m = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(m)\n"
        "print(json.dumps({'on': {n: m.enabled(n) for n in m.names()},\n"
        "                  'vig_pyg': [k for k in sys.modules if k.startswith('vig_pyg')]}))\n")
    environ = {k: v for k, v in os.environ.items()
               if k not in ("VIG_PYG_NATIVE", "VIG_PYG_FAST_PATHS")}
    return subprocess.run([sys.executable, "-c", script], env={**environ, **env},
                          capture_output=True, text=True, timeout=300)


def _off(env: dict) -> set:
    out = _states(env)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["vig_pyg"] == []  # no other module of the package was imported
    return {name for name, on in result["on"].items() if not on}


def test_environment_turns_switches_off_at_import():
    assert _off({}) == set()
    assert _off({"VIG_PYG_FAST_PATHS": "-select, -gather,"}) == {"select", "gather"}
    assert _off({"VIG_PYG_NATIVE": "0"}) == set(fast_paths.NATIVE)
    assert _off({"VIG_PYG_NATIVE": "1"}) == set()
    # VIG_PYG_FAST_PATHS after VIG_PYG_NATIVE: one kernel back on, another path off
    assert _off({"VIG_PYG_NATIVE": "0", "VIG_PYG_FAST_PATHS": "+gather,-padded"}) == (
        set(fast_paths.NATIVE) - {"gather"} | {"padded"})
    for value, words in (("select", "must be -name (off) or +name (on)"),
                         ("-topk", "unknown fast path 'topk'")):
        out = _states({"VIG_PYG_FAST_PATHS": value})
        assert out.returncode != 0
        last = out.stderr.strip().splitlines()[-1]
        assert last.startswith("ValueError: VIG_PYG_FAST_PATHS") and words in last
        assert all(name in last for name in fast_paths.names())


def test_native_off_in_the_environment_never_builds_the_library():
    script = ("import torch\n"
              "from vig_pyg import fast_paths\n"
              "from vig_pyg.graph import knn_edges\n"
              "from vig_pyg.native import library\n"
              "knn_edges(torch.randn(2, 8, 5, 5), 4)\n"
              "print(fast_paths.enabled('select'), library._lib)\n")
    out = _states({"VIG_PYG_NATIVE": "0"}, script)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "None"]


def test_no_switch_lives_outside_the_registry():
    from vig_pyg import native
    from vig_pyg.conv.base import GrapherConv
    from vig_pyg.conv.fast_aggregation import FastAggregation
    from vig_pyg.conv.split_edge_conv import SplitEdgeConv
    from vig_pyg.graph import knn
    from vig_pyg.layers import fused, grouped_linear

    for cls in (GrapherConv, FastAggregation, SplitEdgeConv):
        assert not hasattr(cls, "fast_path"), cls
    for module, name in ((native, "enabled"), (fused, "enabled"), (fused, "disabled"),
                         (grouped_linear, "enabled"), (knn, "single_pass"), (knn, "direct")):
        assert not hasattr(module, name), (module.__name__, name)


# ------------------------------------------------------------- each switch gates its path
# Each check runs the operation with its switch on and off and returns (results on, off,
# markers on, off): a marker is a count of the fast path's (or the generic path's) calls.

def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _fixed_graph(seed=0):
    from vig_pyg.graph import knn_edges

    fmap = torch.randn(2, 8, 4, 5, generator=_gen(seed), dtype=torch.float64)
    return fmap.permute(0, 2, 3, 1).reshape(-1, 8), knn_edges(fmap, 4)


def _variable_graph(n=12):
    """Edges grouped by target, degrees 1-4."""
    degrees = [1 + i % 4 for i in range(n)]
    dst = torch.tensor([i for i, d in enumerate(degrees) for _ in range(d)])
    return torch.stack([torch.randint(0, n, (dst.numel(),), generator=_gen(3)), dst])


def _check_select(monkeypatch, run):
    from vig_pyg.graph.selection import smallest_k

    calls = spy_native(monkeypatch, "vig_select_smallest", "vig_select_rows")
    dist = torch.randn(40, 30, generator=_gen())
    got = run(lambda: (smallest_k(dist, 7), sum(calls)))
    assert torch.equal(got[False][0], dist.topk(7, dim=-1, largest=False, sorted=True).indices)
    return got


def _check_normalize(monkeypatch, run):
    from vig_pyg.graph import knn

    calls = spy_native(monkeypatch, "vig_normalize_rows")
    x = torch.randn(2, 30, 12, generator=_gen())
    return run(lambda: (knn._normalize(x, "rows")[0], calls[0]))


def _check_single_pass(monkeypatch, run):
    from vig_pyg.graph import knn_edges

    calls = spy_native(monkeypatch, "vig_nearest_rows", "vig_nearest")
    x = torch.randn(2, 12, 6, 6, generator=_gen())  # not channels-last: the general path
    return run(lambda: (knn_edges(x, 5, dilation=2), sum(calls)))


def _check_knn_direct(monkeypatch, run):
    from vig_pyg.graph import knn, knn_edges

    spy_native(monkeypatch)  # skips where the single pass cannot run
    general = []
    monkeypatch.setattr(knn, "_knn_map", lambda *a, _f=knn._knn_map, **kw: (
        general.append(1), _f(*a, **kw))[1])
    x = torch.randn(2, 12, 6, 6, generator=_gen()).contiguous(memory_format=torch.channels_last)
    got = run(lambda: (knn_edges(x, 5), -len(general)))  # the general path is the marker
    return got


def _check_gather(monkeypatch, run):
    from vig_pyg.conv import functional

    calls = spy_native(monkeypatch, "vig_gather_reduce")
    x, ei = _fixed_graph()
    x = x.float()
    return run(lambda: (functional.gather_max(x, ei[0], 4), calls[0]))


def _check_batch_norm(monkeypatch, run):
    from vig_pyg.layers import batch_norm as B
    from vig_pyg.native import library

    lib = library.load()
    if lib is not None and not (lib.vig_select_openmp() or torch.get_num_threads() == 1):
        pytest.skip("the library runs without torch's OpenMP threads here: plain path")
    calls = spy_native(monkeypatch, "vig_bn_act_forward")
    monkeypatch.setattr(B, "MIN_ELEMENTS", 0)
    z = torch.randn(2, 8, 3, 3, generator=_gen()).contiguous(memory_format=torch.channels_last)

    def step():
        bn = nn.BatchNorm2d(8).train()
        return B.batch_norm_act(bn, z, nn.GELU()), calls[0]
    return run(step)


def _check_fused_conv(monkeypatch, run):
    from vig_pyg.layers.fused import conv_bn_act

    if not torch.backends.mkldnn.is_available():
        pytest.skip("no oneDNN in this torch build")
    conv, bn = nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.1, 0.1, generator=_gen(1))
        bn.running_var.uniform_(0.8, 1.2, generator=_gen(2))
    bn.eval()
    x = torch.randn(2, 8, 5, 5, generator=_gen()).contiguous(memory_format=torch.channels_last)
    plain = []
    conv2d = F.conv2d
    monkeypatch.setattr(F, "conv2d", lambda *a, **kw: (plain.append(1), conv2d(*a, **kw))[1])
    with torch.no_grad():
        return run(lambda: (conv_bn_act(conv, bn, x, nn.GELU()), -len(plain)))


def _products_spy(monkeypatch):
    from vig_pyg.layers import grouped_linear as GL

    calls = []
    apply = GL._GroupedLinear.apply
    monkeypatch.setattr(GL._GroupedLinear, "apply", lambda *a: (calls.append(1), apply(*a))[1])
    return calls


def _check_grouped_linear(monkeypatch, run):
    from vig_pyg.layers import grouped_linear as GL

    calls = _products_spy(monkeypatch)
    x = torch.randn(30, 8, generator=_gen(), requires_grad=True)
    w, b = torch.randn(12, 2, 1, 1, generator=_gen(1)), torch.randn(12, generator=_gen(2))
    return run(lambda: (GL.grouped_linear(x, w, b, 4), len(calls)))


def _propagate_spy(monkeypatch, conv):
    calls = []
    propagate = conv.propagate
    monkeypatch.setattr(conv, "propagate", lambda *a, **kw: (calls.append(1),
                                                             propagate(*a, **kw))[1])
    return calls


def _check_fixed_degree(monkeypatch, run):
    from vig_pyg.conv import MRConv, padded

    conv = MRConv(8, 16).double().eval()
    table = []
    real = padded.padded_propagate
    monkeypatch.setattr(padded, "padded_propagate", lambda *a: (table.append(1), real(*a))[1])
    propagated = _propagate_spy(monkeypatch, conv)
    x, ei = _fixed_graph()
    with torch.no_grad():
        got = run(lambda: (conv(x, ei), -len(table) - len(propagated)))
    assert table  # off: the next path down, the padded table (a full one here)
    return got


def _check_padded(monkeypatch, run):
    from vig_pyg.conv import MRConv

    conv = MRConv(8, 16).double().eval()
    propagated = _propagate_spy(monkeypatch, conv)
    x = torch.randn(12, 8, generator=_gen(), dtype=torch.float64)
    with torch.no_grad():
        return run(lambda: (conv(x, _variable_graph()), -len(propagated)))


def _check_pyg_aggregation(monkeypatch, run):
    from vig_pyg.conv import build_conv

    module = build_conv("pyg:GENConv", 8, 16).double()
    inner = []
    module.conv.aggr_module.inner.register_forward_pre_hook(lambda *_: inner.append(1))
    x, ei = _fixed_graph()
    return run(lambda: (module(x, ei), -len(inner)))


def _check_split_edge_conv(monkeypatch, run):
    from vig_pyg.conv import build_conv

    module = build_conv("pyg:EdgeConv", 8, 16).double()
    edge_rows = []
    module.conv.nn[0].register_forward_hook(lambda m, args, out: edge_rows.append(1))
    x, ei = _fixed_graph()
    return run(lambda: (module(x, ei), -len(edge_rows)))


def _check_cpu_paths(monkeypatch, run):
    from vig_pyg.conv import functional as CF

    calls = []
    apply = CF._GatherMax.apply
    monkeypatch.setattr(CF._GatherMax, "apply", lambda *a: (calls.append(1), apply(*a))[1])
    x = torch.randn(12, 8, generator=_gen(), dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 12, (36,), generator=_gen(1))
    return run(lambda: (CF.gather_max(x, index, 3), len(calls)))


GATES = {
    "select": _check_select, "normalize": _check_normalize,
    "single_pass": _check_single_pass, "knn_direct": _check_knn_direct,
    "gather": _check_gather,
    "batch_norm": _check_batch_norm, "fused_conv": _check_fused_conv,
    "grouped_linear": _check_grouped_linear,
    "fixed_degree": _check_fixed_degree, "padded": _check_padded,
    "pyg_aggregation": _check_pyg_aggregation, "split_edge_conv": _check_split_edge_conv,
    "cpu_paths": _check_cpu_paths,
}


def test_every_switch_has_a_gate_check():
    assert list(GATES) == list(fast_paths.names())


@pytest.mark.parametrize("name", list(GATES))
def test_each_switch_gates_its_path(name, monkeypatch):
    """The marker (a count of the fast path's calls, or minus the generic path's) rises
    with the switch on and not off (or falls off and not on); the results agree. Only
    this switch is off in the second run."""
    def run(step):
        results = {}
        for on in (True, False):
            with fast_paths.disabled(*(() if on else (name,))):
                before = step()[1]
                out, after = step()
            results[on] = (out, after - before)
        return results

    got = GATES[name](monkeypatch, run)
    (fast, moved_on), (generic, moved_off) = got[True], got[False]
    assert (moved_on, moved_off) in ((1, 0), (0, -1)), (moved_on, moved_off)
    fast, generic = (t.detach() if isinstance(t, torch.Tensor) else t for t in (fast, generic))
    if fast.is_floating_point():
        torch.testing.assert_close(fast, generic, rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(fast, generic)
