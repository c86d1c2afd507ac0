"""Damaged image files met while loading batches: one clear error, or skipped and counted.

An image folder reads its files with :class:`ImageReader`. A file PIL cannot open or decode
(``OSError``, which covers ``PIL.UnidentifiedImageError`` and "image file is truncated";
``SyntaxError`` and ``ValueError`` from PIL's plugins) raises :class:`BadImageError`, a
one-line :class:`~vig_pyg.errors.ConfigError` naming the file and the fix.

With ``data.skip_bad_images`` the reader raises :class:`SkippedImageError` instead, which
:class:`SkippingView` (the dataset a loader reads) turns into a :class:`Skipped` sample;
:func:`collate` drops those from the batch and lists them in :attr:`Batch.skipped`, so the
main process can count them and name each file once (:func:`take_skipped`), also when
the images are read by loader workers.

A worker's exception reaches the main process as the same class built from the worker's
whole traceback text (``torch._utils.ExceptionWrapper.reraise``: ``cls("Caught ... Original
Traceback ...\\n<module>.BadImageError: <message>")``); :class:`BadImageError` keeps that
text's last line, its own message, so the error stays one line.
"""
from __future__ import annotations

import ast
import re
import sys
from typing import Optional

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, default_collate

from ..errors import ConfigError, one_line

#: what PIL raises for a file it cannot open or decode (UnidentifiedImageError is an OSError)
DECODE_ERRORS = (OSError, SyntaxError, ValueError)

_FIX = ("replace or delete the file, then continue with --resume RUN, or set "
        "data.skip_bad_images=true")
_MESSAGE = re.compile(r"cannot read image ('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\") \((.*)\): "
                      + re.escape(_FIX))


class BadImageError(ConfigError):
    """An image file that cannot be read: ``path`` and ``reason`` (PIL's complaint) are read
    back from the message, so they survive a worker's re-raise (None if it names no file)."""

    def __init__(self, message: str):
        message = _own_line(message, type(self).__name__)
        super().__init__(message)
        found = _MESSAGE.fullmatch(message)
        self.path: Optional[str] = ast.literal_eval(found.group(1)) if found else None
        self.reason: Optional[str] = found.group(2) if found else None

    @classmethod
    def of(cls, path: str, exc: BaseException) -> "BadImageError":
        return cls(f"cannot read image {path!r} ({pil_reason(exc)}): {_FIX}")


class SkippedImageError(BadImageError):
    """A damaged file under ``data.skip_bad_images``: :class:`SkippingView` skips it."""


def _own_line(message: str, name: str) -> str:
    """``message``, or out of a worker's traceback text the last line without its
    ``module.ClassName: `` prefix."""
    lines = [line for line in str(message).strip().splitlines() if line.strip()]
    if len(lines) <= 1:
        return str(message).strip()
    head, sep, rest = lines[-1].partition(": ")
    return rest if sep and head.rsplit(".", 1)[-1] == name else lines[-1]


def pil_reason(exc: BaseException) -> str:
    """PIL's complaint in a few words (its "cannot identify" message names a file object)."""
    if isinstance(exc, UnidentifiedImageError):
        return "not an image file PIL can identify"
    return one_line(exc)


class ImageReader:
    """An image folder's loader: the file as an RGB PIL image (torchvision's ``pil_loader``),
    a damaged one raising :class:`BadImageError` (:class:`SkippedImageError` with ``skip``)."""

    def __init__(self, skip: bool = False):
        self.skip = skip

    def __call__(self, path: str) -> Image.Image:
        try:
            with open(path, "rb") as fh:
                return Image.open(fh).convert("RGB")  # convert decodes: truncation shows here
        except DECODE_ERRORS as exc:
            raise (SkippedImageError if self.skip else BadImageError).of(path, exc) from None

    def __repr__(self) -> str:
        return f"ImageReader(skip={self.skip})"


class Skipped:
    """The sample of a skipped file, dropped by :func:`collate`."""

    def __init__(self, path: str, reason: str):
        self.path, self.reason = path, reason


class SkippingView(Dataset):
    """``dataset`` as a loader reads it: an item whose file raised :class:`SkippedImageError`
    is a :class:`Skipped` sample (any other error, :class:`BadImageError` included, is raised)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        try:
            return self.dataset[i]
        except SkippedImageError as exc:
            return Skipped(exc.path, exc.reason)


class Batch(tuple):
    """``(x, y)`` of the samples that were read (``(None, None)`` when none was);
    ``skipped``: the :class:`Skipped` samples dropped from it."""

    def __new__(cls, items, skipped=()):
        batch = super().__new__(cls, items)
        batch.skipped = list(skipped)
        return batch

    def pin_memory(self) -> "Batch":
        """Called by the DataLoader's pinning (which would otherwise rebuild a plain tuple)."""
        return Batch((None if t is None else t.pin_memory() for t in self), self.skipped)


def collate(samples: list) -> Batch:
    """``default_collate`` of the samples that are not :class:`Skipped`."""
    kept = [s for s in samples if not isinstance(s, Skipped)]
    skipped = [s for s in samples if isinstance(s, Skipped)]
    return Batch(default_collate(kept) if kept else (None, None), skipped)


_WARNED: set = set()


def take_skipped(batch) -> int:
    """How many images ``batch`` dropped; the first time a file is dropped in this process,
    one warning line on stderr names it."""
    skipped = getattr(batch, "skipped", ())
    for s in skipped:
        if s.path not in _WARNED:
            _WARNED.add(s.path)
            print(f"warning: skipping image {s.path!r} ({s.reason}): data.skip_bad_images=true",
                  file=sys.stderr, flush=True)
    return len(skipped)
