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

from ..errors import VigPygError
from .checkpointing import checkpoint_block
from .config import ViGConfig
from .downsample import Downsample
from .ffn import FFN
from .grapher import Grapher
from .head import Head
from .stem import Stem
from .zoo import pretrained_cfg


class ViGBlock(nn.Sequential):
    """``0``: Grapher, ``1``: FFN."""

    #: The dict its stage's graph builders share, where they need the stage input
    #: (``static_knn``, set by :func:`bind_graph_builders`); gradient checkpointing hands
    #: the block's rerun the entries its first run saw (:mod:`.checkpointing`).
    stage_state: dict | None = None

    def __init__(self, grapher: Grapher, ffn: FFN):
        super().__init__(grapher, ffn)


class ViG(nn.Module):
    """Vision GNN. Build it from a :class:`ViGConfig` (or by name with
    :func:`vig_pyg.models.create_model`)."""

    #: Blocks recompute their activations in backward (:meth:`set_grad_checkpointing`).
    grad_checkpointing: bool = False

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
                spec.drop_path, grid_size=grids[spec.stage] if cfg.use_relative_pos else None,
                stochastic=cfg.stochastic, epsilon=cfg.epsilon, knn_backend=cfg.knn_backend,
                fc=cfg.grapher_fc, groups=cfg.groups, graph=graph, graph_options=graph_options,
                conv_options=cfg.conv_options)
            ffn = (FFN(spec.channels, 4 * spec.channels, cfg.act, spec.drop_path) if cfg.ffn
                   else nn.Identity())
            modules.append(ViGBlock(grapher, ffn))
        self._add_feature_info(stage, len(modules) - 1)
        self.backbone = nn.Sequential(*modules)
        bind_graph_builders(self.backbone, cfg.block_infos())
        shared: dict = {}  # one cache of resized relative-position tables (Grapher._relative_pos)
        for module in self.backbone.modules():
            if isinstance(module, Grapher):
                module._rel_cache = shared
        self.prediction = Head(cfg.channels[-1], cfg.num_classes, cfg.head_hidden, cfg.act,
                               cfg.dropout)
        self.num_features = cfg.channels[-1]
        self.pretrained_cfg = self.default_cfg = pretrained_cfg(cfg)
        self.model_init()
        self.to(memory_format=torch.channels_last)

    def _add_feature_info(self, stage: int, index: int) -> None:
        # timm's feature_info: one entry per stage, ``module`` its last block
        self.feature_info.append(dict(num_chs=self.config.channels[stage],
                                      reduction=self.config.stem_stride * 2 ** stage,
                                      module=f"backbone.{index}", stage=stage))

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
        return 0 if self.prediction is None else self.prediction.num_classes

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the last layer with a fresh one for ``num_classes`` (fine-tuning);
        ``0`` removes it (the model then returns the head's 1024-d embedding, as in timm)."""
        if self.prediction is None:
            raise VigPygError("this model was pruned to a feature extractor "
                              "(prune_intermediate_layers): it has no head to reset")
        self.prediction.reset(num_classes)
        self.prediction.to(memory_format=torch.channels_last)
        self.config.num_classes = num_classes
        self.pretrained_cfg = self.default_cfg = pretrained_cfg(self.config)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's switch: with ``enable``, each block (Grapher + FFN) keeps only its input
        for the backward pass and runs again there for the rest (training mode with
        gradients on; otherwise the blocks run as usual). Gradients, BatchNorm statistics
        and random draws are the plain pass's (:mod:`.checkpointing` says how)."""
        self.grad_checkpointing = bool(enable)

    def _checkpointing(self) -> bool:
        return (self.grad_checkpointing and self.training and torch.is_grad_enabled()
                and not torch.jit.is_scripting())

    def _run_block(self, module: nn.Module, x: Tensor) -> Tensor:
        if isinstance(module, ViGBlock) and self._checkpointing():
            return checkpoint_block(module, x)
        return module(x)

    # ------------------------------------------------------------------ forward
    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != self.config.in_chans:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise VigPygError(f"expected images [B, {self.config.in_chans}, H, W], got {shape}"
                              + ("; add a batch dimension with x.unsqueeze(0)"
                                 if isinstance(x, Tensor) and x.dim() == 3 else ""))
        if not x.is_floating_point():
            raise VigPygError(f"expected floating-point images, got {x.dtype}; convert and "
                              f"normalise them first (mean = std = 0.5 for the released "
                              f"weights)")

    def _pos_embed(self, size) -> Tensor:
        pos = self.pos_embed
        if pos.shape[-2:] != tuple(size):
            pos = F.interpolate(pos, size=tuple(size), mode="bicubic", align_corners=False)
        return pos

    def _embed(self, x: Tensor) -> Tensor:
        """Images -> the first node grid: stem + position embedding (channels-last)."""
        self._check_input(x)
        x = self.stem(x.contiguous(memory_format=torch.channels_last))
        return x + self._pos_embed(x.shape[-2:])

    def _stage_ends(self) -> list[int]:
        """Index in :attr:`backbone` of every stage's last block."""
        return [int(fi["module"].rsplit(".", 1)[1]) for fi in self.feature_info]

    def _empty_maps(self, x: Tensor) -> list[Tensor]:
        """A batch of zero images gives zero-batch maps of the right shapes: the graph code
        has no graph to build for it, and BatchNorm in training refuses empty batches."""
        grids = self.config.stage_grids(tuple(x.shape[-2:]))
        return [x.new_zeros(0, fi["num_chs"], *grids[fi["stage"]]).contiguous(
            memory_format=torch.channels_last) for fi in self.feature_info]

    def forward_features(self, x: Tensor) -> Tensor:
        """Images ``[B, 3, H, W]`` -> the last stage's map ``[B, C, H/s, W/s]``
        (channels-last memory), as timm's ``forward_features``. The per-stage maps come
        from :meth:`forward_intermediates`."""
        if isinstance(x, Tensor) and x.dim() == 4 and x.shape[0] == 0:
            self._check_input(x)
            return self._empty_maps(x)[-1]
        x = self._embed(x)
        if not self._checkpointing():
            return self.backbone(x)
        for module in self.backbone:
            x = self._run_block(module, x)
        return x

    def forward_intermediates(self, x: Tensor, indices=None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """timm's feature API: the maps after the stages in ``indices``.

        Args:
            indices: ``None`` (every stage), an int ``n`` (the last ``n`` stages) or a list
                of stage indices (negative ones count from the end); see :attr:`feature_info`
                for their channels and strides.
            norm: accepted for timm's API; ViG has no norm layer between the last stage and
                the head, so it changes nothing.
            stop_early: stop after the last stage asked for (the final map returned is then
                that stage's).
            output_fmt: ``"NCHW"`` (channels-last memory) or ``"NHWC"``.
            intermediates_only: return only the list of maps.

        Returns:
            ``[maps]`` if ``intermediates_only`` else ``(final map, [maps])``.
        """
        del norm
        fmt = str(getattr(output_fmt, "value", output_fmt))
        if fmt not in ("NCHW", "NHWC"):
            raise VigPygError(f"output_fmt must be 'NCHW' or 'NHWC', got {fmt!r}")
        take = stage_indices(len(self.feature_info), indices)
        if isinstance(x, Tensor) and x.dim() == 4 and x.shape[0] == 0:
            self._check_input(x)
            maps = self._empty_maps(x)
            final, maps = maps[-1], [maps[i] for i in take]
        else:
            final, maps = self._run_stages(x, take, stop_early or intermediates_only)
        if fmt == "NHWC":
            maps = [m.permute(0, 2, 3, 1) for m in maps]
        return maps if intermediates_only else (final, maps)

    def _run_stages(self, x: Tensor, take: list[int], stop_early: bool):
        ends = self._stage_ends()
        last = ends[max(take)] if stop_early and take else len(self.backbone) - 1
        x, maps, stage = self._embed(x), [], 0
        for i, module in enumerate(self.backbone[: last + 1]):
            x = self._run_block(module, x)
            if i == ends[stage]:
                if stage in take:
                    maps.append(x)
                stage += 1
        return x, maps

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drops the stages after the last of ``indices`` (and the head with
        ``prune_head``), for a feature extractor that holds only what it runs; returns the
        stage indices kept (timm's API, used by ``features_only=True``)."""
        del prune_norm  # no final norm
        take = stage_indices(len(self.feature_info), indices)
        end = self._stage_ends()[max(take)]
        self.backbone = self.backbone[: end + 1]
        self.feature_info = self.feature_info[: max(take) + 1]
        if prune_head:
            self.prediction = None
        return take

    def forward_head(self, x, pre_logits: bool = False) -> Tensor:
        """The last stage's map (or a list of maps, of which the last is used) -> logits
        ``[B, classes]`` (the 1024-d embedding with ``pre_logits``)."""
        if self.prediction is None:
            raise VigPygError("this model was pruned to a feature extractor "
                              "(prune_intermediate_layers): it has no head")
        x = x[-1] if isinstance(x, (list, tuple)) else x
        if x.shape[0] == 0:
            hidden = self.prediction[0].out_channels  # no classes: the embedding, as timm
            return x.new_zeros(0, hidden if pre_logits else (self.num_classes or hidden))
        return self.prediction(x, pre_logits=pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def stage_indices(num_stages: int, indices=None) -> list[int]:
    """timm's ``indices`` (None: all, int n: the last n, or a list; negatives from the end)
    -> sorted stage indices, checked."""
    if indices is None:
        indices = num_stages
    if isinstance(indices, int) and not isinstance(indices, bool):
        if not 1 <= indices <= num_stages:
            raise VigPygError(f"indices={indices}: this model has {num_stages} stage(s); ask "
                              f"for 1 to {num_stages} of them, or list stage indices")
        return list(range(num_stages - indices, num_stages))
    out = []
    for i in indices:
        j = num_stages + i if isinstance(i, int) and i < 0 else i
        if not isinstance(j, int) or isinstance(j, bool) or not 0 <= j < num_stages:
            raise VigPygError(f"stage index {i!r} out of range: this model has {num_stages} "
                              f"stage(s), indices 0 to {num_stages - 1} (or negative)")
        out.append(j)
    return sorted(set(out))


def bind_graph_builders(backbone: nn.Sequential, infos) -> None:
    """Tells every block's graph builder where it sits (``infos``: the config's
    :meth:`~.config.ViGConfig.block_infos`) and gives the builders of a stage one shared
    dict; stages whose builders need the stage input (``static_knn``) get hooks that hand it
    over at every forward pass."""
    from ..graph.builders import attach_stage_hooks

    blocks = [m for m in backbone if isinstance(m, ViGBlock)]
    shared: dict[int, dict] = {}
    for info, block in zip(infos, blocks):
        block[0].graph_builder.bind_block(info, shared.setdefault(info.stage, {}))
    for stage in shared:
        members = [b for i, b in zip(infos, blocks) if i.stage == stage]
        if any(b[0].graph_builder.needs_stage_input for b in members):
            attach_stage_hooks(members[0], members[-1], shared[stage])
            for block in members:
                block.stage_state = shared[stage]
