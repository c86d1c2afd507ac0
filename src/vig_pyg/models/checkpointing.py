"""Gradient checkpointing of one ViG block (what ``ViG.set_grad_checkpointing`` switches on).

A checkpointed block keeps only its input for the backward pass; backward runs the block
again (:func:`torch.utils.checkpoint.checkpoint`, non-reentrant) for the activations its
gradient needs. The rerun must compute what the first run computed and leave behind nothing
the first run did not:

- random draws (drop path, the kNN's stochastic dilation, the random builders' training
  draws): checkpoint restores the CPU generator and the input device's generator for the
  rerun (``preserve_rng_state``), so it draws what the first run drew;
- the graph: rebuilt from the same input, so the same edges (the kNN is deterministic);
- buffers (BatchNorm's ``running_mean``, ``running_var``, ``num_batches_tracked``): the
  rerun would update them a second time, so every buffer of the block is copied before the
  rerun and put back after it;
- a stage's shared state (:attr:`ViGBlock.stage_state`, the stage input and ranking of
  ``static_knn``): when backward reruns a block, the stage's hooks have long dropped it, so
  the rerun gets the entries the block's first run started from (the same objects: a
  shallow copy taken then), and the entries found before the rerun are put back after it.

Under ``torch.compile`` a block without stage state is handed to checkpoint as it is: the
compiler recomputes inside its own graphs, from the saved inputs, and applies the buffer
updates once. A block with stage state keeps the rules above; the Python state they move
is a side effect Dynamo does not trace inside a checkpoint, so the graph breaks there and
the block is checkpointed eagerly.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["checkpoint_block"]


def checkpoint_block(block: nn.Module, x: Tensor) -> Tensor:
    """``block(x)``, its activations recomputed in backward instead of kept."""
    stage = getattr(block, "stage_state", None)
    if stage is None and torch.compiler.is_compiling():
        return checkpoint(block, x, use_reentrant=False)
    started_from = None if stage is None else dict(stage)
    runs = []

    def run(inp: Tensor) -> Tensor:
        if not runs:  # the forward pass
            runs.append(True)
            return block(inp)
        return _rerun(block, inp, stage, started_from)

    return checkpoint(run, x, use_reentrant=False)


def _rerun(block: nn.Module, x: Tensor, stage, started_from) -> Tensor:
    kept = [(buf, buf.clone()) for buf in block.buffers()]
    found = None
    if stage is not None:
        found = dict(stage)
        stage.clear()
        stage.update(started_from)
    try:
        return block(x)
    finally:  # also when checkpoint stops the rerun early, once it has what it needs
        with torch.no_grad():
            for buf, value in kept:
                buf.copy_(value)
        if stage is not None:
            stage.clear()
            stage.update(found)
