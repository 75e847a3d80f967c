"""Run folders: made, replaced and cleaned up so that nothing is lost.

A run folder is recognised by `unetkit-run.json` (written only by unetkit: format, unetkit version,
run id, creation time). The rules:
- an existing non-empty folder is used only with `overwrite`, and only when it carries that
  manifest; anything else (a project folder that happens to hold a config.yaml) is refused;
- `overwrite` moves the old run aside (`.NAME.replaced-ID`, a rename) and builds the new run in
  its place; the old run is deleted only once the new run has written its first checkpoint, and
  is put back if the new run fails (or is stopped) before that;
- a fresh run that fails before its first checkpoint leaves nothing behind.

    folder = RunFolder(run_dir, config, dist).open()     # or .open(resume=True)
    ...; folder.commit()    # after the first checkpoint: the replaced run is deleted
    folder.abandon()        # on failure: nothing half-made kept, the replaced run restored
"""
from __future__ import annotations

import contextlib
import json
import shutil
import signal
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from unetkit.errors import ConfigError

MANIFEST = "unetkit-run.json"
FORMAT = "unetkit-run"


def read_manifest(run_dir: str | Path) -> dict[str, Any] | None:
    """The manifest of a unetkit run folder, or None when `run_dir` is not one."""
    path = Path(run_dir) / MANIFEST
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT and data.get("run_id") else None


def is_run_folder(run_dir: str | Path) -> bool:
    return read_manifest(run_dir) is not None


def has_checkpoint(run_dir: str | Path) -> bool:
    return (Path(run_dir) / "checkpoints" / "last.pt").is_file()


class RunFolder:
    """The folder of one run (see the module docstring); file operations happen on rank 0 only."""

    def __init__(self, run_dir: str | Path, config: Any, dist: Any = None) -> None:
        self.run_dir = Path(run_dir)
        self.config = config
        self.dist = dist
        self.resume = False
        self.run_id = uuid.uuid4().hex[:12]
        self.replaced: Path | None = None  # the previous run, moved aside until the new one has started
        self.committed = False
        self.created = False  # this object made the folder (only then may abandon remove it)

    @property
    def _main(self) -> bool:
        return self.dist is None or self.dist.is_main

    def _barrier(self) -> None:
        if self.dist is not None:
            self.dist.barrier()

    def check(self, resume: bool = False) -> None:
        """Refuse (ConfigError) what `open` would refuse, without touching anything."""
        run_dir = self.run_dir
        if resume:
            if not has_checkpoint(run_dir):
                raise ConfigError(f"{run_dir}: nothing to resume (no checkpoints/last.pt)")
            return
        if not run_dir.exists():
            return
        if not run_dir.is_dir():
            raise ConfigError(f"{run_dir} exists and is not a folder; choose another name")
        if not any(run_dir.iterdir()):
            return
        if not getattr(self.config, "overwrite", False):
            hint = "resume it (--resume), " if has_checkpoint(run_dir) else ""
            raise ConfigError(f"{run_dir} exists and is not empty; choose another name, {hint}or pass --overwrite")
        if not is_run_folder(run_dir):
            raise ConfigError(f"{run_dir} is not a unetkit run folder (no {MANIFEST}); --overwrite only replaces "
                              "runs unetkit made. Choose another name, or move the folder yourself")

    def open(self, resume: bool = False) -> "RunFolder":
        """Check, move a replaced run aside, create the folder with its manifest and config.yaml."""
        self.resume = resume
        self.check(resume)
        if resume:
            return self
        self._barrier()
        if self._main:
            run_dir = self.run_dir
            if run_dir.exists() and any(run_dir.iterdir()):
                self.replaced = run_dir.parent / f".{run_dir.name}.replaced-{self.run_id}"
                run_dir.rename(self.replaced)
            try:
                self.created = True
                (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
                self.config.to_yaml(run_dir / "config.yaml")
                from unetkit.training.artifacts import write_json

                import unetkit

                write_json({"format": FORMAT, "unetkit": unetkit.__version__, "run_id": self.run_id,
                            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")},
                           run_dir / MANIFEST)
            except BaseException:
                self.abandon()
                raise
        self._barrier()
        return self

    def commit(self) -> None:
        """The new run has its first checkpoint: delete the run it replaced."""
        if self.committed:
            return
        self.committed = True
        if self._main and self.replaced is not None and self.replaced.exists():
            shutil.rmtree(self.replaced, ignore_errors=True)
        self.replaced = None

    def abandon(self) -> bool:
        """After a failure: a new run without a checkpoint is removed and the replaced run put back.
        Returns True when the new run's folder was removed."""
        if self.resume or not self._main or has_checkpoint(self.run_dir):
            return False
        removed = False
        if self.created and self.run_dir.exists():
            shutil.rmtree(self.run_dir, ignore_errors=True)
            removed = True
        if self.replaced is not None and self.replaced.exists() and not self.run_dir.exists():
            self.replaced.rename(self.run_dir)
            self.replaced = None
        return removed


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While setting a run up, SIGTERM raises KeyboardInterrupt like SIGINT does, so the half-made
    folder is cleaned up (RunFolder.abandon) instead of the process dying mid-way."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
