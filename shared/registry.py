"""The versioned model registry: one directory per version, the current version pointer in Redis.

    <registry_dir>/<version>/model.tflite, model.keras, metadata.json, report.md ...

The pointer lives in Redis (`<prefix>:{model}:current`) so every classifier replica sees a promotion;
it is mirrored to `<registry_dir>/CURRENT` so a fresh Redis still knows what to serve. With an
empty registry the model shipped in the repository (`models/default`) is served.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Literal

import redis

from shared.model_runtime import EmotionModel, ModelError, ModelMetadata, read_metadata
from shared.streams import Keys

VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
DEFAULT_VERSION = "default"
# Model roles: `fast` serves the live classifiers, `accurate` answers photo and offline analysis.
# Each role has its own current-version pointer over the one shared set of versions.
ROLES = ("fast", "accurate")
Role = Literal["fast", "accurate"]


class ModelRegistry:
    def __init__(self, root: Path, client: redis.Redis | None, keys: Keys, default_dir: Path | None = None,
                 role: Role = "fast") -> None:
        if role not in ROLES:
            raise ModelError(f"unknown model role {role!r}; choose one of {', '.join(ROLES)}")
        self.root = Path(root)
        self.client = client
        self.keys = keys
        self.default_dir = Path(default_dir) if default_dir else None
        self.role = role
        # The fast role keeps the original key and file names, so existing deployments keep their pointer.
        suffix = "" if role == "fast" else f":{role}"
        self._current_key = keys.model_current + suffix
        self._history_key = keys.model_history + suffix
        self._pointer_name = "CURRENT" if role == "fast" else f"CURRENT-{role}"

    # --- reading -----------------------------------------------------------------------------

    def versions(self) -> list[ModelMetadata]:
        """Every registered version with readable metadata, oldest first."""
        found = []
        if self.root.is_dir():
            for child in sorted(self.root.iterdir()):
                if child.is_dir() and (child / "metadata.json").exists():
                    try:
                        found.append(read_metadata(child))
                    except ModelError:
                        continue
        return found

    def default_model(self) -> ModelMetadata | None:
        """The shipped default model, listed as version `default` (promotable like any other), unless
        a registered version has that name; None when no default model is installed."""
        if self.default_dir is None or (self.root / DEFAULT_VERSION).exists():
            return None
        try:
            return read_metadata(self.default_dir)
        except ModelError:
            return None

    def served_version(self) -> str:
        """The name of the model being served: the current version, else `default` (the shipped one)."""
        return self.current_version() or DEFAULT_VERSION

    def current_version(self) -> str | None:
        if self.client is not None:
            value = self.client.get(self._current_key)
            if value:
                return value.decode()
        pointer = self.root / self._pointer_name
        return pointer.read_text().strip() or None if pointer.exists() else None

    def path(self, version: str) -> Path:
        if version == DEFAULT_VERSION and self.default_dir is not None and not (self.root / version).exists():
            return self.default_dir
        if not VERSION_PATTERN.match(version):
            raise ModelError(f"invalid model version name {version!r}")
        path = self.root / version
        if not path.is_dir():
            raise ModelError(f"model version {version!r} is not in the registry at {self.root}")
        return path

    def current_dir(self) -> Path:
        """Directory of the model to serve: the current version, else the shipped default."""
        version = self.current_version()
        if version:
            return self.path(version)
        if self.default_dir is not None and (self.default_dir / "metadata.json").exists():
            return self.default_dir
        raise ModelError(f"no current model for the {self.role} role: registry {self.root} has no current version and no default "
                         f"model is installed (train one with `emotion train`, or set EMOTION_DEFAULT_MODEL_DIR)")

    # --- writing -----------------------------------------------------------------------------

    def register(self, source_dir: Path, version: str | None = None) -> str:
        """Copy an exported model directory into the registry (atomically, via a temp dir + rename)."""
        metadata = read_metadata(source_dir)
        version = version or metadata.version
        if not VERSION_PATTERN.match(version):
            raise ModelError(f"invalid model version name {version!r}")
        EmotionModel(source_dir)  # refuse what cannot be served before it enters the registry
        target = self.root / version
        if target.exists():
            raise ModelError(f"model version {version!r} already exists in {self.root}")
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".{version}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(source_dir, staging)
        if version != metadata.version:
            data = json.loads((staging / "metadata.json").read_text())
            data["version"] = version
            (staging / "metadata.json").write_text(json.dumps(data, indent=2))
        os.replace(staging, target)
        return version

    def promote(self, version: str) -> None:
        """Make `version` current after checking that it loads; running services follow within model_check_s."""
        EmotionModel(self.path(version))  # a corrupt or incompatible model is refused here
        previous = self.current_version()
        if self.client is not None:
            pipe = self.client.pipeline(transaction=True)
            if previous and previous != version:
                pipe.lpush(self._history_key, previous)
            pipe.set(self._current_key, version)
            pipe.execute()
        self._write_pointer(version)

    def rollback(self) -> str:
        """Return to the previously current version."""
        if self.client is None:
            raise ModelError("rollback needs Redis (the promotion history lives there)")
        previous = self.client.lpop(self._history_key)
        if not previous:
            raise ModelError("nothing to roll back to: no earlier promoted version")
        version = previous.decode()
        EmotionModel(self.path(version))
        self.client.set(self._current_key, version)
        self._write_pointer(version)
        return version

    def _write_pointer(self, version: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{self._pointer_name}.tmp"
        tmp.write_text(version + "\n")
        os.replace(tmp, self.root / self._pointer_name)
