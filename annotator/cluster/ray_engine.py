"""`RayEngine`: the batch jobs as Ray Data pipelines on a Ray cluster (``--engine ray``).

Encoding: the items to encode (those whose content is not cached yet) stream in blocks through
a media fetch stage (Ray tasks; threads and retries inside each) into an actor pool that loads the
encoder once per actor (one GPU each where the cluster has GPUs, else CPU actors that split the
node's cores). Vectors go into the same content-addressed embedding cache the local path writes,
so the cache folder must be shared storage on a multi-node cluster; a re-run encodes nothing.
Scoring: a second actor pool loads the model version once per actor and scores blocks of content
hashes from that cache. The driver only keeps a few small fields per item.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from annotator.config import Settings
from annotator.embedding import EmbedReport, uncached_items
from annotator.encoders.base import MODALITIES
from annotator.encoders.registry import Encoders
from annotator.errors import ConfigError
from annotator.media import sha256
from annotator.runtime import ActiveModel
from annotator.scoring import Scored
from annotator.store.models import Item

log = logging.getLogger("annotator.cluster")


class RayEngine:
    """Runs `annotator.batch.BatchEngine`'s jobs on Ray.

    Parameters
    ----------
    address : str, optional
        A running cluster (``ray://head:10001`` or ``auto``); default ``RAY_ADDRESS``; neither: a
        local cluster on this machine's cores, shut down by `close`.
    actors : int, optional
        Encoder/scoring actors. Default: one per GPU of the cluster, else one per two CPUs.
    parquet_dir : Path, optional
        Also write every new vector as Parquet shards under ``<parquet_dir>/<modality>/``.
    block_rows : int, default=64
        Items per block (one fetch task, one actor call).
    """

    name = "ray"
    in_process = False

    def __init__(self, settings: Settings, *, address: str | None = None, actors: int | None = None,
                 parquet_dir: Path | None = None, block_rows: int = 64):
        try:
            import ray
        except ImportError as exc:
            raise ConfigError("--engine ray needs Ray (pip install 'multimodal-annotator[scale]')") from exc
        self.settings, self.block_rows = settings, block_rows
        self.parquet_dir = str(Path(parquet_dir).resolve()) if parquet_dir else None
        self._started = False
        if not ray.is_initialized():
            address = address or os.environ.get("RAY_ADDRESS") or None
            # "local": a new cluster of our own, even where `ray start` left one that ray.init would join
            local = {} if address else {"num_cpus": os.cpu_count()}
            ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING, **local)
            self._started = True
        resources = ray.cluster_resources()
        self.gpus, self.cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        self.actors = actors or (self.gpus if self.gpus else max(1, self.cpus // 2))
        if not self.gpus and self.actors > self.cpus:
            self.close()
            raise ConfigError(f"--actors {self.actors}: the Ray cluster has {self.cpus} CPU(s) and no GPU, so at most "
                              f"{self.cpus} actor(s) can run")
        log.info("Ray cluster: %d CPU(s), %d GPU(s); %d actor(s)", self.cpus, self.gpus, self.actors)

    # --- resources ---------------------------------------------------------------------------

    def _actor_options(self, *, gpu: bool) -> dict[str, Any]:
        """One GPU per actor where the cluster has GPUs, else the CPUs split between the actors."""
        from ray.data import ActorPoolStrategy

        pool = ActorPoolStrategy(size=self.actors)
        if gpu and self.gpus:
            return {"compute": pool, "num_gpus": 1}
        return {"compute": pool, "num_cpus": self._cpus_per_actor}

    @property
    def _cpus_per_actor(self) -> int:
        """Also the threads each CPU actor's math libraries get (`annotator.cluster.stages.limit_threads`)."""
        return max(1, self.cpus // self.actors)

    def _worker_settings(self, *, gpu: bool) -> Settings:
        return self.settings.model_copy(update={"device": "cuda"}) if gpu and self.gpus else self.settings

    def _dataset(self, rows: list[dict[str, Any]]):
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False  # ours (tqdm) counts items
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        return ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // self.block_rows, 10_000)))

    # --- jobs --------------------------------------------------------------------------------

    def embed(self, items: Sequence[Item], *, encoders: Encoders, modalities: Sequence[str] = MODALITIES,
              progress: bool = True) -> EmbedReport:
        """`annotator.embedding.embed_items` on the cluster: same cache, same per-item failures.
        Every modality goes through one pipeline, so each actor starts (and loads its encoders) once."""
        started = time.perf_counter()
        report = EmbedReport(items=len(items))
        todo: list[tuple[Item, str]] = []
        for modality in modalities:
            having = [it for it in items if it.data.get(modality)]
            if having:
                missing = uncached_items(having, modality, encoders)
                report.cached[modality], report.encoded[modality] = len(having) - len(missing), 0
                todo += [(it, modality) for it in missing]
        if todo:
            self._encode(todo, report, progress)
        report.seconds = time.perf_counter() - started
        return report

    def _encode(self, todo: list[tuple[Item, str]], report: EmbedReport, progress: bool) -> None:
        from ray.data import TaskPoolStrategy

        from annotator.cluster.fetch import fetch_media
        from annotator.cluster.stages import EncodeActor

        rows = []
        for position, (it, modality) in enumerate(todo):
            ref, sha = it.data[modality], ""
            if modality == "text":  # hashed here; media are hashed when fetched
                ref, sha = ref[:self.settings.max_text_chars], it.text_sha or sha256(ref.encode("utf-8"))
            rows.append({"position": position, "modality": modality, "ref": ref, "sha": sha,
                         "task": it.ls_task_id if it.ls_task_id is not None else -1})
        # downloads wait on the network, not a core: fetch tasks take no CPU slot, a few per node (each
        # fetches on its own threads) keep the actors fed
        ds = self._dataset(rows).map_batches(fetch_media, fn_kwargs={"settings": self.settings}, batch_format="pandas",
                                             batch_size=self.block_rows, num_cpus=0,
                                             compute=TaskPoolStrategy(size=2 * max(1, self.actors)))
        ds = ds.map_batches(EncodeActor, fn_constructor_kwargs={
            "settings": self._worker_settings(gpu=True), "parquet_dir": self.parquet_dir,
            "threads": 0 if self.gpus else self._cpus_per_actor},
            batch_format="pandas", batch_size=self.block_rows, **self._actor_options(gpu=True))
        bar = tqdm(total=len(todo), desc="encode (ray)", unit="item", file=sys.stderr, disable=not progress)
        for batch in ds.iter_batches(batch_format="pandas", batch_size=None):
            for row in batch.itertuples(index=False):
                it, modality = todo[int(row.position)]
                if row.error:
                    report.failed.append({"id": it.external_id, "modality": modality, "error": row.error})
                    continue
                setattr(it, f"{modality}_sha", row.sha)
                report.encoded[modality] += int(row.encoded)
            bar.update(len(batch))
        bar.close()

    def score(self, items: Sequence[Item], *, encoders: Encoders, model: ActiveModel, progress: bool = True) -> Scored:
        """`annotator.scoring.score_cached` on the cluster."""
        from annotator.cluster.stages import ScoreActor

        if not model.artifact_path:
            raise ConfigError(f"model {model.version} has no stored artifact for the cluster's workers to load")
        caches = {m: (encoders.cache(m).encoder_name, encoders.cache(m).dim,
                      int(getattr(encoders.get(m), "n_parts", 0) or 0)) for m in model.modalities}
        rows = [{"position": i, **{f"{m}_sha": (getattr(it, f"{m}_sha") or "") if it.data.get(m) else ""
                                   for m in model.modalities}} for i, it in enumerate(items)]
        if not rows:
            return Scored.concat([])
        ds = self._dataset(rows).map_batches(
            ScoreActor, fn_constructor_kwargs={"settings": self.settings, "version": model.version,
                                               "artifact_path": model.artifact_path, "caches": caches,
                                               "threads": self._cpus_per_actor},
            batch_format="pandas", batch_size=max(self.block_rows, 1024), **self._actor_options(gpu=False))
        parts = []
        for batch in ds.iter_batches(batch_format="pandas", batch_size=None):
            if not len(batch):
                continue
            labels = list(batch["labels"]) if model.classifier.multilabel else [lab[0] for lab in batch["labels"]]
            parts.append(Scored(batch["position"].to_numpy(np.int64), [list(x) if isinstance(x, np.ndarray) else x
                                                                      for x in labels],
                                batch["score"].to_numpy(), np.stack(batch["probs"]), np.stack(batch["shares"])))
        scored = Scored.concat(parts)
        order = np.argsort(scored.rows, kind="stable")  # blocks come back in any order
        return Scored(scored.rows[order], [scored.labels[i] for i in order], scored.scores[order],
                      scored.probs[order], scored.shares[order])

    # --- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Shut down the local cluster this engine started (a joined cluster keeps running)."""
        if self._started:
            import ray

            ray.shutdown()
            self._started = False

    def __enter__(self) -> RayEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
