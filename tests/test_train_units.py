"""Small pieces of the trainer: RNG states as tensors, atomic saves, the thread chooser, the
device rules."""
import os
import random

import numpy as np
import pytest
import torch

from vig_pyg.train import checkpoint as C
from vig_pyg.errors import VigPygError
from vig_pyg.train.threads import ThreadTuner


def test_rng_round_trip_through_weights_only_file(tmp_path):
    random.seed(1); np.random.seed(2); torch.manual_seed(3)
    random.gauss(0, 1); np.random.standard_normal()  # leave cached gaussians behind
    state = C.capture_rng()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    path = tmp_path / "rng.pt"
    C.atomic_save({"rng": state}, str(path))
    expected = (random.random(), random.gauss(0, 1), np.random.rand(), np.random.standard_normal(),
                torch.rand(3))
    random.seed(9); np.random.seed(9); torch.manual_seed(9)
    C.restore_rng(torch.load(path, weights_only=True)["rng"])
    got = (random.random(), random.gauss(0, 1), np.random.rand(), np.random.standard_normal(),
           torch.rand(3))
    assert got[:4] == expected[:4] and torch.equal(got[4], expected[4])


def test_atomic_save_leaves_no_temp_files_and_replaces(tmp_path):
    path = tmp_path / "sub" / "x.pt"
    C.atomic_save({"a": torch.ones(2)}, str(path))
    C.atomic_save({"a": torch.zeros(2)}, str(path))
    assert os.listdir(path.parent) == ["x.pt"]
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.zeros(2))


def test_load_file_errors(tmp_path):
    with pytest.raises(VigPygError, match="does not exist"):
        C.load_file(str(tmp_path / "missing.pt"))
    with pytest.raises(VigPygError, match="is a directory"):
        C.load_file(str(tmp_path))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(VigPygError, match="truncated or corrupt"):
        C.load_file(str(junk))


def _drive(tuner, cost, steps):
    """Run ``steps`` simulated steps where ``cost(n_threads, step)`` is the step time."""
    used = []
    for i in range(steps):
        tuner.before_step()
        used.append(tuner._running)
        tuner.after_step(cost(tuner._running, i))
    return used


def test_thread_tuner_prefers_two_threads_on_a_free_machine():
    before = torch.get_num_threads()
    try:
        used = _drive(ThreadTuner(2), lambda n, i: 1.0 if n == 1 else 0.6, 60)
        assert used[-20:].count(2) >= 18
    finally:
        torch.set_num_threads(before)


def test_thread_tuner_backs_off_when_two_threads_thrash():
    before = torch.get_num_threads()
    try:
        # free at first, then another job arrives and two threads become 10x slower
        used = _drive(ThreadTuner(2), lambda n, i: (0.6 if n == 2 else 1.0) if i < 30
                      else (6.0 if n == 2 else 1.0), 200)
        late = used[60:]
        assert late.count(1) / len(late) > 0.9
    finally:
        torch.set_num_threads(before)


def _device(setting, local_rank=0):
    from vig_pyg.train.config import build_config
    from vig_pyg.train.setup import resolve_device
    return resolve_device(build_config(None, [f"train.device={setting}"]), local_rank)


@pytest.mark.parametrize("gpus", [0, 2])
def test_resolve_device_rules(monkeypatch, gpus):
    """The rules written out: ``auto`` is ``cuda`` where a GPU is visible, ``cuda`` is the
    process's local rank, ``cuda:N`` is GPU N; a GPU that is not there is one error line
    naming the fix. Only ``is_available``/``device_count`` are read, so they stand in for
    a GPU machine here."""
    from vig_pyg.train.config import ConfigError
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    assert _device("cpu", 1) == torch.device("cpu")
    for bad in ("gpu", "cuda:x", "meta"):
        with pytest.raises(ConfigError, match=f"train.device='{bad}' is not a device"):
            _device(bad)
    if gpus == 0:
        assert _device("auto", 1) == torch.device("cpu")
        for want in ("cuda", "cuda:0"):
            with pytest.raises(ConfigError, match="CUDA is not available: use train.device=cpu"):
                _device(want)
        return
    assert _device("auto") == torch.device("cuda", 0)
    assert _device("auto", 1) == _device("cuda", 1) == torch.device("cuda", 1)
    assert _device("cuda:1", 0) == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match=r"process 2 of this node needs GPU 2 but 2 GPU\(s\) "
                       r"are visible: launch at most 2 process\(es\) per node"):
        _device("auto", 2)
    with pytest.raises(ConfigError, match=r"train.device=cuda:2 needs GPU 2 but 2 GPU\(s\)"):
        _device("cuda:2")
