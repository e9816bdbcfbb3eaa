"""Shared fixtures. Real parts only: real SQLite files, a real PostgreSQL server started here,
real models loaded once per session (see tests/models_fixtures.py)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"

# Nothing in the test run may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The suite writes into temporary folders and the repository's own ignored .cache (Label Studio's
# virtualenv, ONNX exports, font caches), never into the user's ~/.cache; CLI subprocesses inherit it.
os.environ["XDG_CACHE_HOME"] = str(Path(__file__).resolve().parents[1] / ".cache" / "xdg")


@pytest.fixture
def settings(tmp_path, monkeypatch):
    """Settings pointing at a fresh data dir (SQLite there); environment isolated."""
    from annotator.config import FOREIGN_VARIABLES

    for var in list(os.environ):
        if var.startswith("ANNOTATOR_") or var in FOREIGN_VARIABLES:
            monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ANNOTATOR_DATA_DIR", str(tmp_path / "data"))
    # tasks in tests name files in the test data and in the test's own folder, as a deployment
    # names the folders its tasks' local paths may point into
    monkeypatch.setenv("ANNOTATOR_MEDIA_ROOTS", os.pathsep.join([str(DATA), str(tmp_path)]))
    # the tests' media servers are on loopback: a proxy of the machine's environment stays out of it
    monkeypatch.setenv("ANNOTATOR_MEDIA_PROXY", "none")
    from annotator.config import Settings

    return Settings()


@pytest.fixture
def store(settings):
    from annotator.store import open_store

    s = open_store(settings)
    yield s
    s.close()


def _pg_bin() -> Path | None:
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL cluster on 127.0.0.1, for the duration of the test run."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql); Postgres tests skipped")
    as_root = os.geteuid() == 0
    run_as = ["runuser", "-u", "postgres", "--"] if as_root else []
    workdir = Path(tempfile.mkdtemp(prefix="annotator-pg-"))
    datadir, sockdir = workdir / "data", workdir / "sock"
    sockdir.mkdir()
    if as_root:
        shutil.chown(workdir, "postgres")
        shutil.chown(sockdir, "postgres")
    from annotator.labelstudio.server import free_port

    port = free_port()
    subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(datadir), "-U", "annotator", "--auth=trust",
                    "-E", "UTF8"], check=True, capture_output=True)
    subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(datadir), "-w", "-l", str(workdir / "log"),
                    "-o", f"-p {port} -k {sockdir} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                   check=True, capture_output=True)
    try:
        url = f"postgresql+psycopg://annotator@127.0.0.1:{port}/postgres"
        deadline = time.time() + 30
        import sqlalchemy as sa

        while True:
            try:
                sa.create_engine(url).connect().close()
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.3)
        yield url
    finally:
        subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(datadir), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def pg_database(postgres_url):
    """A fresh, empty database on the session's Postgres server."""
    import uuid

    import sqlalchemy as sa

    name = "t_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    yield postgres_url.rsplit("/", 1)[0] + "/" + name
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE {name} WITH (FORCE)"))
    admin.dispose()


@pytest.fixture(scope="session")
def label_studio():
    """The session's one real Label Studio (installed into .cache/label-studio on first use), on
    loopback: the integration tests and the backend benchmark's smoke run share it."""
    from tests.integration.label_studio import LabelStudioServer

    server = LabelStudioServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server():
    """A local S3-compatible server (moto's server mode, in this process, on loopback) for the
    session; its URL. Unsigned requests are accepted, and any credentials are."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    """A real Milvus standalone server for the session (the `milvus` package's binary, reached on
    127.0.0.1, authentication on with a random password; see tests/milvus_server.py); skipped where
    the package or its binary cannot run."""
    pytest.importorskip("milvus", reason="the milvus package (a Milvus server binary) is not installed here")
    from tests.milvus_server import MilvusServer

    try:
        server = MilvusServer(tmp_path_factory.mktemp("milvus-server")).start()
    except (OSError, RuntimeError) as exc:
        pytest.skip(f"the Milvus server could not start here: {exc}")
    yield server
    server.stop()


# --- real models, loaded once per test session ----------------------------------------------

@pytest.fixture(scope="session")
def offline_encoders():
    """The three offline default encoders (from PyPI packages), loaded once."""
    from annotator.encoders import load_encoder

    return {m: load_encoder(m, device="cpu", batch_size=16) for m in ("text", "image", "audio")}


@pytest.fixture(scope="session")
def ray_address(tmp_path_factory):
    """One local Ray cluster (2 CPUs) for the whole test session, in its own processes (``ray start
    --head``): tests connect a driver for as long as they need one (the pytest process is not left
    a Ray driver while other tests fork), and CLI subprocesses join it with ``--ray-address``."""
    pytest.importorskip("ray")
    ray_cli = Path(sys.executable).parent / "ray"
    port = _free_port()
    # a temp dir of its own (short: Ray puts Unix sockets under it) marks this cluster's processes,
    # so the teardown stops those alone: `ray stop` would stop every Ray on the machine, a user's too
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    # loopback only, for this test run: no token (drivers and CLI subprocesses connect as they are)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    try:
        subprocess.run([str(ray_cli), "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                        "--node-ip-address=127.0.0.1", "--disable-usage-stats", f"--temp-dir={temp_dir}"],
                       check=True, capture_output=True, timeout=180, env=env)
        yield f"127.0.0.1:{port}"
    finally:
        # the client server names the port, not the temp dir
        stop_processes(processes_under(temp_dir, f":{port} "))
        shutil.rmtree(temp_dir, ignore_errors=True)


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid → (parent pid, command line) of every process we may read, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        table[int(entry.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmdline)
    return table


def processes_under(*markers: str) -> list[int]:
    """The processes whose command line names one of ``markers`` (Ray's daemons name their temp
    dir), and all their descendants (workers and agents, which rename themselves ``ray::…``)."""
    table = _proc_table()
    found = {pid for pid, (_, cmdline) in table.items()
             if any(m in cmdline + " " for m in markers) and pid != os.getpid()}
    grew = True
    while grew:
        children = {pid for pid, (ppid, _) in table.items() if ppid in found} - found
        found |= children
        grew = bool(children)
    return sorted(found)


def stop_processes(pids: list[int], grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL whatever is left after ``grace_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:  # a zombie has exited: only its parent's wait is missing
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class CountingEncoder:
    """Wraps a real encoder and counts how many inputs reach the model (through ``encode``, or
    ``encode_prepared`` where the encoder splits preprocessing off, as the image encoder does)."""

    def __init__(self, inner):
        self.inner, self.calls, self.inputs = inner, 0, 0
        self.name, self.modality, self.dim = inner.name, inner.modality, inner.dim
        self.runtime = getattr(inner, "runtime", "torch")
        self.encode = self._counting(inner.encode)
        if hasattr(inner, "encode_prepared"):
            self.prepare, self.encode_prepared = inner.prepare, self._counting(inner.encode_prepared)
        self.n_parts = getattr(inner, "n_parts", 0)
        if self.n_parts:  # part-level features come from the same forward pass, counted the same
            self.encode_parts = self._counting(inner.encode_parts)
            if hasattr(inner, "encode_prepared_parts"):
                self.encode_prepared_parts = self._counting(inner.encode_prepared_parts)
        if getattr(inner, "shareable", False):  # the Whisper encoder lends its model to the transcriber
            self.shareable, self.whisper_model = True, inner.whisper_model

    def __getattr__(self, name):  # anything else (token_strings, ...) is the real encoder's
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _counting(self, encode):
        def counted(inputs):
            self.calls += 1
            self.inputs += len(inputs)
            return encode(inputs)

        return counted


@pytest.fixture
def encoders(settings, offline_encoders):
    """An `Encoders` runtime over the session's real models, counting calls, with a fresh cache."""
    from annotator.encoders.registry import Encoders

    return Encoders(settings, overrides={m: CountingEncoder(e) for m, e in offline_encoders.items()})
