"""A pyramid ViG as a torchvision detection backbone: stage maps -> FPN -> named maps.

``ViGBackbone(x)`` returns an ``OrderedDict`` ``{"0": P_a, "1": ..., "p6": ..., "p7": ...}``
(or ``"pool"``) of ``out_channels``-wide maps, what torchvision's ``RetinaNet``,
``FasterRCNN`` and ``MaskRCNN`` expect. Stage ``s`` has stride ``4 * 2**s``; inputs are
padded (zeros, bottom and right) to a multiple of 32 so every stage grid is whole and the
pooled kNN keys tile it; the classifier resizes its position terms to the padded size.

Detection conventions (mmdetection's, which the paper used):

* ``frozen_stages = s`` freezes the stem, the position embedding and stages ``0..s``
  (``requires_grad = False``, kept in eval mode); ``-1`` freezes nothing.
* ``norm_eval = True`` keeps every BatchNorm of the ViG in eval mode while the detector
  trains: its running statistics stay those of the ImageNet weights (detection batches are
  a few images, far too few for good batch statistics).
"""
from __future__ import annotations

from collections import OrderedDict

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from ..errors import VigPygError

#: Input sides must be multiples of this (the last stage's stride; the pooled kNN keys of
#: stages 0 and 1, ratios 4 and 2 at strides 4 and 8, tile it too).
SIZE_DIVISIBLE = 32
EXTRAS = ("p6p7", "pool", "none")


class BackboneError(VigPygError):
    """A backbone that cannot be built as asked; the message names the fix."""


def _pyramid_model(name: str, checkpoint, overrides: dict) -> nn.Module:
    """The classifier with the ImageNet (or any classifier) weights loaded strictly, then its
    head dropped (a detector never runs it, and unused parameters upset DDP)."""
    from ..models import ZOO, create_model, list_models, read_checkpoint
    from ..models.checkpoint import load_file

    if name in ZOO and ZOO[name].kind != "pyramid":
        pyramid = [n for n in list_models() if ZOO[n].kind == "pyramid"]
        twin = "p" + name if "p" + name in ZOO else pyramid[0]
        raise BackboneError(f"{name!r} is an isotropic ViG (one stride-16 map, no pyramid for "
                            f"an FPN): use a pyramid model such as {twin!r} ({', '.join(pyramid)})")
    num_classes = 1000
    if checkpoint is not None:  # read the file once; its classifier's size builds a head it fits
        if not isinstance(checkpoint, dict):
            checkpoint = load_file(checkpoint)
        head = read_checkpoint(checkpoint)[0].get("prediction.4.weight")
        num_classes = int(head.shape[0]) if head is not None else num_classes
    model = create_model(name, num_classes=num_classes, checkpoint=checkpoint, **overrides)
    model.prediction = nn.Identity()
    return model


class ViGBackbone(nn.Module):
    """Pyramid ViG stages ``out_indices`` -> ``FeaturePyramidNetwork`` (+ extra levels).

    Args:
        name: a pyramid zoo model (``pvig_ti``, ``pvig_s``, ``pvig_m``, ``pvig_b``).
        out_indices: the stages fed to the FPN (RetinaNet uses ``(1, 2, 3)``: P3-P5).
        frozen_stages: freeze the stem and stages ``0..frozen_stages`` (-1: none).
        norm_eval: keep the ViG's BatchNorms in eval mode during training.
        checkpoint: classifier weights (ours or the official release's) for the ViG.
        fpn_channels: width of every output map (``out_channels``).
        extra: ``"p6p7"`` (RetinaNet: two stride-2 3x3 convs on the last stage),
            ``"pool"`` (Faster/Mask R-CNN: max-pool of the top FPN map) or ``"none"``.
        **overrides: ``create_model`` arguments (``channels``, ``blocks``, ``k``, ...).
    """

    def __init__(self, name: str = "pvig_s", out_indices=(0, 1, 2, 3), frozen_stages: int = -1,
                 norm_eval: bool = True, checkpoint=None, fpn_channels: int = 256,
                 extra: str = "p6p7", **overrides):
        super().__init__()
        if extra not in EXTRAS:
            raise BackboneError(f"extra={extra!r} is not supported: use one of {EXTRAS}")
        self.body = _pyramid_model(name, checkpoint, overrides)
        info = self.body.feature_info
        out_indices = tuple(int(i) for i in out_indices)
        if not out_indices or any(i < 0 or i >= len(info) for i in out_indices) \
                or list(out_indices) != sorted(set(out_indices)):
            raise BackboneError(f"out_indices={list(out_indices)} must be increasing stage "
                                f"indices in 0..{len(info) - 1}")
        if not -1 <= frozen_stages < len(info):
            raise BackboneError(f"frozen_stages={frozen_stages} must be in -1..{len(info) - 1}")
        self.name, self.out_indices = name, out_indices
        self.frozen_stages, self.norm_eval = frozen_stages, norm_eval
        self.strides = [info[i]["reduction"] for i in out_indices]
        in_channels = [info[i]["num_chs"] for i in out_indices]
        self.fpn = FeaturePyramidNetwork(in_channels, fpn_channels,
                                         _extra_block(extra, in_channels[-1], fpn_channels))
        extra_levels = {"p6p7": 2, "pool": 1, "none": 0}[extra]
        self.strides += [self.strides[-1] * 2 ** (j + 1) for j in range(extra_levels)]
        self.out_channels = fpn_channels
        self._freeze()

    # ------------------------------------------------------------------ freezing
    def _frozen_modules(self) -> list[nn.Module]:
        """Stem, then every block up to the last block of stage ``frozen_stages``."""
        if self.frozen_stages < 0:
            return []
        last = int(self.body.feature_info[self.frozen_stages]["module"].split(".")[-1])
        return [self.body.stem] + list(self.body.backbone[:last + 1])

    def _freeze(self) -> None:
        if self.frozen_stages >= 0:
            self.body.pos_embed.requires_grad_(False)
        for module in self._frozen_modules():
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "ViGBackbone":
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        if mode and self.norm_eval:
            for m in self.body.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    # ------------------------------------------------------------------ forward
    def stage_maps(self, x: Tensor) -> list[Tensor]:
        """The classifier's maps after stages ``out_indices`` (timm's
        ``forward_intermediates``, stopping after the last stage asked for), for images
        whose sides are multiples of 32."""
        return self.body.forward_intermediates(x, indices=list(self.out_indices),
                                               stop_early=True, intermediates_only=True)

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % SIZE_DIVISIBLE, -w % SIZE_DIVISIBLE
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        maps = self.stage_maps(x)
        # the FPN's 3x3 convs and upsampling are faster on contiguous NCHW maps
        feats = OrderedDict((str(i), m.contiguous()) for i, m in enumerate(maps))
        return self.fpn(feats)


def _extra_block(extra: str, in_channels: int, out_channels: int):
    if extra == "p6p7":
        # P6 from the last backbone map (mmdetection's add_extra_convs="on_input") when its
        # width differs from the FPN's, else from P5, as torchvision decides
        return LastLevelP6P7(in_channels, out_channels)
    if extra == "pool":
        return LastLevelMaxPool()
    return None


def frozen_parameter_names(backbone: ViGBackbone) -> list[str]:
    """Names of the backbone parameters that do not train (frozen stages, fixed tables)."""
    return [n for n, p in backbone.named_parameters() if not p.requires_grad]


__all__ = ["ViGBackbone", "BackboneError", "SIZE_DIVISIBLE", "frozen_parameter_names"]
