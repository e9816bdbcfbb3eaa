"""Every benchmark runs at --smoke size and writes its results; targets are never asserted here."""

import json
import subprocess
import sys

import pytest

from tests.cli.test_cli import ROOT

BENCHES = ["bench_import_jsonl", "bench_fusion_heads", "bench_model_choice", "bench_search_index", "bench_al_curve", "bench_simulate",
           "bench_backend", "bench_media", "bench_encode", "bench_embed_command", "bench_transcribe", "bench_ray_embed"]


@pytest.mark.parametrize("name", BENCHES)
def test_benchmark_smoke(name, tmp_path, request):
    extra = []
    if name == "bench_backend":  # the session's Label Studio, not a second one (a minute of start-up)
        server = request.getfixturevalue("label_studio")
        extra = ["--label-studio", server.url, server.token]
    if name == "bench_search_index":  # the session's Milvus server, where one runs, not a second one
        try:
            server = request.getfixturevalue("milvus_server")
            extra = ["--milvus-server", server.uri, "--milvus-token", server.token]
        except pytest.skip.Exception:
            pass
    proc = subprocess.run([sys.executable, "-m", f"bench.{name}", "--smoke", "--out", str(tmp_path), *extra], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / f"{name}_smoke.json").read_text())
    assert doc["benchmark"] == f"{name}_smoke" and doc["machine"]["cpus"] >= 1
    if "--milvus-server" in extra:
        assert doc["milvus"][0]["milvus_server"]["recall_at_10"] == 1.0  # exact (FLAT) at the smoke size


def test_gpu_benchmark_needs_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine: bench_gpu_encode runs only where a GPU is present")
    proc = subprocess.run([sys.executable, "bench/bench_gpu_encode.py", "256", "/tmp"], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
