"""ViGBackbone: the classifier's own stage maps (same weights), padding, freezing, norm_eval,
weights loading and the one-line errors."""
import pytest
import torch
import torch.nn.functional as F

from vig_pyg.detection import BackboneError, ViGBackbone
from vig_pyg.errors import VigPygError
from vig_pyg.models import create_model, save_checkpoint

# small enough for a test: k=4 lets a 64 px image's last 2x2 grid offer enough neighbours
SMALL = dict(channels=[16, 32, 48, 64], blocks=[1, 1, 2, 1], k=4)


def _classifier_maps(model, x, indices):
    """The classifier's per-stage maps through its public API (timm's forward_intermediates
    where the model has it, else the list forward_features returned before it)."""
    if hasattr(model, "forward_intermediates"):
        return model.forward_intermediates(x, indices=list(indices), intermediates_only=True)
    return [model.forward_features(x)[i] for i in indices]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("pvig_ti", num_classes=7, **SMALL)
    with torch.no_grad():  # non-trivial BN statistics, so eval-mode maps depend on them
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("w") / "pvig_small.pt"
    save_checkpoint(model, path)
    return model.eval(), path


def test_maps_equal_the_classifiers_with_the_same_weights(weights):
    model, path = weights
    bb = ViGBackbone("pvig_ti", out_indices=(0, 1, 2, 3), checkpoint=path, fpn_channels=8,
                     **SMALL).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        got = bb.stage_maps(x)
        ref = _classifier_maps(model, x, (0, 1, 2, 3))
    assert [tuple(m.shape) for m in got] == [(2, 16, 16, 24), (2, 32, 8, 12), (2, 48, 4, 6),
                                             (2, 64, 2, 3)]
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_non_multiple_of_32_input_is_zero_padded(weights):
    model, path = weights
    bb = ViGBackbone("pvig_ti", out_indices=(1, 2, 3), checkpoint=path, fpn_channels=8,
                     extra="p6p7", **SMALL).eval()
    x = torch.randn(1, 3, 50, 70)
    with torch.no_grad():
        out = bb(x)
        # reference: pad by hand to 64 x 96, the classifier's maps, the same FPN
        ref_maps = _classifier_maps(model, F.pad(x, (0, 26, 0, 14)), (1, 2, 3))
        ref = bb.fpn({str(i): m.contiguous() for i, m in enumerate(ref_maps)})
    assert list(out) == ["0", "1", "2", "p6", "p7"]
    assert bb.strides == [8, 16, 32, 64, 128] and bb.out_channels == 8
    for key in out:
        torch.testing.assert_close(out[key], ref[key], rtol=0, atol=0)
    assert out["p6"].shape[-2:] == (1, 2) and out["0"].shape[-2:] == (8, 12)


def test_frozen_stages_get_no_gradient():
    torch.manual_seed(0)
    bb = ViGBackbone("pvig_ti", frozen_stages=1, fpn_channels=8, extra="pool", **SMALL).train()
    out = bb(torch.randn(2, 3, 64, 64))
    sum(v.square().mean() for v in out.values()).backward()
    blocks = bb.body.backbone
    last_frozen = int(bb.body.feature_info[1]["module"].split(".")[-1])
    frozen = list(bb.body.stem.parameters()) + [bb.body.pos_embed] + \
        [p for m in blocks[:last_frozen + 1] for p in m.parameters()]
    trained = [p for m in blocks[last_frozen + 1:] for p in m.parameters() if p.requires_grad]
    assert frozen and trained
    assert all(p.grad is None and not p.requires_grad for p in frozen)
    assert all(p.grad is not None for p in trained)
    assert sum(float(p.grad.abs().sum()) for p in trained) > 0
    assert not bb.body.stem.training and not blocks[0].training  # frozen: eval mode


@pytest.mark.parametrize("norm_eval", [True, False])
def test_norm_eval_keeps_batchnorm_statistics(norm_eval):
    torch.manual_seed(0)
    bb = ViGBackbone("pvig_ti", norm_eval=norm_eval, fpn_channels=8, **SMALL).train()
    bns = [m for m in bb.body.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in bns]
    bb(torch.randn(2, 3, 64, 64) * 3 + 1)
    same = all(torch.equal(b, m.running_mean) for b, m in zip(before, bns))
    assert same == norm_eval
    assert all(m.training != norm_eval for m in bns)


def test_isotropic_name_says_which_pyramid_model_to_use():
    with pytest.raises(BackboneError) as exc:
        ViGBackbone("vig_s")
    msg = str(exc.value)
    assert "\n" not in msg and "isotropic" in msg and "'pvig_s'" in msg


def test_checkpoint_of_another_backbone_is_one_line(weights):
    _, path = weights  # a (narrowed) pvig_ti classifier
    with pytest.raises(VigPygError) as exc:
        ViGBackbone("pvig_s", checkpoint=path, fpn_channels=8)
    msg = str(exc.value)
    assert "\n" not in msg and "pvig_ti" in msg and "pvig_s" in msg


def test_bad_arguments_are_one_line():
    for kwargs in (dict(out_indices=(2, 1)), dict(out_indices=(4,)), dict(frozen_stages=4),
                   dict(extra="fpn6")):
        with pytest.raises(BackboneError) as exc:
            ViGBackbone("pvig_ti", fpn_channels=8, **SMALL, **kwargs)
        assert "\n" not in str(exc.value)
