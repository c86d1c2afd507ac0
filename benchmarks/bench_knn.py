"""kNN edge builder: dense (batched matmul + top-k) vs cluster (torch_cluster) backend.

Prints ms per call (median of repeats) and the ratio, both measured in this run, and the
peak memory of the dense path on a 128x128-node grid with and without chunking. Then the
selection step alone (``vig_pyg.graph.selection``): the compiled selection against
``torch.topk`` on the distance matrices of the same shapes, and the whole dense builder with
either, alternating call by call.

    .venv/bin/python benchmarks/bench_knn.py [--repeats 7]
    .venv/bin/python benchmarks/bench_knn.py --select      # the selection comparison only
    .venv/bin/python benchmarks/bench_knn.py --parts       # distance buffer, norms, normalisation
    .venv/bin/python benchmarks/bench_knn.py --single-pass # distances + selection in one pass
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

import torch

from timing import switched, time_alternately, without
from vig_pyg import fast_paths, native
from vig_pyg.graph import MAX_CHUNK_ELEMENTS, knn_edges
from vig_pyg.graph.selection import smallest_k


def median_ms(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def compare(name, fmap, k, dilation, reduce_ratio, repeats):
    kw = dict(dilation=dilation, reduce_ratio=reduce_ratio)
    # float32 near-ties (gaps below rounding) may swap neighbours; float64 agrees exactly
    same = float((knn_edges(fmap, k, backend="dense", **kw) ==
                  knn_edges(fmap, k, backend="cluster", **kw)).all(0).float().mean())
    dense = median_ms(lambda: knn_edges(fmap, k, backend="dense", **kw), repeats)
    cluster = median_ms(lambda: knn_edges(fmap, k, backend="cluster", **kw), repeats)
    print(f"{name:<44} dense {dense:8.2f} ms   cluster {cluster:8.2f} ms   "
          f"cluster/dense {cluster / dense:5.1f}x   same edges: {same:.2%}")


def peak_rss_child(max_elements, single_pass=False):
    """Peak RSS growth (MiB) of one dense call at 2 x 48 x 128 x 128, in a fresh process,
    by the matmul path (in chunks of ``max_elements`` distances; the child starts with
    ``VIG_PYG_FAST_PATHS=-single_pass``) or the single pass.

    Linux: writing 5 to /proc/self/clear_refs resets the high-water mark (VmHWM) to the
    current RSS, so import-time peaks do not hide the call's own peak."""
    code = (
        "import torch\n"
        "from vig_pyg.graph import knn_edges\n"
        "def status(key):\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith(key): return int(line.split()[1]) / 1024\n"
        "torch.manual_seed(0)\n"
        "x = torch.randn(2, 48, 128, 128)\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"
        "before = status('VmRSS')\n"
        f"knn_edges(x, 9, backend='dense', max_chunk_elements={max_elements})\n"
        "print(status('VmHWM') - before)\n")
    paths = os.environ.get("VIG_PYG_FAST_PATHS", "")
    env = {**os.environ,
           "VIG_PYG_FAST_PATHS": paths if single_pass else f"{paths},-single_pass"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


SHAPES = [  # name, feature map, k, dilation, reduce ratio (vig_ti, pvig_ti stages 1 and 2)
    ("16 x 196 nodes x 192 ch, k=9 d=2 (k*d=18)", (16, 192, 14, 14), 9, 2, 1),
    ("16 x 56x56 nodes x 48 ch, r=4 keys, k=9", (16, 48, 56, 56), 9, 1, 4),
    ("16 x 28x28 nodes x 96 ch, r=2 keys, k=9", (16, 96, 28, 28), 9, 1, 2),
    # vig_ti's last blocks and pvig_ti's last stage: rows shorter than 5 x k*d, where
    # the selection's histogram pass replaces the group-minima bound
    ("16 x 196 nodes x 192 ch, k=15 d=3 (k*d=45)", (16, 192, 14, 14), 15, 3, 1),
    ("16 x 196 nodes x 192 ch, k=18 d=3 (k*d=54)", (16, 192, 14, 14), 18, 3, 1),
    ("16 x 49 nodes x 384 ch, k=18 d=2 (k*d=36)", (16, 384, 7, 7), 18, 2, 1),
]
# the single-pass comparison adds wider maps (vig_b) and detection-size maps, whose many
# keys fit a core's L2 cache or not (knn.SINGLE_PASS_MAX_KEY_FLOATS)
WIDE_SHAPES = [
    ("16 x 196 nodes x 640 ch, k*d=18 (vig_b)", (16, 640, 14, 14), 9, 2, 1),
    ("2 x 100x166 nodes x 96 ch, r=2 keys, k*d=18", (2, 96, 100, 166), 9, 2, 2),
    ("2 x 100x166 nodes x 160 ch, r=2 keys, k*d=18", (2, 160, 100, 166), 9, 2, 2),
]


def _native(on: bool, fn):
    """``fn`` with every compiled kernel on, or off (``fast_paths.NATIVE``)."""
    return without(fn, *(() if on else fast_paths.NATIVE))


def compare_selection(repeats):
    """``smallest_k`` (compiled) vs ``torch.topk`` and the dense builder with each."""
    if not native.available():
        print("native selection unavailable here (no C compiler): nothing to compare")
        return
    print(f"\nselection step, best of {repeats} alternating calls (ms)")
    print(f"{'shape':<44} {'topk':>8} {'native':>8} {'ratio':>6}   "
          f"{'knn topk':>8} {'knn native':>10} {'ratio':>6}")
    for name, shape, k, d, r in SHAPES:
        x = torch.randn(*shape)
        n, m = shape[2] * shape[3], (shape[2] // r) * (shape[3] // r)
        dist = torch.randn(shape[0], n, m)
        kd = k * d
        t = time_alternately({
            "topk": lambda: dist.topk(kd, dim=-1, largest=False, sorted=True),
            "native": lambda: smallest_k(dist, kd),
            "knn topk": _native(False, lambda: knn_edges(x, k, dilation=d, reduce_ratio=r)),
            "knn native": _native(True, lambda: knn_edges(x, k, dilation=d, reduce_ratio=r)),
        }, repeats, time.perf_counter)
        b = {key: 1e3 * min(v) for key, v in t.items()}
        print(f"{name:<44} {b['topk']:8.2f} {b['native']:8.2f} {b['topk'] / b['native']:5.2f}x"
              f"   {b['knn topk']:8.2f} {b['knn native']:10.2f} "
              f"{b['knn topk'] / b['knn native']:5.2f}x")


def compare_parts(repeats):
    """The steps around the selection that ``graph/knn.py`` evaluates differently from
    the obvious code: the distance matmul into a fresh tensor or into the reused buffer,
    ``torch.linalg.vector_norm`` against a sum of squares, and the normalisation by torch
    ops against the compiled pass (``knn._normalize``), on node features taken from
    a channels-last map (what the models pass; channels innermost) and from a
    channels-first one (a plain ``[B, C, H, W]`` tensor)."""
    from vig_pyg.graph import knn

    print(f"\ndistance block, norms and normalisation, best of {repeats} alternating calls "
          f"(ms)")
    print(f"{'shape':<44} {'new tensor':>10} {'reused':>8} {'ratio':>6}   norms, "
          f"vector_norm / sum of squares: channels-last, channels-first;   normalisation "
          f"(rows and |y|^2), torch ops / compiled")
    for name, shape, _, _, r in SHAPES[:3]:
        b, c, h, w = shape
        fmap = torch.randn(shape)
        first = fmap.permute(0, 2, 3, 1).reshape(b, h * w, c)  # channels-first memory
        q = torch.nn.functional.normalize(first.contiguous(), dim=-1)
        y = q[:, :: r * r].contiguous()
        y_sq = (y * y).sum(-1).unsqueeze(1)
        yt = y.transpose(1, 2)
        buf = knn._workspace((b, h * w, y.size(1)), q)
        t = time_alternately({
            "new": lambda: torch.baddbmm(y_sq, q, yt, alpha=-2.0),
            "reused": lambda: torch.baddbmm(y_sq, q, yt, alpha=-2.0, out=buf),
            "vn last": lambda: torch.linalg.vector_norm(q, dim=-1, keepdim=True),
            "sq last": lambda: knn._norms(q),
            "vn first": lambda: torch.linalg.vector_norm(first, dim=-1, keepdim=True),
            "sq first": lambda: knn._norms(first),
            "torch norm": _native(False, lambda: knn._normalize(q, "rows")),
            "native norm": _native(True, lambda: knn._normalize(q, "rows")),
        }, repeats, time.perf_counter)
        m = {key: 1e3 * min(v) for key, v in t.items()}
        print(f"{name:<44} {m['new']:10.2f} {m['reused']:8.2f} {m['new'] / m['reused']:5.2f}x"
              f"   {m['vn last']:.2f} / {m['sq last']:.2f} ms, "
              f"{m['vn first']:.2f} / {m['sq first']:.2f} ms;   "
              f"{m['torch norm']:.2f} / {m['native norm']:.2f} ms")


def compare_single_pass(repeats):
    """The dense builder with its distances and selection in one compiled pass
    (``knn._single_pass_nearest``) against the matmul + selection, on the models' block shapes
    with pvig_ti's relative-position term where it has one, and on wider and larger maps.
    Both run above ``knn.SINGLE_PASS_MAX_KEY_FLOATS`` here too, to show where the bound comes
    from: the last column says which path the builder takes."""
    from vig_pyg.graph import knn

    if not native.available():
        print("native kernels unavailable here (no C compiler): nothing to compare")
        return
    print(f"\ndistances + selection in one pass, best of {repeats} alternating calls (ms); "
          f"the builder takes it while an image's keys (channels x keys padded to 16) are "
          f"at most {knn.SINGLE_PASS_MAX_KEY_FLOATS} floats (a core's L2 cache)")
    print(f"{'shape':<44} {'matmul':>8} {'single':>8} {'ratio':>6}  key floats, taken")
    for name, shape, k, d, r in SHAPES + WIDE_SHAPES:
        x = torch.randn(*shape).contiguous(memory_format=torch.channels_last)
        n, m = shape[2] * shape[3], (shape[2] // r) * (shape[3] // r)
        rel = torch.randn(n, m) * 0.1 if r > 1 else None  # pvig_ti's stages 1-2 have one

        def build():
            knn_edges(x, k, dilation=d, reduce_ratio=r, relative_pos=rel)
        single = switched(knn, "SINGLE_PASS_MAX_KEY_FLOATS", 1 << 62, build)
        with torch.no_grad():
            t = time_alternately({
                "matmul": without(build, "single_pass"),
                "single": single,
            }, repeats if shape[0] > 2 else min(repeats, 3), time.perf_counter)
        b = {key: 1e3 * min(v) for key, v in t.items()}
        floats = shape[1] * -(-m // 16) * 16
        taken = knn._single_pass_library(x, n, m, shape[1], k * d)
        print(f"{name:<44} {b['matmul']:8.2f} {b['single']:8.2f} "
              f"{b['matmul'] / b['single']:5.2f}x  {floats:>9}, "
              f"{'matmul' if taken is None else 'single pass'}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--select", action="store_true", help="only the selection comparison")
    parser.add_argument("--parts", action="store_true",
                        help="only the distance buffer and norm comparisons")
    parser.add_argument("--single-pass", action="store_true",
                        help="only the comparison of distances + selection in one pass")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.select or args.parts or args.single_pass:
        if args.parts:
            compare_parts(args.repeats)
        if args.select:
            compare_selection(args.repeats)
        if args.single_pass:
            compare_single_pass(args.repeats)
        return
    compare("16 x 196 nodes x 192 ch, k=9 d=2 (k*d=18)", torch.randn(16, 192, 14, 14), 9, 2,
            1, args.repeats)
    compare("16 x 196 nodes x 192 ch, k=18 d=1", torch.randn(16, 192, 14, 14), 18, 1, 1,
            args.repeats)
    compare("16 x 56x56 nodes x 48 ch, r=4 keys, k=9", torch.randn(16, 48, 56, 56), 9, 1, 4,
            max(3, args.repeats // 2))
    if not args.skip_memory:
        chunked = peak_rss_child(MAX_CHUNK_ELEMENTS)
        whole = peak_rss_child(2 ** 62)
        single = peak_rss_child(MAX_CHUNK_ELEMENTS, single_pass=True)
        print(f"2 x 128x128 nodes x 48 ch, k=9: peak RSS growth of the matmul path chunked "
              f"({MAX_CHUNK_ELEMENTS} distances/chunk) {chunked:.0f} MiB, "
              f"unchunked {whole:.0f} MiB (full distance block 2 x 16384^2 x 4 B = 2048 MiB); "
              f"single pass {single:.0f} MiB")
    compare_parts(args.repeats)
    compare_selection(args.repeats)
    compare_single_pass(args.repeats)


if __name__ == "__main__":
    main()
