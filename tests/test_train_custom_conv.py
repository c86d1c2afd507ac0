"""A user's own aggregator (examples/custom_conv.py, registered with @register_conv) trains
through the command line, named in model.imports: the path the README documents."""
import json
import os
import subprocess
import sys

from vig_pyg.models import load_model
from vig_pyg.train.imports import import_module

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORT = ["model.channels=32", "model.depth=2", "model.stem_stride=8", "model.k=4",
         "data.batch_size=32", "train.epochs=1", "train.max_steps=3", "log.progress=false",
         "log.tensorboard=false", "train.threads=1", "ema.enabled=false", "train.device=cpu"]


def _train(out, imports, env_extra=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-m", "vig_pyg", "train", "--config", "configs/demo.yaml", "--set",
         *SHORT, f"model.imports=[{imports}]", "model.conv=meanrel", "--output", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_custom_conv_trains_from_the_cli_by_file_path(tmp_path):
    proc = _train(tmp_path / "run", "examples/custom_conv.py")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["conv"] == "meanrel" and summary["global_step"] == 3
    assert summary["config"]["model"]["imports"] == ["examples/custom_conv.py"]
    # the saved model rebuilds with the user's layer once its module is imported
    import_module(os.path.join(REPO, "examples", "custom_conv.py"))
    model = load_model(tmp_path / "run" / "model.pt")
    convs = {type(b[0].graph_conv).__name__ for b in model.backbone}
    assert convs == {"MeanRelativeConv"}


def test_custom_conv_by_module_name_and_unknown_name_errors(tmp_path):
    env = {"PYTHONPATH": os.path.join(REPO, "examples")}
    ok = _train(tmp_path / "a", "custom_conv", env)
    assert ok.returncode == 0, ok.stderr[-2000:]
    bad = _train(tmp_path / "b", "no_such_conv_module")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("vig-pyg train: error: model.imports")
    assert not (tmp_path / "b").exists()
