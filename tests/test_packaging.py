"""The pins live in requirements.txt; environment.yml must carry the same versions."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"torch": "pytorch", "torch-scatter": "pytorch_scatter",
               "torch-cluster": "pytorch_cluster", "torch-geometric": "pytorch_geometric"}


def read_pins():
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)$", line.strip())
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def test_environment_yml_matches_requirements_pins():
    pins = read_pins()
    assert {"torch", "torchvision", "torch-cluster", "torch-scatter",
            "torch-geometric"} <= set(pins)
    conda = dict(re.findall(r"^\s+- ([A-Za-z0-9_.-]+)=([^=\s]+)$",
                            (ROOT / "environment.yml").read_text(), flags=re.M))
    expected = {CONDA_NAMES.get(name, name): version for name, version in pins.items()}
    missing = {n: v for n, v in expected.items() if conda.get(n) != v}
    assert not missing, f"environment.yml disagrees with requirements.txt on {missing}"


def test_torch_pin_avoids_the_local_cpu_wheel():
    # pip prefers the machine's local 2.13.0+cpu wheel for torch==2.13.0, on which the
    # registry's torchvision cannot load its ops library (DEVELOPERS.md)
    assert read_pins()["torch"] != "2.13.0"


def test_every_compiled_source_ships_with_the_package():
    """The C files vig_pyg compiles on first use, and the header they include and the
    bindings read, must be package data, or an installed (non-editable) copy falls back to
    torch.topk without them."""
    import configparser
    import fnmatch

    from vig_pyg.native import build

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    patterns = cfg["options.package_data"]["vig_pyg"].split()
    package = ROOT / "src" / "vig_pyg"
    for source in (*build.SOURCES, build.HEADER):
        relative = source.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(relative, p) for p in patterns), relative
        assert source.exists(), source
