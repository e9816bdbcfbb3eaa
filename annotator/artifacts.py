"""Artifact folders (model versions, aligners, vector indexes): written so that a reader never sees
half of one, and shared between hosts.

Every folder an annotator process writes for another to read goes through `atomic_directory`: the
server's workers load models and indexes while a trainer or ``annotator embed`` replaces them.
Workers on other hosts reach the same folders through `SharedArtifacts` (``ANNOTATOR_ARTIFACTS_URL``,
any fsspec URL: ``s3://bucket/annotator``, ``gs://…``, a ``file://`` mount): a generation is uploaded
whole, then a small pointer file names it, so a reader downloads a complete generation or none.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_directory(path: Path, *, generation: str | None = None) -> Iterator[Path]:
    """Yield an empty folder to fill; when the block ends without error, it becomes ``path``.

    ``path`` is a symbolic link to a generation folder beside it (``.<name>-<id>``). The new
    generation is fsynced, then the link is replaced in one rename, so a reader opening ``path``
    at any moment gets the old folder or the new one, whole; a crash leaves the old one in place.
    The replaced generation is removed afterwards (a reader that already opened its files keeps
    reading them on POSIX). An error in the block removes the half-written folder. ``generation``
    names the new generation (`SharedArtifacts` keeps a downloaded one's name).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    generation = path.parent / (generation or f".{path.name}-{uuid.uuid4().hex[:12]}")
    shutil.rmtree(generation, ignore_errors=True)  # a download interrupted before its flip
    generation.mkdir()
    try:
        yield generation
        _fsync_tree(generation)
        previous = os.readlink(path) if path.is_symlink() else None
        if path.exists() and not path.is_symlink():  # a folder written by an older version
            shutil.rmtree(path)
        link = path.parent / f".{path.name}-link-{uuid.uuid4().hex[:8]}"
        os.symlink(generation.name, link)
        os.replace(link, path)
        _fsync(path.parent)
    except BaseException:
        shutil.rmtree(generation, ignore_errors=True)
        raise
    if previous and previous != generation.name:
        shutil.rmtree(path.parent / previous, ignore_errors=True)


def remove_directory(path: Path) -> None:
    """Remove an artifact folder written by `atomic_directory` (the link and its generation)."""
    path = Path(path)
    if path.is_symlink():
        target = path.parent / os.readlink(path)
        path.unlink()
        shutil.rmtree(target, ignore_errors=True)
    elif path.exists():
        shutil.rmtree(path)


def _fsync_tree(root: Path) -> None:
    for folder, _dirs, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as fh:
                os.fsync(fh.fileno())
        _fsync(Path(folder))


def _fsync(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def current_generation(path: Path) -> str | None:
    """The name of the generation ``path`` links to (None when it is missing or not a link)."""
    path = Path(path)
    return os.readlink(path) if path.is_symlink() else None


class SharedArtifacts:
    """The data dir's artifact folders mirrored under an fsspec URL, for workers on other hosts.

    ``publish(path)`` uploads the generation ``path`` links to, then writes ``<path>.current`` (its
    name) beside it; ``refresh(path)`` downloads the named generation when it is not the local one,
    and links ``path`` to it. Paths are keyed by where they sit under the data dir, so every host
    uses the same layout whatever its own data dir is.
    """

    POINTER = ".current"

    def __init__(self, url: str, data_dir: Path):
        from fsspec.core import url_to_fs

        self.url, self.data_dir = url, Path(data_dir)
        self.fs, root = url_to_fs(url)
        self.root = root.rstrip("/")

    @classmethod
    def for_settings(cls, settings) -> SharedArtifacts | None:
        return cls(settings.artifacts_url, settings.data_dir) if settings.artifacts_url else None

    def _remote(self, path: Path) -> str:
        path = Path(path)
        where = path.parent.resolve() / path.name  # not path.resolve(): that would follow the link
        return f"{self.root}/{where.relative_to(self.data_dir.resolve()).as_posix()}"

    def publish(self, path: Path) -> None:
        path = Path(path)
        generation = current_generation(path)
        if generation is None:
            raise FileNotFoundError(f"{path} is not an artifact folder written by atomic_directory")
        remote = self._remote(path)
        target = f"{remote.rsplit('/', 1)[0]}/{generation}"
        local = path.parent / generation
        # nested artifact folders (a version's classifier) are links to hidden generations beside
        # them: upload what the links show, as plain folders, and skip the hidden originals
        for folder, dirs, files in os.walk(local, followlinks=True):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            rel = Path(folder).relative_to(local).as_posix()
            where = target if rel == "." else f"{target}/{rel}"
            self.fs.makedirs(where, exist_ok=True)
            for name in files:
                self.fs.put_file(os.path.join(folder, name), f"{where}/{name}")
        self.fs.pipe_file(remote + self.POINTER, generation.encode())  # last: the generation is whole

    def refresh(self, path: Path) -> bool:
        """Make ``path`` the shared store's current generation; whether the local one changed.
        Nothing is shared under this path yet: nothing changes."""
        path = Path(path)
        remote = self._remote(path)
        try:
            generation = self.fs.cat_file(remote + self.POINTER).decode().strip()
        except FileNotFoundError:
            return False
        if generation == current_generation(path):
            return False
        source = f"{remote.rsplit('/', 1)[0]}/{generation}"
        with atomic_directory(path, generation=generation) as tmp:
            self.fs.get(source + "/", str(tmp) + "/", recursive=True)
        return True

    def remove(self, path: Path) -> None:
        """Forget a shared folder (its pointer; readers keep their local copy until they refresh)."""
        try:
            self.fs.rm_file(self._remote(path) + self.POINTER)
        except FileNotFoundError:
            pass
