"""A content-addressed store of trained artifacts: one folder per (kind, config) hash.

Every model a benchmark trains is stored under ``<root>/<kind>/<hash>/``, where the hash covers the
config that produced it *and* the hashes of the artifacts it was built from (an autoencoder's hash
includes its foundation model's). A second run with the same config finds the folder and loads it; a
changed config gets a new folder, so nothing stale is ever reused.

A build runs in ``<hash>.partial/`` and is renamed into place only when it finishes, so an interrupted
build never looks finished; training loops keep their checkpoints in the partial folder and resume
from them on the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from didae_xai.io import load_json, save_json


def config_hash(config: Any) -> str:
    """A short, stable hash of a JSON-serialisable config (key order does not matter)."""
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def default_root() -> Path:
    """``$DIDAE_XAI_HOME/artifacts``, else ``~/.cache/didae-xai/artifacts``."""
    home = os.environ.get("DIDAE_XAI_HOME")
    return Path(home) / "artifacts" if home else Path.home() / ".cache" / "didae-xai" / "artifacts"


@dataclass(frozen=True)
class Entry:
    """One stored artifact: where it lives, its hash and whether it came from the cache."""

    kind: str
    key: str
    path: Path
    cached: bool
    meta: dict


class ArtifactStore:
    """Build-or-load of trained artifacts keyed by config hash.

    Example:
        >>> store = ArtifactStore(tmp_path)
        >>> entry = store.get_or_build("fm", {"epochs": 8}, lambda folder: train_and_save(folder))
        >>> entry.cached, entry.path   # False, <root>/fm/<hash>; True on the next call
    """

    def __init__(self, root: str | Path | None = None, force: bool = False):
        self.root = Path(root) if root is not None else default_root()
        self.force = force
        self._rebuilt: set[str] = set()

    def key(self, kind: str, config: dict, deps: tuple[str, ...] = ()) -> str:
        return config_hash({"kind": kind, "config": config, "deps": list(deps)})

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def get_or_build(
        self, kind: str, config: dict, build: Callable[[Path], dict | None], deps: tuple[str, ...] = ()
    ) -> Entry:
        """Return the stored artifact for ``config``, building it with ``build(folder)`` if missing.

        ``build`` writes the artifact's files into ``folder`` (and may keep checkpoints there to
        resume from) and may return extra metadata (e.g. training minutes) stored in ``meta.json``.
        With ``force=True`` each artifact is rebuilt once per store object, from scratch.
        """
        key = self.key(kind, config, deps)
        final = self.path(kind, key)
        if self.force and key not in self._rebuilt:
            shutil.rmtree(final, ignore_errors=True)
            shutil.rmtree(final.with_name(f"{key}.partial"), ignore_errors=True)
        if (final / "meta.json").is_file():
            return Entry(kind, key, final, True, load_json(final / "meta.json"))
        partial = final.with_name(f"{key}.partial")
        partial.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        extra = build(partial) or {}
        meta = {"kind": kind, "key": key, "config": config, "deps": list(deps),
                "build_seconds": time.perf_counter() - start, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}
        save_json(meta, partial / "meta.json")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        self._rebuilt.add(key)
        return Entry(kind, key, final, False, meta)
