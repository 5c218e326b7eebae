"""Storage faults while a run writes (a full disk, a quota, a file-size limit): named, with the path and the space
a write needs, and the run stopped with what it had intact (checkpoints are renamed into place when complete and
old ones deleted only after a new one is: a failed write never costs the previous checkpoint)."""

from __future__ import annotations

import errno
import re
from pathlib import Path

SPACE_ERRORS = {errno.ENOSPC: "no space left on the device", errno.EFBIG: "file too large (a size limit)",
                errno.EDQUOT: "disk quota exceeded"}
# How writers that are not Python (tensorstore under orbax) word the same errors in their messages.
SPACE_MESSAGES = {errno.ENOSPC: "No space left on device", errno.EFBIG: "File too large",
                  errno.EDQUOT: "Disk quota exceeded"}


class StorageError(RuntimeError):
    """A checkpoint or export that could not be written for lack of space; the message says where and how much."""


def space_error(error: BaseException) -> OSError | None:
    """The out-of-space OSError behind `error` (orbax and concurrent.futures wrap their writer threads' errors)."""
    seen, stack = set(), [error]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in SPACE_ERRORS:
            return e
        for number, text in SPACE_MESSAGES.items():
            if text in str(e):
                written = re.search(r'Failed writing: "([^"]+)"', str(e))  # tensorstore names the file so
                return OSError(number, text, written[1] if written else None)
        stack += [e.__cause__, e.__context__, *getattr(e, "exceptions", ()),
                  *(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))]
    return None


def error(e: BaseException, path: Path, needed_bytes: int, what: str) -> BaseException:
    """A StorageError for an out-of-space failure while writing `what` under `path`, else `e` itself."""
    cause = space_error(e)
    if cause is None:
        return e
    return StorageError(f"cannot write the {what} in {path}: {SPACE_ERRORS[cause.errno]} ({cause.strerror}: "
                        f"{cause.filename or path}); a {what} takes about {needed_bytes / 1e6:.1f} MB there: free "
                        f"that much (or lower --keep) and rerun the same command; the previous checkpoint is intact")


def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) if Path(path).exists() else 0


def largest_step_bytes(checkpoints: Path) -> int:
    """The size of the largest complete checkpoint step under `checkpoints` (what the next one will about need)."""
    steps = [p for p in Path(checkpoints).iterdir() if p.name.isdigit()] if Path(checkpoints).is_dir() else []
    return max((tree_bytes(p) for p in steps), default=0)
