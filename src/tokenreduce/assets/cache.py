"""Where converted assets are kept, and how a converted folder is published."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def cache_dir() -> Path:
    """Where converted models are kept: ``$TOKENREDUCE_CACHE`` or ``~/.cache/tokenreduce``."""
    root = os.environ.get("TOKENREDUCE_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "tokenreduce"


def save_pretrained_folder(dest: Path, *parts: Any) -> None:
    """Write ``parts`` (objects with ``save_pretrained``: a model, its tokenizer or image
    processor) into the folder ``dest``.

    They are written into a temporary folder beside ``dest`` and renamed, so a concurrent
    reader never sees half a folder; when another process published ``dest`` first, its
    folder is kept.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    try:
        tmp.chmod(0o755)
        for part in parts:
            part.save_pretrained(str(tmp))
        try:
            tmp.rename(dest)
        except OSError:  # another process finished first
            if not (dest / "config.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
