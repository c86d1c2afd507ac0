"""A study: one YAML file naming a base training config, a grid of overrides and seeds.

    name: aggregators
    base: configs/demo.yaml          # relative to the study file, else to the repository root
    reference: {model.conv: mr}      # the released setting: one value per grid axis
    grid: {model.conv: [mr, edge]}   # several axes: their product
    include:                         # optional configurations beyond the product, one value
      - {model.conv: vihgnn}         # per grid axis (pairs that only run together)
    seeds: [0, 1, 2]                 # -> train.seed
    set: {train.epochs: 10}          # optional overrides common to every run
    sweep: {partition: gpu}          # optional executor settings (also --set sweep.KEY=V)

Runs = (grid product, then ``include``) x seeds, in that order. A run is named after its grid values and seed
(``conv-pyg-GATv2Conv__seed-1``), so the same study always maps to the same directories.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..errors import VigPygError, one_line

STUDY_KEYS = {"name", "base", "reference", "grid", "include", "seeds", "set", "sweep",
              "description"}
SWEEP_KEYS = {"partition", "time", "gpus", "cpus", "mem_gb", "account", "qos", "constraint"}
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))


class StudyError(VigPygError):
    """A problem with a study file or the sweep's arguments."""


def override_text(key: str, value: Any) -> str:
    """``key=value`` as ``--set`` spells it (values as JSON, which YAML reads back)."""
    return f"{key}={value if isinstance(value, str) else json.dumps(value)}"


def slug(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "x"


@dataclass
class RunSpec:
    """One run of a study: its directory name, grid values and the overrides that make it."""
    name: str
    values: dict            # grid axis -> value
    seed: int
    overrides: list         # study.set + grid values + train.seed, as KEY=VALUE


@dataclass
class Study:
    name: str
    path: str
    base: str               # absolute path of the base training config
    grid: dict              # axis -> list of values (file order)
    seeds: list
    reference: dict = field(default_factory=dict)
    common: dict = field(default_factory=dict)
    sweep: dict = field(default_factory=dict)
    include: list = field(default_factory=list)   # configurations beyond the product

    @property
    def axes(self) -> list:
        return list(self.grid)

    def configurations(self) -> list:
        """Every grid point as {axis: value}, axes varying last-fastest, then the
        ``include`` entries that are not grid points already."""
        out = [dict(zip(self.axes, combo)) for combo in itertools.product(*self.grid.values())]
        return out + [dict(c) for c in self.include if c not in out]

    def axis_label(self, axis: str) -> str:
        """The axis's short name (its last dotted part) unless two axes share it."""
        short = axis.rsplit(".", 1)[-1]
        same = [a for a in self.axes if a.rsplit(".", 1)[-1] == short]
        return short if len(same) == 1 else axis

    def config_name(self, values: dict) -> str:
        return "__".join(f"{self.axis_label(a)}-{slug(values[a])}" for a in self.axes)

    def runs(self) -> list:
        out = []
        common = [override_text(k, v) for k, v in self.common.items()]
        for values in self.configurations():
            grid = [override_text(k, v) for k, v in values.items()]
            for seed in self.seeds:
                out.append(RunSpec(f"{self.config_name(values)}__seed-{seed}", values, seed,
                                   common + grid + [f"train.seed={seed}"]))
        return out

    def to_dict(self) -> dict:
        return {"name": self.name, "base": self.base, "reference": self.reference,
                "grid": self.grid, "include": self.include, "seeds": self.seeds, "set": self.common, "sweep": self.sweep}


def _resolve_base(base: Any, study_path: str) -> str:
    if not isinstance(base, str) or not base:
        raise StudyError(f"study '{study_path}': 'base' must name a training config file, "
                         "e.g. base: configs/demo.yaml")
    here = os.path.dirname(os.path.abspath(study_path))
    for root in (here, REPO_ROOT, os.getcwd()):
        candidate = os.path.join(root, os.path.expanduser(base))
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    raise StudyError(f"study '{study_path}': base config '{base}' does not exist (looked next "
                     f"to the study, in {REPO_ROOT} and in the current directory)")


def _check_shape(raw: Any, path: str) -> None:
    if not isinstance(raw, dict):
        raise StudyError(f"study '{path}' must be a YAML mapping with name, base, grid, seeds")
    unknown = sorted(set(raw) - STUDY_KEYS)
    if unknown:
        raise StudyError(f"study '{path}': unknown key '{unknown[0]}'; valid keys are: "
                         + ", ".join(sorted(STUDY_KEYS)))
    grid = raw.get("grid")
    if not isinstance(grid, dict) or not grid:
        raise StudyError(f"study '{path}': the grid is empty; give at least one axis, e.g. "
                         "grid: {model.conv: [mr, edge]}")
    for axis, values in grid.items():
        if not isinstance(values, list) or not values:
            raise StudyError(f"study '{path}': grid axis '{axis}' needs a non-empty list of values")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise StudyError(f"study '{path}': grid axis '{axis}' repeats a value")
    include = raw.get("include") or []
    if not isinstance(include, list) or not all(
            isinstance(c, dict) and set(c) == set(grid) for c in include):
        raise StudyError(f"study '{path}': 'include' must be a list of configurations, each "
                         f"giving one value for every grid axis ({', '.join(grid)})")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in seeds) or len(set(seeds)) != len(seeds):
        raise StudyError(f"study '{path}': seeds must be a non-empty list of distinct integers")
    for key in ("reference", "set", "sweep"):
        if not isinstance(raw.get(key) or {}, dict):
            raise StudyError(f"study '{path}': '{key}' must be a mapping of KEY: VALUE")


def _check_reference(study: Study) -> None:
    for axis, value in study.reference.items():
        if axis not in study.grid:
            raise StudyError(f"study '{study.path}': reference key '{axis}' is not a grid axis "
                             f"({', '.join(study.axes)})")
        if value not in study.grid[axis]:
            raise StudyError(f"study '{study.path}': reference {axis}={value} is not among the "
                             f"grid's values {study.grid[axis]}")
    missing = [a for a in study.axes if a not in study.reference]
    if study.reference and missing:
        raise StudyError(f"study '{study.path}': the reference needs a value for every grid "
                         f"axis; missing {missing[0]}")


def split_sets(items) -> tuple:
    """``--set`` items -> (sweep settings dict, training overrides dict)."""
    sweep, common = {}, {}
    for item in items or ():
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise StudyError(f"--set '{item}' is not KEY=VALUE")
        key = key.strip()
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            raise StudyError(f"--set {key}: cannot read '{text}' ({one_line(exc)})") from None
        if key.startswith("sweep."):
            sweep[key[len("sweep."):]] = value
        else:
            common[key] = value
    return sweep, common


def load_study(path: str, sets=(), seeds=None, only=()) -> Study:
    """Read, check and complete a study; ``sets`` (``--set`` items) override its ``set`` and
    ``sweep`` entries, ``seeds`` its seeds, and ``only`` (``AXIS=VALUE`` items) keeps the
    configurations with those values (:func:`restrict`). Every configuration is built once
    with the training config's own checks (keys, values, model options), so a bad study
    fails here, before any run starts."""
    if not os.path.isfile(path):
        raise StudyError(f"study file '{path}' does not exist")
    try:
        with open(path) as fh:
            raw = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise StudyError(f"study '{path}' is not valid YAML: {one_line(exc)}") from None
    _check_shape(raw, path)
    sweep_sets, common_sets = split_sets(sets)
    study = Study(name=str(raw.get("name") or os.path.splitext(os.path.basename(path))[0]),
                  path=os.path.abspath(path), base=_resolve_base(raw.get("base"), path),
                  grid=dict(raw["grid"]), seeds=list(raw.get("seeds", [0])),
                  include=list(raw.get("include") or []),
                  reference=dict(raw.get("reference") or {}),
                  common={**(raw.get("set") or {}), **common_sets},
                  sweep={**(raw.get("sweep") or {}), **sweep_sets})
    unknown = sorted(set(study.sweep) - SWEEP_KEYS)
    if unknown:
        raise StudyError(f"unknown sweep setting 'sweep.{unknown[0]}'; valid: "
                         + ", ".join(f"sweep.{k}" for k in sorted(SWEEP_KEYS)))
    _check_reference(study)
    if seeds is not None:
        _check_shape({**raw, "seeds": list(seeds)}, path)
        study.seeds = list(seeds)
    study = restrict(study, only)
    validate_runs(study)
    return study


def restrict(study: Study, only=()) -> Study:
    """The study narrowed to the configurations whose grid values match every ``AXIS=VALUE``
    of ``only`` (values read as YAML; several items on one axis keep each); run names are
    unchanged, so a narrowed sweep and the whole one share their run directories. The
    reference must survive: the comparisons are against it."""
    wanted: dict = {}
    for item in only:
        axis, sep, text = item.partition("=")
        if not sep or axis.strip() not in study.grid:
            raise StudyError(f"--only '{item}' must be AXIS=VALUE with AXIS one of the grid's "
                             f"axes ({', '.join(study.axes)})")
        wanted.setdefault(axis.strip(), []).append(yaml.safe_load(text))
    if not wanted:
        return study
    keep = lambda c: all(c[a] in vs for a, vs in wanted.items())  # noqa: E731
    for axis, values in wanted.items():
        missing = [v for v in values if not any(keep(c) and c[axis] == v
                                                for c in study.configurations())]
        if missing:
            raise StudyError(f"--only {axis}={missing[0]}: no configuration of the study has "
                             f"it (values: {study.grid[axis]})")
    if study.reference and not keep(study.reference):
        raise StudyError(f"--only leaves out the reference ({study.reference}): keep its "
                         "values, the table compares every row with it")
    grid = {a: [v for v in vs if a not in wanted or v in wanted[a]] for a, vs in study.grid.items()}
    include = [c for c in study.include if keep(c)]
    return dataclasses.replace(study, grid=grid, include=include)


def validate_runs(study: Study) -> None:
    """Build every configuration's training config (seeds do not change what is checked)."""
    from ..train.config import build_config

    for run in study.runs()[::len(study.seeds)]:
        try:
            build_config(study.base, run.overrides)
        except VigPygError as exc:
            raise StudyError(f"study '{study.path}', run {run.name}: {exc}") from None
