"""Write files atomically: to a temporary file in the same folder, then rename.

The file ends up with the permissions an ordinary `open(path, "w")` would give it (0666 minus
the umask), not mkstemp's private 0600. A write that fails for lack of space (or a storage
error reported by a library, such as torch.save's "file write failed") is re-raised as an
`OSError` that names the destination file.
"""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Iterator

# what libraries say when the disk fills under them (torch.save's zip writer, numpy, PIL)
_WRITE_FAILURES = ("file write failed", "PytorchStreamWriter failed", "No space left on device")


def current_umask() -> int:
    """The process umask: from /proc on Linux (no change, thread-safe), else set and restored."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed onto `path`, on error removed.

    Readers never see a half-written file, and a crash leaves any previous file intact.
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} exists; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, 0o666 & ~current_umask())
        try:
            yield tmp_path
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise no_space(path, err) from None
            raise
        except RuntimeError as err:
            if any(text in str(err) for text in _WRITE_FAILURES):
                raise no_space(path, err) from None
            raise
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def no_space(path: Path, err: BaseException) -> OSError:
    """An OSError(ENOSPC) naming `path`, for a write that failed for lack of space."""
    code = getattr(err, "errno", None) or errno.ENOSPC
    reason = os.strerror(code) if code != errno.ENOSPC else "no space left on device"
    return OSError(code, f"could not write it: {reason}; free some space (or write elsewhere) and "
                         f"run again - the previous file, if any, is intact", str(path))
