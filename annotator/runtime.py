"""The process registry: what one process keeps loaded, and the one place that loads it.

- the encoders (one per modality) and their embedding caches;
- the active model of each project, cached by version and reloaded when another process (a worker,
  the trainer, ``annotator retrain``) promotes a new one; checked against the encoders here, once;
- each project's search indexes, which reload a generation written by another process.

Built once by a CLI command or the server's startup, never at import and never per request.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from annotator.config import Settings
from annotator.encoders.registry import Encoders
from annotator.errors import ConfigError
from annotator.index.cross_modal import ProjectIndex
from annotator.store import repo
from annotator.versions import load_version


@dataclass(frozen=True)
class ActiveModel:
    """A project's serving model: its version name and the fitted classifier."""

    version: str
    classifier: Any
    artifact_path: str = ""  # where the version is stored (a cluster's workers load it from there)

    @property
    def modalities(self) -> list[str]:
        return list(self.classifier.modalities_)

    @property
    def uses_parts(self) -> bool:
        """Whether the model reads part-level features (the ``coattention`` head)."""
        return bool(getattr(self.classifier, "uses_parts", False))


class Runtime:
    """Encoders, active models and project indexes of one process.

    Parameters
    ----------
    settings : Settings
    encoders : Encoders, optional
        Ready encoders (tests and benchmarks share loaded models this way).
    """

    def __init__(self, settings: Settings, *, encoders: Encoders | None = None):
        self.settings = settings
        self.encoders = encoders or Encoders(settings)
        self._models: dict[tuple[str, str | None], ActiveModel] = {}
        self._indexes: dict[str, ProjectIndex] = {}
        self._lock = threading.Lock()

    def active_model(self, session, project, control: str | None = None) -> ActiveModel | None:
        """The project's promoted model for ``control`` (None: the primary one), or None before its
        first training.

        Raises `ConfigError` when it was trained on other encoders than the settings give: its
        scores on these vectors would mean nothing."""
        active = repo.active_model_version(session, project=project, control=control)
        if active is None:
            return None
        with self._lock:
            cached = self._models.get((project.name, control))
            if cached is not None and cached.version == active.version:
                return cached
        clf, trained_on = load_version(self.settings, active)
        for modality, name in trained_on.items():
            if self.encoders.get(modality).name != name:
                raise ConfigError(
                    f"model {active.version} was trained on {modality} encoder {name!r} but the settings give "
                    f"{self.encoders.get(modality).name!r}; retrain, or set ANNOTATOR_{modality.upper()}_MODEL back")
        loaded = ActiveModel(active.version, clf, active.artifact_path)
        with self._lock:
            self._models[(project.name, control)] = loaded
        return loaded

    def loaded_versions(self) -> dict[str, str]:
        """Model version per project (and ``project:control`` for its other controls) loaded in this
        process (for /health)."""
        with self._lock:
            return {name if control is None else f"{name}:{control}": m.version
                    for (name, control), m in self._models.items()}

    def project_index(self, project_name: str) -> ProjectIndex:
        """The project's `ProjectIndex`, kept across calls (it reloads what another process rewrote)."""
        with self._lock:
            if project_name not in self._indexes:
                self._indexes[project_name] = ProjectIndex(self.settings, project_name, self.encoders)
            return self._indexes[project_name]
