"""Output paths checked before the work that fills them.

A command that trains for an hour or samples a thousand images must not discover at the end that
it cannot write its result. :func:`check_output_path` is the one check every command runs up front.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def check_output_path(path: str | os.PathLike, *, directory: bool = False, what: str = "output") -> Path:
    """``path`` as a :class:`~pathlib.Path` if it can be written, else :class:`ValueError` saying why.

    ``directory=False``: a file to create or replace (not an existing directory; its folder must
    exist or be creatable, and be writable). ``directory=True``: a folder that exists or can be
    created, and is writable (not an existing file). Creates missing parent folders; writes and
    removes a probe file to prove the folder is writable. ``what`` names the option in messages.
    """
    path = Path(path)
    if directory:
        if path.exists() and not path.is_dir():
            raise ValueError(f"{what} {str(path)!r} is an existing file; give a directory (it is created "
                             "if missing)")
        folder = path
    else:
        if path.is_dir():
            raise ValueError(f"{what} {str(path)!r} is a directory; give a file name, e.g. "
                             f"{str(path / 'out')!r} with the suffix you want")
        folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".sdekit-write-check-"):
            pass
    except OSError as error:
        raise ValueError(f"{what} {str(path)!r} cannot be written ({error.strerror or error}); "
                         "choose a writable location") from None
    return path
