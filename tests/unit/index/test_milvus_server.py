"""What only a Milvus server does (Milvus Lite cannot): authentication, a graph index chosen for a
large collection, and several processes reading and writing one collection at once, as the workers
of a deployment do. A real standalone Milvus, one per test session (tests/milvus_server.py)."""

import json
import subprocess
import sys
import uuid

import numpy as np
import pytest

from annotator.errors import ConfigError
from tests.unit.index.test_vector_index import brute, normalised

pytest.importorskip("pymilvus")


@pytest.fixture(scope="module")
def server(milvus_server):
    from annotator.index.milvus_index import connect, milvus_uri

    uri = milvus_uri(milvus_server.uri)
    return uri, milvus_server.token, connect(uri, milvus_server.token)


# the default password (changed when the server started: the connection is accepted, the first call
# refused with gRPC's UNAUTHENTICATED), and a wrong one (refused at once)
@pytest.mark.parametrize("token", ["root:Milvus", "root:not-the-password"])
def test_a_wrong_token_is_a_clear_configuration_error(server, token):
    from annotator.index.milvus_index import connect

    uri, _, _ = server
    with pytest.raises(ConfigError, match=f"cannot connect to Milvus at {uri}.*ANNOTATOR_MILVUS_TOKEN"):
        connect(uri, token)


def test_a_large_collection_gets_a_graph_index_with_high_recall(server):
    """Past the exact-search size the server builds HNSW (Milvus Lite has no graph index and gets
    IVF_FLAT); its search stays close to exact, filters included."""
    from annotator.index.milvus_index import MilvusIndex

    uri, _, client = server
    index = MilvusIndex.create(client, f"t_{uuid.uuid4().hex}", 64, n_expected=500_000, uri=uri)
    assert index.index_type == "HNSW"
    described = client.describe_index(index.collection, client.list_indexes(index.collection)[0])
    assert described["index_type"] == "HNSW" and described["metric_type"] == "IP"
    x = normalised(4000, d=64, clusters=40)
    index.add(np.arange(4000), x)
    q = normalised(50, d=64, seed=2, clusters=40)
    _, found = index.search(q, 10)
    truth = brute(q, x, np.arange(4000), 10)
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
    assert recall >= 0.95
    allowed = np.arange(0, 4000, 7)
    _, only = index.search(q[:5], 10, allowed_ids=allowed)
    assert set(only.ravel().tolist()) <= set(allowed.tolist())


_WORKER = """
import json, sys, time
import numpy as np
from annotator.index.milvus_index import MilvusIndex, connect
uri, token, collection, me = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
x = np.load(sys.argv[5])
index = MilvusIndex(connect(uri, token), collection, x.shape[1], uri=uri)
mine = np.arange(me * 1000, me * 1000 + 1000)
index.add(mine, x[mine])
index.remove([int(mine[0])])
deadline = time.monotonic() + 60
while index.ntotal != 1998 and time.monotonic() < deadline:  # until the other worker's writes show
    time.sleep(0.2)
theirs = np.arange((1 - me) * 1000, (1 - me) * 1000 + 1000)
_, found = index.search(x[theirs[1:21]], 1)
print(json.dumps({"ntotal": index.ntotal, "found": found[:, 0].tolist(), "gone": int(theirs[0]) in index}))
"""


def test_two_worker_processes_share_one_collection(server, tmp_path):
    """Two processes write one collection at once (as two backend workers or Ray tasks do); each
    then finds the other's vectors and misses the one the other removed."""
    from annotator.index.milvus_index import MilvusIndex

    uri, token, client = server
    x = normalised(2000, d=32)
    np.save(tmp_path / "x.npy", x)
    collection = f"t_{uuid.uuid4().hex}"
    MilvusIndex.create(client, collection, 32, n_expected=2000, uri=uri)
    command = [sys.executable, "-c", _WORKER, uri, token, collection]
    workers = [subprocess.Popen([*command, str(me), str(tmp_path / "x.npy")], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for me in (0, 1)]
    for me, worker in enumerate(workers):
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err[-2000:]
        result = json.loads(out.strip().splitlines()[-1])
        theirs = np.arange((1 - me) * 1000, (1 - me) * 1000 + 1000)
        assert result["ntotal"] == 1998 and result["gone"] is False
        assert result["found"] == theirs[1:21].tolist()
