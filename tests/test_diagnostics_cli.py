"""`vig-pyg inspect` end to end on a small checkpoint, and its one-line errors (exit 2)."""
import csv

import pytest
import torch

from vig_pyg import create_model
from vig_pyg.cli import main
from vig_pyg.models import save_checkpoint

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("vig_ti", num_classes=10, img_size=32, channels=32, depth=3,
                         stem_stride=4)
    return str(save_checkpoint(model, tmp_path_factory.mktemp("m") / "model.pt"))


@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("imgs")
    rng = torch.Generator().manual_seed(0)
    for name in ("a", "b"):
        pixels = torch.randint(0, 255, (40, 48, 3), generator=rng, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(folder / f"{name}.png")
    return folder


def test_inspect_writes_pictures_and_table(ckpt, pngs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["inspect", "--checkpoint", ckpt, "--compare", ckpt, "--images", str(pngs),
                 "--blocks", "0", "2", "--centres", "1,1", "6,2", "--output", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    for model in ("vig_ti-mr", "vig_ti-mr-1"):
        for img in ("a", "b"):
            assert f"overlay_{model}_{img}.png" in names and f"indegree_{model}_{img}.png" in names
    assert {"stats.csv", "summary.txt", "stats_vs_depth.png"} <= set(names)
    rows = list(csv.DictReader(open(out / "stats.csv")))
    assert len(rows) == 2 * 3 * 3          # 2 models x 3 blocks x (all + 2 images)
    assert rows[0]["model"] == "vig_ti-mr" and rows[0]["image"] == "all"
    assert float(rows[0]["self_loops"]) > 0   # each node is its own nearest candidate
    assert "reach_mean" in capsys.readouterr().out


def test_inspect_digits_uses_the_test_split_and_its_classes(ckpt, tmp_path):
    from vig_pyg.datasets import digits_tensor

    out = tmp_path / "digits"
    assert main(["inspect", "--checkpoint", ckpt, "--images", "digits", "--blocks", "0",
                 "--output", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "stats.csv")))
    per_image = [r for r in rows if r["image"] != "all" and r["block"] == "0"]
    assert len(per_image) == len(digits_tensor(train=False)[1]) == 360
    # classes label the ink patches: homophily is a share, present for every image
    assert all(0.0 <= float(r["homophily"]) <= 1.0 for r in per_image)


@pytest.mark.parametrize("extra, message", [
    (["--images", "NOT_AN_IMAGE"], "is not an image"),
    (["--images", "EMPTY"], "holds no images"),
    (["--blocks", "3"], "block 3 is out of range"),
    (["--centres", "8,0"], "outside the 8x8"),
    (["--model", "pvig_ti"], "is a vig_ti, not a pvig_ti"),
])
def test_bad_input_is_one_line_and_exit_2(ckpt, pngs, tmp_path, capsys, extra, message):
    bad = tmp_path / "bad.png"
    bad.write_text("hello")
    (tmp_path / "empty").mkdir()
    extra = [{"NOT_AN_IMAGE": str(bad), "EMPTY": str(tmp_path / "empty")}.get(e, e)
             for e in extra]
    if "--images" not in extra:
        extra += ["--images", str(pngs)]
    assert main(["inspect", "--checkpoint", ckpt, "--output", str(tmp_path / "o")] + extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vig-pyg inspect: error: ") and message in err
    assert len(err.splitlines()) == 1


def test_release_file_of_another_model(tmp_path, capsys):
    torch.manual_seed(0)
    state = create_model("vig_ti", num_classes=10, img_size=32, channels=32, depth=3,
                         stem_stride=4).state_dict()
    path = tmp_path / "release.pth"
    torch.save({"state_dict": state}, path)
    assert main(["inspect", "--checkpoint", str(path), "--model", "pvig_ti",
                 "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not fit pvig_ti" in err and len(err.splitlines()) == 1


def test_inspect_run_on_tensors_with_classes(ckpt, tmp_path):
    from vig_pyg.diagnostics import inspect_run
    from vig_pyg.diagnostics.stats import foreground_mask, homophily

    # two "digits": a bright square on black, at 32 px (the demo's input)
    pixels = torch.zeros(2, 3, 32, 32)
    pixels[0, :, 4:16, 4:16] = 1.0
    pixels[1, :, 12:28, 8:20] = 1.0
    classes = torch.tensor([3, 7])
    result = inspect_run(ckpt, tmp_path / "o", images=pixels, classes=classes, max_pictures=1)
    rows = [r for r in result["rows"] if r["image"] == "all"]
    assert [r["block"] for r in rows] == [0, 1, 2]
    assert all(0 <= r["homophily"] <= 1 for r in rows)
    # the column is the homophily of the captured graph on the foreground mask
    from vig_pyg.diagnostics import capture
    from vig_pyg.diagnostics.images import normalise
    from vig_pyg.models import load_model

    blocks = capture(load_model(ckpt), normalise(pixels)).blocks
    mask = foreground_mask(pixels, classes)
    assert [r["homophily"] for r in rows] == [homophily(b, mask) for b in blocks]
    names = {p.rsplit("/", 1)[-1] for p in result["files"]}
    assert "overlay_vig_ti-mr_img0.png" in names and "overlay_vig_ti-mr_img1.png" not in names


def test_inspect_draws_a_hypergraph_as_the_members_of_a_centres_hyperedges(pngs, tmp_path):
    from vig_pyg.diagnostics import capture
    from vig_pyg.diagnostics.plots import neighbours_of

    torch.manual_seed(0)
    model = create_model("vig_ti", num_classes=10, img_size=32, channels=32, depth=2,
                         stem_stride=4, graph="hypergraph_fcm", graph_options={"hyperedges": 6},
                         conv="vihgnn")
    path = str(save_checkpoint(model, tmp_path / "hyper.pt"))
    out = tmp_path / "out"
    assert main(["inspect", "--checkpoint", path, "--images", str(pngs), "--output",
                 str(out)]) == 0
    assert {"overlay_vig_ti-vihgnn_a.png", "stats.csv"} <= {p.name for p in out.iterdir()}
    rows = [r for r in csv.DictReader(open(out / "stats.csv")) if r["image"] == "all"]
    assert len(rows) == 2 and all(float(r["hyperedge_size"]) >= 1 for r in rows)
    assert all(float(r["hyperedges_per_node"]) >= 1 for r in rows)  # every node in one at least
    # what the overlay highlights for a centre: every member of the centre's hyperedges
    block = capture(model, torch.rand(2, 3, 32, 32)).blocks[1]
    node, hyper = block.incidence.tolist()
    for centre in (0, 27, 63):
        mine = {e for p, e in zip(node, hyper) if p == 64 + centre}
        members = sorted({p - 64 for p, e in zip(node, hyper) if e in mine})
        assert neighbours_of(block, 1, divmod(centre, 8)) == members
