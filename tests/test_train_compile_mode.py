"""train.compile_mode: passed to torch.compile, and refused (one line naming the fix) without
train.compile, unknown, or as reduce-overhead (CUDA graphs) off CUDA. The CUDA runs are in
tests/test_cuda.py."""
from __future__ import annotations

import pytest
import torch

from vig_pyg.train.config import COMPILE_MODES, ConfigError, build_config
from vig_pyg.train.training import fit_run

TINY_RUN = ["model.channels=32", "model.depth=2", "model.stem_stride=8", "model.k=4",
            "data.batch_size=32", "log.progress=false", "train.epochs=1", "train.max_steps=1",
            "sched.warmup_epochs=0", "log.tensorboard=false"]


def one_line(fn, *fragments):
    with pytest.raises(ConfigError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg
    for f in fragments:
        assert f in msg, msg
    return msg


def test_modes_are_torch_compiles():
    """Every mode the config takes is one torch.compile knows."""
    assert set(COMPILE_MODES) <= set(torch._inductor.list_mode_options())


def test_compile_mode_needs_compile():
    one_line(lambda: build_config(None, ["train.compile_mode=max-autotune"]),
             "train.compile_mode=max-autotune", "set train.compile=true or drop "
             "train.compile_mode")
    assert build_config(None, ["train.compile=true", "train.compile_mode=max-autotune"]
                        ).train.compile_mode == "max-autotune"
    assert build_config(None, ["train.compile=true", "train.compile_mode=null"]
                        ).train.compile_mode is None


def test_unknown_compile_mode():
    one_line(lambda: build_config(None, ["train.compile=true", "train.compile_mode=fast"]),
             "train.compile_mode='fast' is not supported", *COMPILE_MODES)


def test_reduce_overhead_needs_cuda():
    one_line(lambda: build_config(None, ["train.compile=true", "train.device=cpu",
                                         "train.compile_mode=reduce-overhead"]),
             "CUDA graphs", "train.device=cuda")


def test_reduce_overhead_on_auto_without_cuda_stops_before_the_run(monkeypatch, tmp_path):
    """train.device=auto is resolved at setup: without CUDA it is the CPU, refused there
    before the run directory is written."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "run"
    one_line(lambda: fit_run(None, TINY_RUN + ["train.compile=true",
                                               "train.compile_mode=reduce-overhead"],
                             output=str(out)),
             "CUDA graphs", "the run is on cpu")
    assert not out.exists()


@pytest.mark.parametrize("mode", [None, "max-autotune-no-cudagraphs"])
def test_trainer_passes_the_mode_to_torch_compile(mode, monkeypatch, tmp_path):
    """torch.compile stood in for by a recorder (compiling is not what is tested here): the
    trainer calls it once, on the training model, with the mode (none: torch's default)."""
    calls = []

    def fake_compile(model, **kwargs):
        calls.append((model, kwargs))
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    extra = [] if mode is None else [f"train.compile_mode={mode}"]
    _, run = fit_run(None, TINY_RUN + ["train.device=cpu", "train.compile=true", *extra],
                     output=str(tmp_path / "run"))
    assert len(calls) == 1 and calls[0][0] is run.model
    assert calls[0][1] == ({} if mode is None else {"mode": mode})
