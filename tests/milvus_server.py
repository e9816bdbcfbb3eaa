"""A real Milvus server for the tests: the standalone Milvus binary that the `milvus` package ships
(embedded etcd, local storage, RocksMQ; no Docker), with authentication on, every port free-chosen.

The package picks free ports for Milvus's own services but leaves its embedded etcd on 2379/2380,
which another etcd (or a second test run) may hold: an etcd configuration file moves those too.
Milvus listens on every interface, so the administrator's well-known password is changed to a
random one before anything else is done.
"""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

from annotator.labelstudio.server import free_port


class MilvusServer:
    """``start()`` → a running server at ``uri`` (``milvus://127.0.0.1:port``) that wants ``token``."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self._server = None

    def start(self, timeout_s: float = 120.0) -> MilvusServer:
        import milvus

        template = Path(milvus.__file__).parent / "data" / "config.yaml.template"
        client_port, peer_port = free_port(), free_port()
        etcd_yaml = self.data_dir / "etcd.yaml"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        etcd_yaml.write_text(
            f"name: default\nlisten-client-urls: http://127.0.0.1:{client_port}\n"
            f"advertise-client-urls: http://127.0.0.1:{client_port}\n"
            f"listen-peer-urls: http://127.0.0.1:{peer_port}\n"
            f"initial-advertise-peer-urls: http://127.0.0.1:{peer_port}\n"
            f"initial-cluster: default=http://127.0.0.1:{peer_port}\n")
        ours = self.data_dir / "milvus.yaml.template"
        text = template.read_text()
        ours.write_text(text.replace("etcd:\n", f"etcd:\n  config:\n    path: {etcd_yaml}\n", 1))
        config = milvus.MilvusServerConfig(template=str(ours), data_dir=str(self.data_dir / "server"))
        config.glog_conf_file = str(template.with_name("glog.conf"))  # set only for the package's own template
        ports = {key: free_port() for key in config.configurable_items if key.endswith("_port")}
        ports["etcd_port"] = client_port
        config.set("authorization_enabled", True)
        server = milvus.MilvusServer(config, wait_for_started=False, **ports)
        server.webservice_port = free_port()
        server.start()
        self._server = server
        try:
            server.wait_started(timeout=int(timeout_s * 1000))
        except (TimeoutError, RuntimeError) as exc:
            self.stop()
            raise RuntimeError(f"Milvus did not start: {exc}; see {self.data_dir / 'server' / 'logs'}") from exc
        self.port = server.listen_port
        from pymilvus import MilvusClient

        password = secrets.token_urlsafe(18)
        admin = MilvusClient(uri=f"http://127.0.0.1:{self.port}", token="root:Milvus")  # a fresh server's
        admin.update_password("root", "Milvus", password)
        admin.close()
        self.token = f"root:{password}"
        return self

    @property
    def uri(self) -> str:
        return f"milvus://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._server is not None:
            proc = self._server.server_proc
            if proc is not None:  # a clean stop with data takes Milvus half a minute; the data is thrown away
                proc.terminate()
                try:
                    proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    proc.kill()
            self._server.stop()
            self._server = None
