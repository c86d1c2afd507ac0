"""A compact dense reference of the OFFICIAL ViG semantics, written from docs/architecture.md alone.

Independent of ``vig_pyg``: plain torch, NCHW, functional ops on a state dict in the
official key layout. It mirrors the release's code paths (``[B, C, N, 1]`` node tensors made
``contiguous`` after every reshape, dense pairwise distances ``|x|^2 - 2 x y^T + |y|^2``,
``topk(-dist)``, ``batched_index_select`` gathers into the ``[B, C, N, k]`` layout,
subtract-then-max, ``cat`` + ``reshape`` interleave), so besides being the numerical
ground truth of the tests it is a fair stand-in for the official code in the benchmarks.

Configs are plain dicts::

    {"kind": "isotropic", "channels": 192, "depth": 12, "k": 9, "conv": "mr",
     "num_classes": 1000, "stem_stride": 16, "img_size": 224}
    {"kind": "pyramid", "channels": [48, 96, 240, 384], "blocks": [2, 2, 6, 2],
     "reduce_ratios": [4, 2, 1, 1], "k": 9, "conv": "mr", "num_classes": 1000, "img_size": 224}

``act`` (default ``"gelu"``) is the release's ``act_layer`` name, applied to every
activation (stem, graph convolutions, FFN, head): ``relu``, ``leakyrelu`` (slope 0.2),
``prelu`` (one slope per layer, a state-dict entry ``<layer>.weight`` of shape [1]),
``gelu``, ``hswish``.

Two extensions of vig_pyg beyond the release, mirrored here: ``stem_stride`` < 16
(isotropic only) for tiny images keeps stride 2 only on the first ``log2(stem_stride)`` of
the four stride-2 stem convolutions; and on node grids too small for a block's ``k * d``
candidates (where the release fails) the dilation becomes ``candidates // k``. Position
tables are resized bicubically to other input sizes (the release does so for
``relative_pos``; ``pos_embed`` likewise here).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from functools import lru_cache

import torch
import torch.nn.functional as F

#: The seven zoo models, straight from the table of docs/architecture.md.
ZOO = {
    "vig_ti": dict(kind="isotropic", channels=192, depth=12),
    "vig_s": dict(kind="isotropic", channels=320, depth=16),
    "vig_b": dict(kind="isotropic", channels=640, depth=16),
    "pvig_ti": dict(kind="pyramid", channels=[48, 96, 240, 384], blocks=[2, 2, 6, 2]),
    "pvig_s": dict(kind="pyramid", channels=[80, 160, 400, 640], blocks=[2, 2, 6, 2]),
    "pvig_m": dict(kind="pyramid", channels=[96, 192, 384, 768], blocks=[2, 2, 16, 2]),
    "pvig_b": dict(kind="pyramid", channels=[128, 256, 512, 1024], blocks=[2, 2, 18, 2]),
}

BN_EPS = 1e-5
BN_MOMENTUM = 0.1


def make_cfg(name: str | None = None, **kw) -> dict:
    cfg = dict(k=9, conv="mr", num_classes=1000, img_size=224, stem_stride=16,
               reduce_ratios=[4, 2, 1, 1], act="gelu")
    if name is not None:
        cfg.update(ZOO[name])
    cfg.update(kw)
    if cfg["kind"] == "pyramid":
        cfg["stem_stride"] = 4
    return cfg


def _hw(size):
    return (size, size) if isinstance(size, int) else tuple(size)


# ----------------------------------------------------------------------------- schedules
def schedule(cfg) -> list[tuple[int, int, int, int]]:
    """(stage, k, dilation, reduce_ratio) of every block, per docs/architecture.md "Schedules"."""
    if cfg["kind"] == "isotropic":
        depth = cfg["depth"]
        ks = [int(v) for v in torch.linspace(cfg["k"], 2 * cfg["k"], depth)]
        max_d = 196 // max(ks)
        return [(0, ks[i], min(i // 4 + 1, max_d), 1) for i in range(depth)]
    out, i = [], 0
    max_d = 49 // cfg["k"]
    for stage, n in enumerate(cfg["blocks"]):
        for _ in range(n):
            out.append((stage, cfg["k"], min(i // 4 + 1, max_d), cfg["reduce_ratios"][stage]))
            i += 1
    return out


def stage_channels(cfg) -> list[int]:
    c = cfg["channels"]
    return [c] if isinstance(c, int) else list(c)


def stem_grid(cfg) -> tuple[int, int]:
    h, w = _hw(cfg["img_size"])
    s = cfg["stem_stride"]
    return h // s, w // s


# ----------------------------------------------------------------------------- positions
def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000 ** omega
    out = pos.reshape(-1, 1).double() * omega.reshape(1, -1)
    return torch.cat([out.sin(), out.cos()], dim=1)


def official_relative_pos(dim: int, grid: int, r: int) -> torch.Tensor:
    """[1, n, n / r^2] float32, as the release builds it (MAE-style numpy sin-cos, float32,
    bicubic resize, negated)."""
    return _official_relative_pos(dim, grid, r).clone()


@lru_cache(maxsize=32)
def _official_relative_pos(dim: int, grid: int, r: int) -> torch.Tensor:
    gh = torch.arange(grid, dtype=torch.float64)
    gw = torch.arange(grid, dtype=torch.float64)
    mesh_w, mesh_h = torch.meshgrid(gw, gh, indexing="xy")  # np.meshgrid(grid_w, grid_h)
    emb = torch.cat([sincos_1d(dim // 2, mesh_w), sincos_1d(dim // 2, mesh_h)], dim=1)
    rel = (2 * emb @ emb.T / emb.shape[1]).float()
    n = grid * grid
    rel = F.interpolate(rel[None, None], size=(n, n // (r * r)), mode="bicubic",
                        align_corners=False)
    return -rel.squeeze(1)


# ----------------------------------------------------------------------------- state dicts
def official_shapes(cfg) -> "OrderedDict[str, tuple]":
    """Every key of the official state dict with its shape."""
    sd = OrderedDict()
    chans = stage_channels(cfg)
    iso = cfg["kind"] == "isotropic"

    def conv(key, cout, cin, ks=1, groups=1):
        sd[f"{key}.weight"] = (cout, cin // groups, ks, ks)
        sd[f"{key}.bias"] = (cout,)

    def bn(key, c):
        for p in ("weight", "bias", "running_mean", "running_var"):
            sd[f"{key}.{p}"] = (c,)
        sd[f"{key}.num_batches_tracked"] = ()

    def act(key):  # only PReLU has a parameter: its one slope
        if cfg.get("act", "gelu") == "prelu":
            sd[f"{key}.weight"] = (1,)

    def basic(key, cout, cin):  # BasicConv: conv (groups 4), BN, act
        conv(key + ".0", cout, cin, groups=4)
        bn(key + ".1", cout)
        act(key + ".2")

    c0 = chans[0]
    gh, gw = stem_grid(cfg)
    sd["pos_embed"] = (1, c0, gh, gw)
    plan = ([3, c0 // 8, c0 // 4, c0 // 2, c0, c0] if iso else [3, c0 // 2, c0, c0])
    for j in range(len(plan) - 1):
        conv(f"stem.convs.{3 * j}", plan[j + 1], plan[j], 3)
        bn(f"stem.convs.{3 * j + 1}", plan[j + 1])
        if j < len(plan) - 2:
            act(f"stem.convs.{3 * j + 2}")
    idx = 0
    grid_h, grid_w = gh, gw
    prev_stage = 0
    for stage, k, d, r in schedule(cfg):
        c = chans[stage]
        if stage != prev_stage:
            conv(f"backbone.{idx}.conv.0", c, chans[stage - 1], 3)
            bn(f"backbone.{idx}.conv.1", c)
            idx += 1
            grid_h, grid_w = grid_h // 2, grid_w // 2
            prev_stage = stage
        p = f"backbone.{idx}.0."
        conv(p + "fc1.0", c, c)
        bn(p + "fc1.1", c)
        g = p + "graph_conv.gconv."
        if cfg["conv"] in ("mr", "edge"):
            basic(g + "nn", 2 * c, 2 * c)
        elif cfg["conv"] == "sage":
            basic(g + "nn1", c, c)
            basic(g + "nn2", 2 * c, 2 * c)
        elif cfg["conv"] == "gin":
            basic(g + "nn", 2 * c, c)
            sd[g + "eps"] = (1,)
        else:
            raise ValueError(cfg["conv"])
        conv(p + "fc2.0", c, 2 * c)
        bn(p + "fc2.1", c)
        if not iso:
            n = grid_h * grid_w
            sd[p + "relative_pos"] = (1, n, n // (r * r))
        q = f"backbone.{idx}.1."
        conv(q + "fc1.0", 4 * c, c)
        bn(q + "fc1.1", 4 * c)
        act(q + "act")
        conv(q + "fc2.0", c, 4 * c)
        bn(q + "fc2.1", c)
        idx += 1
    conv("prediction.0", 1024, chans[-1])
    bn("prediction.1", 1024)
    act("prediction.2")
    conv("prediction.4", cfg["num_classes"], 1024)
    return sd


def random_official_state_dict(cfg, seed: int = 0, dtype=torch.float64) -> "OrderedDict":
    """A random state dict in the official layout: nothing trivially zero or one (random
    biases, BN affine and running statistics, positions); relative_pos is the real table
    (plus a little noise, so a loader that rebuilt it instead of loading it would fail).
    Every value is a float32 number, so loading the dict into a float32 model and converting
    that to float64 reproduces it exactly."""
    g = torch.Generator().manual_seed(seed)
    out = OrderedDict()
    shapes = official_shapes(cfg)
    for key, shape in shapes.items():
        leaf = key.rsplit(".", 1)[-1]
        if key.endswith("relative_pos"):
            n, m = shape[1], shape[2]
            grid = math.isqrt(n)
            noise = 0.01 * torch.randn(shape, generator=g, dtype=dtype)
            if grid * grid == n:
                dim = shapes[key.replace("relative_pos", "fc1.0.weight")][0]
                t = official_relative_pos(dim, grid, math.isqrt(n // m)).to(dtype) + noise
            else:  # non-square grid: the release has no such table
                t = 100 * noise
        elif leaf == "num_batches_tracked":
            t = torch.tensor(int(torch.randint(1, 1000, (1,), generator=g)))
        elif leaf == "running_var":
            t = 0.5 + torch.rand(shape, generator=g, dtype=dtype)
        elif leaf == "running_mean":
            t = 0.2 * torch.randn(shape, generator=g, dtype=dtype)
        elif leaf == "eps":
            t = 0.3 * torch.randn(shape, generator=g, dtype=dtype)
        elif leaf == "weight" and shape == (1,):  # a PReLU slope: near the 0.2 init
            t = 0.2 + 0.1 * torch.randn(shape, generator=g, dtype=dtype)
        elif leaf == "weight" and len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            t = torch.randn(shape, generator=g, dtype=dtype) * math.sqrt(2.0 / fan_in)
            if cfg["conv"] == "gin" and key.endswith("gconv.nn.0.weight"):
                t = t / (2 * cfg["k"])  # gin sums up to 2k neighbours: keep activations tame
        elif leaf == "weight":  # BN affine
            t = 1.0 + 0.2 * torch.randn(shape, generator=g, dtype=dtype)
        else:  # biases, pos_embed
            t = 0.1 * torch.randn(shape, generator=g, dtype=dtype)
        out[key] = t.float().to(dtype) if t.is_floating_point() else t
    return out


# ----------------------------------------------------------------------------- layers
def _conv(sd, key, x, stride=1, padding=0, groups=1):
    return F.conv2d(x, sd[key + ".weight"], sd[key + ".bias"], stride, padding, 1, groups)


def _bn(sd, key, x, training):
    return F.batch_norm(x, sd[key + ".running_mean"], sd[key + ".running_var"],
                        sd[key + ".weight"], sd[key + ".bias"], training, BN_MOMENTUM, BN_EPS)


def _act(sd, key, x, act):
    """The release's ``act_layer(act)`` at state-dict prefix ``key`` (PReLU's slope)."""
    if act == "relu":
        return F.relu(x)
    if act == "leakyrelu":
        return F.leaky_relu(x, 0.2)
    if act == "prelu":
        return F.prelu(x, sd[key + ".weight"])
    if act == "gelu":
        return F.gelu(x)
    if act == "hswish":
        return F.hardswish(x)
    raise ValueError(act)


def _basic(sd, key, x, training, act):
    """BasicConv: 1x1 conv (groups 4) -> BN -> act."""
    x = _conv(sd, key + ".0", x, groups=4)
    return _act(sd, key + ".2", _bn(sd, key + ".1", x, training), act)


def batched_index_select(x, idx):
    """x [B, C, N, 1], idx [B, N', k] -> [B, C, N', k] (the release's gather)."""
    batch_size, num_dims, num_vertices_reduced = x.shape[:3]
    _, num_vertices, k = idx.shape
    idx_base = torch.arange(0, batch_size, device=idx.device).view(-1, 1, 1) * num_vertices_reduced
    idx = (idx + idx_base).contiguous().view(-1)
    x = x.transpose(2, 1)
    feature = x.contiguous().view(batch_size * num_vertices_reduced, -1)[idx, :]
    return feature.view(batch_size, num_vertices, k, num_dims).permute(0, 3, 1, 2).contiguous()


def dense_dilated_knn(x, y, k, d, relative_pos):
    """x [B, C, N, 1], y [B, C, M, 1] or None -> edge_index [2, B, N, k]."""
    with torch.no_grad():
        x = F.normalize(x, p=2.0, dim=1)
        xt = x.transpose(2, 1).squeeze(-1)
        b, n, _ = xt.shape
        if y is None:
            yt = xt
        else:
            yt = F.normalize(y, p=2.0, dim=1).transpose(2, 1).squeeze(-1)
        inner = -2 * torch.matmul(xt, yt.transpose(2, 1))
        x_sq = torch.sum(xt * xt, dim=-1, keepdim=True)
        y_sq = torch.sum(yt * yt, dim=-1, keepdim=True)
        dist = x_sq + inner + y_sq.transpose(2, 1)
        if relative_pos is not None:
            dist += relative_pos
        _, nn_idx = torch.topk(-dist, k=k * d)
        center_idx = torch.arange(0, n, device=x.device).repeat(b, k * d, 1).transpose(2, 1)
        edge_index = torch.stack((nn_idx, center_idx), dim=0)
    return edge_index[:, :, :, ::d]


def graph_conv(sd, key, conv, x, edge_index, y, training, act="gelu"):
    """x [B, C, N, 1] (centres), y [B, C, M, 1] (pooled keys) or None."""
    src = x if y is None else y
    if conv == "mr":
        x_i = batched_index_select(x, edge_index[1])
        x_j = batched_index_select(src, edge_index[0])
        x_j, _ = torch.max(x_j - x_i, -1, keepdim=True)
        b, c, n, _ = x.shape
        x = torch.cat([x.unsqueeze(2), x_j.unsqueeze(2)], dim=2).reshape(b, 2 * c, n, 1)
        return _basic(sd, key + "nn", x, training, act)
    if conv == "edge":
        x_i = batched_index_select(x, edge_index[1])
        x_j = batched_index_select(src, edge_index[0])
        h = _basic(sd, key + "nn", torch.cat([x_i, x_j - x_i], dim=1), training, act)
        return torch.max(h, -1, keepdim=True)[0]
    if conv == "sage":
        x_j = batched_index_select(src, edge_index[0])
        x_j, _ = torch.max(_basic(sd, key + "nn1", x_j, training, act), -1, keepdim=True)
        return _basic(sd, key + "nn2", torch.cat([x, x_j], dim=1), training, act)
    if conv == "gin":
        x_j = batched_index_select(src, edge_index[0])
        x_j = torch.sum(x_j, -1, keepdim=True)
        return _basic(sd, key + "nn", (1 + sd[key + "eps"]) * x + x_j, training, act)
    raise ValueError(conv)


def grapher(sd, p, x, k, d, r, conv, training, act="gelu"):
    shortcut = x
    x = _bn(sd, p + "fc1.1", _conv(sd, p + "fc1.0", x), training)
    b, c, h, w = x.shape
    y = None
    if r > 1:
        y = F.avg_pool2d(x, r, r).reshape(b, c, -1, 1).contiguous()
    rel = sd.get(p + "relative_pos")
    if rel is not None:
        n, m = h * w, (h * w if y is None else y.shape[2])
        if rel.shape[1:] != (n, m):
            rel = F.interpolate(rel.unsqueeze(0), size=(n, m), mode="bicubic",
                                align_corners=False).squeeze(0)
    x = x.reshape(b, c, -1, 1).contiguous()
    m = h * w if y is None else y.shape[2]
    if k * d > m >= k:
        # vig_pyg's extension (the release cannot run there): on grids smaller than the
        # schedule was made for, the largest dilation that fits
        d = m // k
    edge_index = dense_dilated_knn(x, y, k, d, rel)
    x = graph_conv(sd, p + "graph_conv.gconv.", conv, x, edge_index, y, training, act)
    x = x.reshape(b, -1, h, w).contiguous()
    x = _bn(sd, p + "fc2.1", _conv(sd, p + "fc2.0", x), training)
    return x + shortcut


def ffn(sd, p, x, training, act="gelu"):
    shortcut = x
    x = _act(sd, p + "act", _bn(sd, p + "fc1.1", _conv(sd, p + "fc1.0", x), training), act)
    x = _bn(sd, p + "fc2.1", _conv(sd, p + "fc2.0", x), training)
    return x + shortcut


def stem(sd, cfg, x, training):
    iso = cfg["kind"] == "isotropic"
    n_convs = 5 if iso else 3
    if iso:
        n_stride2 = int(math.log2(cfg["stem_stride"]))
        strides = [2 if j < n_stride2 else 1 for j in range(4)] + [1]
    else:
        strides = [2, 2, 1]
    for j in range(n_convs):
        x = _conv(sd, f"stem.convs.{3 * j}", x, stride=strides[j], padding=1)
        x = _bn(sd, f"stem.convs.{3 * j + 1}", x, training)
        if j < n_convs - 1:
            x = _act(sd, f"stem.convs.{3 * j + 2}", x, cfg.get("act", "gelu"))
    return x


def ref_forward_features(sd, x, cfg, training=False) -> list:
    dtype = sd["pos_embed"].dtype
    x = stem(sd, cfg, x.to(dtype), training)
    pos = sd["pos_embed"]
    if pos.shape[-2:] != x.shape[-2:]:
        pos = F.interpolate(pos, size=x.shape[-2:], mode="bicubic", align_corners=False)
    x = x + pos
    feats = []
    idx, prev_stage = 0, 0
    for stage, k, d, r in schedule(cfg):
        if stage != prev_stage:
            feats.append(x)
            p = f"backbone.{idx}.conv."
            x = _bn(sd, p + "1", _conv(sd, p + "0", x, stride=2, padding=1), training)
            idx += 1
            prev_stage = stage
        act = cfg.get("act", "gelu")
        x = grapher(sd, f"backbone.{idx}.0.", x, k, d, r, cfg["conv"], training, act)
        x = ffn(sd, f"backbone.{idx}.1.", x, training, act)
        idx += 1
    feats.append(x)
    return feats


def ref_forward(sd, x, cfg, training=False) -> torch.Tensor:
    """Logits [B, num_classes] of the official network with weights ``sd`` (official keys)."""
    x = ref_forward_features(sd, x, cfg, training)[-1]
    x = F.adaptive_avg_pool2d(x, 1)
    x = _bn(sd, "prediction.1", _conv(sd, "prediction.0", x), training)
    x = _act(sd, "prediction.2", x, cfg.get("act", "gelu"))
    x = _conv(sd, "prediction.4", x)  # dropout (prediction.3) is the identity here
    return x.squeeze(-1).squeeze(-1)
