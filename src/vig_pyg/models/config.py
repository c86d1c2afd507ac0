"""The configuration of one ViG network and the per-block schedules derived from it.

One dataclass describes both kinds. An isotropic model is one stage (``channels``,
``blocks`` of length 1, reduce ratio 1) behind a stride-16 stem; a pyramid model has four
stages behind a stride-4 stem with a stride-2 downsample before every later stage.
The schedules follow the official release (docs/architecture.md, "Schedules"):

* isotropic: ``k_i = int(linspace(k, 2k, depth)[i])``, max dilation ``196 // max(k_i)``;
* pyramid: ``k_i = k``, max dilation ``49 // k``;
* both: ``d_i = min(i // 4 + 1, max dilation)`` and drop path ``linspace(0, rate, depth)[i]``,
  with ``i`` counting blocks across stages.

Ablation switches (defaults = the release): ``dilation`` ``True`` (the rule above), ``False``
(``d_i = 1``) or an int ``m`` (max dilation ``m``); ``grapher_fc``, ``ffn``, ``groups``,
``relative_pos`` (``None``: the kind's default, pyramid yes, isotropic no).

196 and 49 are the node counts of the last stage at 224 px: they are constants of the
architecture (not of the input size), so a model keeps its schedule at any resolution.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Iterable

from ..errors import VigPygError
from ..layers.activation import check_activation

KINDS = ("isotropic", "pyramid")
KNN_BACKENDS = ("auto", "dense", "cluster")
#: Last-stage node count at 224 px, the constant of the max-dilation rule.
_DILATION_NODES = {"isotropic": 196, "pyramid": 49}
_PYRAMID_STEM_STRIDE = 4


class ModelConfigError(VigPygError):
    """An invalid model configuration (a ``ValueError`` whose message names the fix)."""


@dataclass(frozen=True)
class BlockSpec:
    """Everything one Grapher + FFN block needs."""
    index: int           # position among all blocks (across stages)
    stage: int
    channels: int
    k: int
    dilation: int
    reduce_ratio: int
    drop_path: float


@dataclass
class ViGConfig:
    """A ViG network. ``channels``/``blocks``/``reduce_ratios`` have one entry per stage."""
    kind: str = "isotropic"
    channels: tuple = (192,)
    blocks: tuple = (12,)
    reduce_ratios: tuple = (1,)
    stem_stride: int = 16
    k: int = 9
    conv: str = "mr"
    act: str = "gelu"
    num_classes: int = 1000
    in_chans: int = 3
    drop_path_rate: float = 0.0
    dropout: float = 0.0
    stochastic: bool = False
    epsilon: float = 0.2
    img_size: tuple = (224, 224)
    knn_backend: str = "auto"
    head_hidden: int = 1024
    name: str = ""
    grapher_fc: bool = True       # Grapher's fc1/fc2 (False: the graph conv maps C -> C)
    ffn: bool = True              # the FFN of every block
    groups: int = 4               # groups of the graph convolutions' projections
    relative_pos: bool | None = None  # None: pyramid models yes, isotropic no
    dilation: bool | int = True   # True: the release's schedule; False: 1; int: max

    #: Graph builder (``vig_pyg.graph.list_graph_builders()``) and its options: one for the
    #: whole network, or a list with one entry per stage.
    graph: str | list = "knn"
    graph_options: dict | list | None = None
    #: Keyword arguments of the aggregator ``conv`` in every Grapher (``{"sign": "i-j"}``).
    conv_options: dict | None = None

    @property
    def use_relative_pos(self) -> bool:
        return self.kind == "pyramid" if self.relative_pos is None else bool(self.relative_pos)

    def __post_init__(self):
        self.channels = _int_tuple(self.channels, "channels")
        self.blocks = _int_tuple(self.blocks, "blocks")
        self.reduce_ratios = _int_tuple(self.reduce_ratios, "reduce_ratios")
        self.img_size = _img_size(self.img_size)

    # ------------------------------------------------------------------ derived
    def stage_graph(self, stage: int) -> tuple[str, dict]:
        """``(builder name, options)`` of the blocks of ``stage``."""
        name = self.graph[stage] if isinstance(self.graph, (list, tuple)) else self.graph
        opts = self.graph_options
        opts = opts[stage] if isinstance(opts, (list, tuple)) else opts
        return name, dict(opts or {})

    @property
    def num_stages(self) -> int:
        return len(self.channels)

    @property
    def depth(self) -> int:
        return sum(self.blocks)

    @property
    def total_stride(self) -> int:
        """Pixels per node side in the last stage."""
        return self.stem_stride * 2 ** (self.num_stages - 1)

    def stage_grids(self, img_size=None) -> list[tuple[int, int]]:
        """Node grid of every stage for an input of ``img_size`` (default: the config's)."""
        h, w = _img_size(img_size if img_size is not None else self.img_size)
        h, w = _conv_out(h, self.stem_stride), _conv_out(w, self.stem_stride)
        grids = [(h, w)]
        for _ in range(1, self.num_stages):
            h, w = (h + 1) // 2, (w + 1) // 2   # 3x3 conv, stride 2, padding 1
            grids.append((h, w))
        return grids

    def block_specs(self) -> list[BlockSpec]:
        import torch  # the schedules use torch.linspace exactly like the release

        # on the CPU whatever the default device (`with torch.device("meta"):` builds a
        # model without values): the schedules are Python numbers, read back at once
        depth = self.depth
        k_hi = 2 * self.k if self.kind == "isotropic" else self.k
        ks = [int(v.item()) for v in torch.linspace(self.k, k_hi, depth, device="cpu")]
        max_dilation = max(1, _DILATION_NODES[self.kind] // max(ks))
        if self.dilation is False:
            max_dilation = 1
        elif self.dilation is not True:
            max_dilation = int(self.dilation)
        dpr = [v.item() for v in torch.linspace(0, self.drop_path_rate, depth, device="cpu")]
        specs, i = [], 0
        for stage, (c, n, r) in enumerate(zip(self.channels, self.blocks, self.reduce_ratios)):
            for _ in range(n):
                specs.append(BlockSpec(i, stage, c, ks[i], min(i // 4 + 1, max_dilation), r,
                                       dpr[i]))
                i += 1
        return specs

    def block_infos(self) -> list:
        """What each block's graph builder is told (:class:`~vig_pyg.graph.builders.BlockInfo`,
        in block order): its place in the model and its schedule."""
        from ..graph.builders import BlockInfo

        specs = self.block_specs()
        first: dict[int, int] = {}
        out = []
        for spec in specs:
            first.setdefault(spec.stage, spec.index)
            out.append(BlockInfo(spec.index, spec.index - first[spec.stage], spec.k,
                                 spec.dilation, spec.reduce_ratio, spec.stage, self.num_stages,
                                 len(specs), self.kind))
        return out

    def to_dict(self) -> dict:
        """Plain containers only (``torch.load(weights_only=True)`` reads them back)."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "ViGConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ModelConfigError(f"unknown model config fields {unknown}; valid: {sorted(names)}")
        return cls(**d)

    # ------------------------------------------------------------------ checks
    def validate(self) -> "ViGConfig":
        """Raises :class:`ModelConfigError` (one line naming the fix) for anything the
        network cannot be built from; returns ``self``."""
        self._check_structure()
        self._check_widths()
        self._check_numbers()
        self._check_img_size()
        self._check_graph()
        return self

    def _check_structure(self) -> None:
        who = self.name or self.kind
        if self.kind not in KINDS:
            raise ModelConfigError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.knn_backend not in KNN_BACKENDS:
            raise ModelConfigError(f"knn_backend must be one of {KNN_BACKENDS}, got "
                                   f"{self.knn_backend!r}")
        if self.kind == "pyramid" and self.knn_backend == "cluster":
            raise ModelConfigError(
                f"{who}: pyramid models need the dense kNN backend: the cluster backend "
                f"cannot express their pooled keys and resized relative-position tables; "
                f"use knn_backend='auto' or 'dense'")
        s = self.num_stages
        if s < 1 or len(self.blocks) != s or len(self.reduce_ratios) != s:
            raise ModelConfigError(
                f"{who}: channels, blocks and reduce_ratios need one entry per stage, got "
                f"{list(self.channels)}, {list(self.blocks)}, {list(self.reduce_ratios)}")
        if self.kind == "isotropic" and s != 1:
            raise ModelConfigError(f"{who}: an isotropic model has one stage (channels and depth "
                                   f"are single numbers)")
        if any(b < 1 for b in self.blocks):
            raise ModelConfigError(f"{who}: every stage needs at least one block, got "
                                   f"{list(self.blocks)}")
        if any(r < 1 for r in self.reduce_ratios):
            raise ModelConfigError(f"{who}: reduce ratios must be >= 1, got "
                                   f"{list(self.reduce_ratios)}")
        if self.kind == "isotropic":
            if self.stem_stride not in (1, 2, 4, 8, 16):
                raise ModelConfigError(f"{who}: stem_stride must be one of 1, 2, 4, 8, 16 (16 is "
                                       f"the official stem), got {self.stem_stride}")
        elif self.stem_stride != _PYRAMID_STEM_STRIDE:
            raise ModelConfigError(f"{who}: the pyramid stem has stride 4; stem_stride cannot "
                                   f"be changed")

    def _check_widths(self) -> None:
        who = self.name or self.kind
        g = self.groups
        if not isinstance(g, int) or isinstance(g, bool) or g < 1:
            raise ModelConfigError(f"{who}: groups must be a positive int, got {g!r}")
        for c in self.channels:
            if c < g or c % g:
                raise ModelConfigError(f"{who}: channels must be positive multiples of {g} (the "
                                       f"graph convolutions use {g} groups), got "
                                       f"{list(self.channels)}")
        stem_div = 8 if self.kind == "isotropic" else 2
        if self.channels[0] % stem_div:
            raise ModelConfigError(f"{who}: the stem needs channels divisible by {stem_div}, got "
                                   f"{self.channels[0]}")

    def _check_numbers(self) -> None:
        who = self.name or self.kind
        d = self.dilation
        if not (isinstance(d, bool) or (isinstance(d, int) and d >= 1)):
            raise ModelConfigError(f"{who}: dilation must be True (the release's schedule), "
                                   f"False (1 everywhere) or a max dilation >= 1, got {d!r}")
        if self.relative_pos not in (None, True, False):
            raise ModelConfigError(f"{who}: relative_pos must be True, False or None (the "
                                   f"kind's default), got {self.relative_pos!r}")
        if self.k < 1:
            raise ModelConfigError(f"{who}: k must be >= 1, got {self.k}")
        if not 0.0 <= self.drop_path_rate < 1.0 or not 0.0 <= self.dropout < 1.0:
            raise ModelConfigError(f"{who}: drop_path_rate and dropout must be in [0, 1)")
        if not 0.0 <= self.epsilon <= 1.0:
            raise ModelConfigError(f"{who}: epsilon must be in [0, 1], got {self.epsilon}")
        if self.num_classes < 0 or self.in_chans < 1:
            raise ModelConfigError(f"{who}: num_classes must be >= 0 (0: no classifier) and "
                                   f"in_chans >= 1")
        try:
            check_activation(self.act)
        except VigPygError as e:
            raise ModelConfigError(f"{who}: {e}") from None

    def _check_graph(self) -> None:
        from ..graph.builders import GraphBuilderError, check_options, graph_builder
        from .grapher import check_pairing  # late: the Grapher module imports PyG

        who = self.name or self.kind
        for field_name in ("graph", "graph_options"):
            value = getattr(self, field_name)
            if isinstance(value, (list, tuple)) and len(value) != self.num_stages:
                raise ModelConfigError(f"{who}: {field_name} as a list needs one entry per "
                                       f"stage ({self.num_stages}), got {len(value)}")
        for stage in range(self.num_stages):
            opts = self.graph_options
            opts = opts[stage] if isinstance(opts, (list, tuple)) else opts
            if opts is not None and not isinstance(opts, dict):
                raise ModelConfigError(f"{who}: graph_options must be a dict (or a list of one "
                                       f"per stage), got {self.graph_options!r}")
        self._check_conv_options()
        grids = self.stage_grids()
        try:
            for info in self.block_infos():   # bound as in the model: schedules apply
                name, options = self.stage_graph(info.stage)
                check_options(name, options)
                builder = graph_builder(name, **options)
                builder.bind_block(info, {})
                builder.check_grid(*grids[info.stage], info.k)
                check_pairing(self.conv, builder)
        except GraphBuilderError as e:
            raise ModelConfigError(f"{who}: {e}") from None

    def _check_conv_options(self) -> None:
        from ..conv.registry import conv_takes

        who = self.name or self.kind
        opts = self.conv_options
        if opts is None:
            return
        if not isinstance(opts, dict):
            raise ModelConfigError(f"{who}: conv_options must be a dict of the aggregator's "
                                   f"keyword arguments, got {opts!r}")
        try:
            unknown = sorted(key for key in opts if not conv_takes(self.conv, key))
        except ValueError as e:  # an unknown conv name
            raise ModelConfigError(f"{who}: {e}") from None
        if unknown:
            raise ModelConfigError(f"{who}: aggregator {self.conv!r} takes no option(s) "
                                   f"{unknown}; remove them from conv_options")

    def _check_img_size(self) -> None:
        who = self.name or self.kind
        h, w = self.img_size
        step = self.total_stride
        for stage, r in enumerate(self.reduce_ratios):  # pooled grids need multiples of r
            step = math.lcm(step, self.stem_stride * 2 ** stage * r)
        if h % step or w % step or h < step or w < step:
            raise ModelConfigError(
                f"{who}: img_size {h}x{w} is not a positive multiple of {step} (stem stride "
                f"{self.stem_stride}, {self.num_stages} stage(s), reduce ratios "
                f"{list(self.reduce_ratios)}); use e.g. img_size="
                f"{max(step, round(h / step) * step)}")
        grids = self.stage_grids()
        for spec in self.block_specs():
            gh, gw = grids[spec.stage]
            r = spec.reduce_ratio
            keys = (gh // r) * (gw // r)
            if spec.k * spec.dilation > keys:
                fix = ("a smaller stem_stride, "
                       if self.kind == "isotropic" and self.stem_stride > 1 else "")
                raise ModelConfigError(
                    f"{who}: at img_size {h}x{w} block {spec.index} needs k * dilation = "
                    f"{spec.k} * {spec.dilation} = {spec.k * spec.dilation} candidate "
                    f"neighbours but its {gh}x{gw} grid offers {keys}"
                    f"{f' (after {r}x{r} pooling)' if r > 1 else ''}; use a larger img_size, "
                    f"{fix}a smaller k or fewer blocks")


def _conv_out(size: int, stride: int) -> int:
    # a chain of 3x3 / padding-1 convs with stride 2 halves and rounds up each time
    while stride > 1:
        size = (size + 1) // 2
        stride //= 2
    return size


def _int_tuple(v, name) -> tuple:
    if isinstance(v, int):
        return (v,)
    if isinstance(v, Iterable) and not isinstance(v, (str, bytes)):
        out = tuple(v)
        if all(isinstance(x, int) and not isinstance(x, bool) for x in out):
            return out
    raise ModelConfigError(f"{name} must be an int or a list of ints, got {v!r}")


def _img_size(v) -> tuple:
    if isinstance(v, int) and not isinstance(v, bool):
        return (v, v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(x, int) for x in v):
        return (int(v[0]), int(v[1]))
    raise ModelConfigError(f"img_size must be an int or (height, width), got {v!r}")
