"""Pyramid ViG backbones at detection size (800 x 1333, padded to 800 x 1344): forward
time, peak memory, the kNN share of the time, and the largest tensors the graph builds.

Each model runs in a fresh process (so peak RSS is its own): one 224 x 224 forward as the
baseline measured in the same run, then the 800 x 1333 forward, timed (median of
``--repeats``). Peak memory is the growth of VmHWM over the resident size before the
forward (Linux: writing 5 to /proc/self/clear_refs resets VmHWM). The kNN share is the time
spent inside ``knn_edges`` (distances, relative-position term, top-k). The dense kNN's
distance chunks are recorded to confirm that no full N x M distance matrix is formed, and
the relative-position tables each Grapher resizes for the input are measured: unlike the
distances they are [N, M] tensors at full size.

    .venv/bin/python benchmarks/bench_detection.py [--models pvig_ti pvig_s] [--repeats 2]
    .venv/bin/python benchmarks/bench_detection.py --matmul   # without the kNN's single pass
"""
import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, statistics, sys, time
import torch
import vig_pyg.graph.builders.knn as knn_builder  # the Graphers' kNN builder calls knn_edges here
import vig_pyg.graph.knn as knn
from vig_pyg.detection import ViGBackbone

name, repeats, height, width = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) / 1024

record = {"knn_s": 0.0, "max_chunk": 0, "max_full_nm": 0, "rel_tables": {}}
inner_knn = knn_builder.knn_edges
def timed_knn(x, k, **kw):
    t0 = time.perf_counter()
    out = inner_knn(x, k, **kw)
    record["knn_s"] += time.perf_counter() - t0
    rel = kw.get("relative_pos")
    if rel is not None:
        # one entry per stored tensor: the Graphers of a stage share one resized table
        record["rel_tables"][rel.data_ptr()] = (*rel.shape[-2:], rel.numel() * rel.element_size())
    n = x.shape[2] * x.shape[3]
    keys = kw.get("keys")
    m = n if keys is None else keys.shape[2] * keys.shape[3]
    record["max_full_nm"] = max(record["max_full_nm"], x.shape[0] * n * m)
    return out
knn_builder.knn_edges = timed_knn
if hasattr(knn, "_chunks"):
    inner_chunks = knn._chunks
    def chunks(g, n, m, max_elements):
        img, rows = inner_chunks(g, n, m, max_elements)
        record["max_chunk"] = max(record["max_chunk"], min(img, g) * min(rows, n) * m)
        return img, rows
    knn._chunks = chunks

torch.manual_seed(0)
model = ViGBackbone(name, fpn_channels=256, extra="pool").eval()

def forward_s(h, w, n):
    x = torch.randn(1, 3, h, w)
    times, knn_times = [], []
    for _ in range(n):
        record["knn_s"] = 0.0
        t0 = time.perf_counter()
        with torch.no_grad():
            model(x)
        times.append(time.perf_counter() - t0)
        knn_times.append(record["knn_s"])
    i = times.index(statistics.median(times))
    return times[i], knn_times[i]

base_s, base_knn = forward_s(224, 224, max(3, repeats))
record["max_chunk"] = record["max_full_nm"] = 0
open('/proc/self/clear_refs', 'w').write('5')
rss0 = status('VmRSS')
big_s, big_knn = forward_s(height, width, repeats)
peak = status('VmHWM') - rss0
print(json.dumps(dict(name=name, base_s=base_s, base_knn=base_knn, big_s=big_s,
                      big_knn=big_knn, peak_mib=peak, max_chunk=record["max_chunk"],
                      max_full_nm=record["max_full_nm"],
                      rel_mib=sum(v[2] for v in record["rel_tables"].values()) / 2**20,
                      rel_largest=max(record["rel_tables"].values(), key=lambda v: v[2])[:2],
                      threads=torch.get_num_threads())))
"""


def run_child(name, repeats, h, w, single_pass=True):
    """One model's figures from a fresh process; without ``single_pass`` the child starts
    with the fast path ``single_pass`` off (``VIG_PYG_FAST_PATHS``): the matmul path for
    every block."""
    paths = os.environ.get("VIG_PYG_FAST_PATHS", "")
    env = {**os.environ,
           "VIG_PYG_FAST_PATHS": paths if single_pass else f"{paths},-single_pass"}
    out = subprocess.run([sys.executable, "-c", CHILD, name, str(repeats), str(h), str(w)],
                         capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"{name}: child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["pvig_ti", "pvig_s"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--size", type=int, nargs=2, default=[800, 1333], metavar=("H", "W"))
    parser.add_argument("--matmul", action="store_true",
                        help="the kNN's matmul path everywhere (the fast path single_pass "
                             "off)")
    args = parser.parse_args()
    h, w = args.size
    pixels = (h * w) / (224 * 224)
    print(f"backbone + FPN (256 ch), batch 1, float32, {h} x {w} (padded to a multiple of 32) "
          f"vs 224 x 224; memory = peak RSS growth during the forward")
    for name in args.models:
        r = run_child(name, args.repeats, h, w, single_pass=not args.matmul)
        per_pixel = r["big_s"] / (r["base_s"] * pixels)
        print(f"{name:8s} {h}x{w}: {r['big_s']:.2f} s/img (224 px: {r['base_s'] * 1e3:.0f} ms; "
              f"time per pixel {per_pixel:.2f}x the 224 px one)  kNN share {r['big_knn'] / r['big_s']:.0%}"
              f" (224 px: {r['base_knn'] / r['base_s']:.0%})  peak memory +{r['peak_mib']:.0f} MiB "
              f"[{r['threads']} threads]")
        full = r["max_full_nm"] * 4 / 2**20
        print(f"         largest kNN distance chunk {r['max_chunk'] * 4 / 2**20:.0f} MiB "
              f"(full N x M block would be {full:.0f} MiB); resized relative-position tables "
              f"{r['rel_mib']:.0f} MiB in all, largest {r['rel_largest'][0]} x "
              f"{r['rel_largest'][1]}")


if __name__ == "__main__":
    main()
