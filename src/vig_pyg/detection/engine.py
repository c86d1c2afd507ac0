"""The detection run's public names in one place (kept for ``vig_pyg.detection.engine``
imports). The code lives by job: :mod:`.data` (sets, batches, loaders), :mod:`.setup`
(detector, optimizer, lr schedule), :mod:`.state` (run state, checkpoint), :mod:`.loop`
(steps, evaluation, epoch rows) and :mod:`.training` (the run); records and run state
are the classification package's (:mod:`vig_pyg.train.records`, :mod:`vig_pyg.train.state`).
"""
from .data import build_sets, data_paths, eval_loader
from .training import fit, resolve_config
from .loop import CSV_FIELDS, METRICS, evaluate
from .setup import lr_factor, make_detector
from .state import FORMAT, load_resume

__all__ = ["fit", "evaluate", "make_detector", "build_sets", "lr_factor", "FORMAT",
           "CSV_FIELDS", "METRICS", "data_paths", "eval_loader", "resolve_config",
           "load_resume"]
