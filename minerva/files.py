"""Files written whole or not at all: a run folder's text files and the checkpoints."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_file(path: Path, content: str | bytes, *, durable: bool = False) -> None:
    """Writes ``content`` (text as UTF-8) to ``path``: into a new temporary file beside it
    (created exclusively, so no link is followed), then renamed over ``path`` (which
    replaces a link there instead of writing through it); a kill leaves the old file.
    ``durable`` fsyncs the file before the rename, so a crash of the machine cannot leave
    an empty file under the name either."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        # closing flushes what a failed write left buffered, and fails again: the error
        # raised is then close()'s, the file closed all the same
        with os.fdopen(descriptor, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
