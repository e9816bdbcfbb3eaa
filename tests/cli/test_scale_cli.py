"""Both scale-out engines from the command line: `embed --engine ray` joins the test session's Ray
cluster (`--ray-address`) and writes the indexes into Milvus Lite (ANNOTATOR_VECTOR_STORE); `search`
then answers as it does on the default path (in-process encoding, FAISS)."""

import json

import pytest

from annotator.sample_data import SAMPLE_DIR
from tests.cli.test_cli import run_cli

pytest.importorskip("pymilvus")


def test_embed_on_ray_into_milvus_then_search_like_faiss(tmp_path, ray_address):
    default = {"ANNOTATOR_DATA_DIR": str(tmp_path / "default")}
    scaled = {"ANNOTATOR_DATA_DIR": str(tmp_path / "scaled"),
              "ANNOTATOR_VECTOR_STORE": f"milvus-lite://{tmp_path / 'vectors.db'}"}
    for env in (default, scaled):
        run_cli("import", str(SAMPLE_DIR / "items.jsonl"), "--project", "p", env_extra=env, check=True)
    run_cli("embed", "--project", "p", env_extra=default, check=True)
    proc = run_cli("embed", "--project", "p", "--engine", "ray", "--ray-address", ray_address,
                   "--parquet-dir", str(tmp_path / "parquet"), "--json", env_extra=scaled, check=True)
    report = json.loads(proc.stdout)
    assert report["encoded"] == {"text": 48, "image": 48, "audio": 16} and report["failed"] == []
    assert report["index"]["indexes"]["native-image"] == 48 and report["index"]["indexes"]["shared-text"] == 48
    assert len(list((tmp_path / "parquet" / "image").glob("part-*.parquet"))) >= 1
    for query in (["--text", "an emoji of a car", "--modality", "image"], ["--item", "1F40A", "--label", "animal"]):
        hits = [json.loads(run_cli("search", "--project", "p", *query, "-k", "6", "--json", env_extra=env,
                                   check=True).stdout) for env in (default, scaled)]
        assert len(hits[0]) >= 4
        assert [(h["id"], round(h["score"], 4)) for h in hits[1]] == [(h["id"], round(h["score"], 4)) for h in hits[0]]
