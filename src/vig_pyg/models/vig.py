"""The ViG backbone: one class for the isotropic and the pyramid networks.

Layout (the official checkpoint's): ``stem.convs``, ``pos_embed``, ``backbone`` = one flat
sequence of blocks (``backbone.i.0`` Grapher, ``backbone.i.1`` FFN) with the pyramid's
Downsample modules taking their own index in it, and ``prediction`` (the head).

Memory format: the whole network runs channels-last (``[B, C, H, W]`` tensors whose memory
is ``[B, H, W, C]``). Then every node view ``[B*H*W, C]`` the graph code needs is free, and
oneDNN's 1x1 convolutions on channels-last maps are plain GEMMs (about 2.5x faster on CPU
than on NCHW maps). Weights are stored channels-last too; inputs are converted on entry.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ViGConfig
from .downsample import Downsample
from .ffn import FFN
from .grapher import Grapher
from .head import Head
from .stem import Stem


class ViGBlock(nn.Sequential):
    """``0``: Grapher, ``1``: FFN."""

    def __init__(self, grapher: Grapher, ffn: FFN):
        super().__init__(grapher, ffn)


class ViG(nn.Module):
    """Vision GNN. Build it from a :class:`ViGConfig` (or by name with
    :func:`vig_pyg.models.create_model`)."""

    def __init__(self, config: ViGConfig):
        super().__init__()
        cfg = config.validate()
        self.config = cfg
        iso = cfg.kind == "isotropic"
        c0 = cfg.channels[0]
        self.stem = (Stem.isotropic(cfg.in_chans, c0, cfg.stem_stride, cfg.act) if iso
                     else Stem.pyramid(cfg.in_chans, c0, cfg.act))
        grids = cfg.stage_grids()
        self.pos_embed = nn.Parameter(torch.zeros(1, c0, *grids[0]))
        modules: list[nn.Module] = []
        self.feature_info = []
        stage = 0
        for spec in cfg.block_specs():
            if spec.stage != stage:
                self._add_feature_info(stage, len(modules) - 1)
                modules.append(Downsample(cfg.channels[stage], spec.channels))
                stage = spec.stage
            graph, graph_options = cfg.stage_graph(spec.stage)
            grapher = Grapher(
                spec.channels, spec.k, spec.dilation, cfg.conv, cfg.act, spec.reduce_ratio,
                spec.drop_path, grid_size=None if iso else grids[spec.stage],
                stochastic=cfg.stochastic, epsilon=cfg.epsilon, knn_backend=cfg.knn_backend,
                graph=graph, graph_options=graph_options)
            ffn = FFN(spec.channels, 4 * spec.channels, cfg.act, spec.drop_path)
            modules.append(ViGBlock(grapher, ffn))
        self._add_feature_info(stage, len(modules) - 1)
        self.backbone = nn.Sequential(*modules)
        bind_graph_builders(self.backbone, cfg.block_specs())
        self.prediction = Head(cfg.channels[-1], cfg.num_classes, cfg.head_hidden, cfg.act,
                               cfg.dropout)
        self.num_features = cfg.channels[-1]
        self.pretrained_cfg = self.default_cfg = _pretrained_cfg(cfg)
        self.model_init()
        self.to(memory_format=torch.channels_last)

    def _add_feature_info(self, stage: int, index: int) -> None:
        self.feature_info.append(dict(num_chs=self.config.channels[stage],
                                      reduction=self.config.stem_stride * 2 ** stage,
                                      module=f"backbone.{index}"))

    def model_init(self) -> None:
        """Kaiming-normal convolution weights, zero biases (BatchNorm: weight 1, bias 0)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_parameters()

    # ------------------------------------------------------------------ properties
    @property
    def num_classes(self) -> int:
        return self.prediction.num_classes

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the last layer with a fresh one for ``num_classes`` (fine-tuning)."""
        self.prediction.reset(num_classes)
        self.prediction[4].to(memory_format=torch.channels_last)
        self.config.num_classes = num_classes
        self.pretrained_cfg = self.default_cfg = _pretrained_cfg(self.config)

    # ------------------------------------------------------------------ forward
    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != self.config.in_chans:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"expected images [B, {self.config.in_chans}, H, W], got {shape}"
                             + ("; add a batch dimension with x.unsqueeze(0)"
                                if isinstance(x, Tensor) and x.dim() == 3 else ""))
        if not x.is_floating_point():
            raise ValueError(f"expected floating-point images, got {x.dtype}; convert and "
                             f"normalise them first (mean = std = 0.5 for the released weights)")

    def _pos_embed(self, size) -> Tensor:
        pos = self.pos_embed
        if pos.shape[-2:] != tuple(size):
            pos = F.interpolate(pos, size=tuple(size), mode="bicubic", align_corners=False)
        return pos

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """Images ``[B, 3, H, W]`` -> the feature map after every stage (4 for a pyramid
        model, 1 for an isotropic one), channels-last ``[B, C_s, H_s, W_s]`` tensors."""
        self._check_input(x)
        x = self.stem(x.contiguous(memory_format=torch.channels_last))
        x = x + self._pos_embed(x.shape[-2:])
        features = []
        for module in self.backbone:
            if isinstance(module, Downsample):
                features.append(x)
            x = module(x)
        features.append(x)
        return features

    def forward_head(self, features, pre_logits: bool = False) -> Tensor:
        """The last stage's map (or the list from :meth:`forward_features`) -> logits."""
        x = features[-1] if isinstance(features, (list, tuple)) else features
        return self.prediction(x, pre_logits=pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _pretrained_cfg(cfg: ViGConfig) -> dict:
    # What timm's data helpers (resolve_data_config) read; the release's preprocessing.
    return dict(
        num_classes=cfg.num_classes, input_size=(cfg.in_chans, *cfg.img_size),
        pool_size=None, crop_pct=0.95 if cfg.name == "pvig_b" else 0.9,
        interpolation="bicubic", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        first_conv="stem.convs.0", classifier="prediction.4", architecture=cfg.name or None)


def bind_graph_builders(backbone: nn.Sequential, specs) -> None:
    """Tells every block's graph builder where it sits and gives the builders of a stage one
    shared dict; stages whose builders need the stage input (``static_knn``) get hooks that
    hand it over at every forward pass."""
    from ..graph.builders import BlockInfo, attach_stage_hooks

    blocks = [m for m in backbone if isinstance(m, ViGBlock)]
    shared: dict[int, dict] = {}
    first: dict[int, int] = {}
    for spec, block in zip(specs, blocks):
        first.setdefault(spec.stage, spec.index)
        info = BlockInfo(spec.index, spec.index - first[spec.stage], spec.k, spec.dilation,
                         spec.reduce_ratio)
        block[0].graph_builder.bind_block(info, shared.setdefault(spec.stage, {}))
    for stage, start in first.items():
        members = [b for s, b in zip(specs, blocks) if s.stage == stage]
        if any(b[0].graph_builder.needs_stage_input for b in members):
            attach_stage_hooks(members[0], members[-1], shared[stage])

