"""The encoders one process keeps loaded (one per modality) and their embedding caches.

Built once by a CLI command or the server's startup (see `annotator.runtime`), never at import and
never per request.
"""

from __future__ import annotations

import threading

from annotator.config import DEFAULT_MODEL, Settings
from annotator.encoders.base import Encoder, parts_key
from annotator.encoders.cache import EmbeddingCache
from annotator.errors import ConfigError


class Encoders:
    """Lazily loaded encoders (one per modality) and their embedding caches.

    Parameters
    ----------
    settings : Settings
        Model names per modality, device, batch size, cache folder.
    overrides : dict, optional
        Ready encoder objects by modality (tests and benchmarks inject small ones here).
    """

    def __init__(self, settings: Settings, overrides: dict[str, Encoder] | None = None):
        self.settings = settings
        self._encoders: dict[str, Encoder] = dict(overrides or {})
        self._caches: dict[str, EmbeddingCache] = {}
        self._parts_caches: dict[str, EmbeddingCache] = {}
        self._transcriber = None
        self._lock = threading.Lock()

    def model_name(self, modality: str) -> str:
        """The configured model; the ``mfcc-gru`` keyword is the encoder trained under the data folder."""
        name = getattr(self.settings, f"{modality}_model")
        if modality == "audio" and name == "mfcc-gru":
            from annotator.encoders.mfcc_gru import default_path

            path = default_path(self.settings.data_dir)
            if not (path / "weights.safetensors").is_file():
                raise ConfigError(f"ANNOTATOR_AUDIO_MODEL=mfcc-gru, but no such encoder is trained at {path} yet: "
                                  "run `annotator audio-encoder --project P` first")
            return str(path)
        return name

    def get(self, modality: str) -> Encoder:
        with self._lock:
            if modality not in self._encoders:
                from annotator.encoders.load import load_encoder

                self._encoders[modality] = load_encoder(
                    modality, self.model_name(modality), device=self.settings.device,
                    batch_size=self.settings.batch_size, runtime=self.settings.runtime, int8=self.settings.int8)
            return self._encoders[modality]

    def share_space(self, a: str, b: str) -> bool:
        """Whether modalities ``a`` and ``b`` are encoded into one native space (the two towers of
        one CLIP checkpoint). Asked without loading a model that cannot share one: the packaged
        defaults do not, and two towers of one checkpoint are configured by the same name (an
        image-only project's ``embed`` no longer loads the text model to find out: 6 s)."""
        names = {getattr(self.settings, f"{m}_model") for m in (a, b) if m not in self._encoders}
        if DEFAULT_MODEL in names or len(names) > 1:
            return False
        space = getattr(self.get(a), "space", None)
        return space is not None and space == getattr(self.get(b), "space", None)

    def cache(self, modality: str) -> EmbeddingCache:
        encoder = self.get(modality)
        with self._lock:
            if modality not in self._caches:
                self._caches[modality] = EmbeddingCache(self.settings.cache_dir, encoder.name, encoder.dim)
            return self._caches[modality]

    def parts_cache(self, modality: str) -> EmbeddingCache | None:
        """The cache of the encoder's part-level features (a float16 row of n_parts x dim per
        content), or None for an encoder that gives none (see `Encoder.n_parts`)."""
        encoder = self.get(modality)
        n_parts = int(getattr(encoder, "n_parts", 0) or 0)
        if not n_parts:
            return None
        with self._lock:
            if modality not in self._parts_caches:
                self._parts_caches[modality] = EmbeddingCache(self.settings.cache_dir, parts_key(encoder.name),
                                                              n_parts * encoder.dim, dtype="float16")
            return self._parts_caches[modality]

    def transcriber(self):
        """The Whisper transcriber (`annotator.encoders.transcribe`); the packaged model is shared
        with the default audio encoder (one that says it is ``shareable``) rather than loaded twice."""
        from annotator.encoders.base import resolve_device
        from annotator.encoders.transcribe import WhisperTranscriber

        path = None if self.settings.transcribe_model == DEFAULT_MODEL else self.settings.transcribe_model
        audio = self.get("audio") if path is None and self.settings.audio_model == DEFAULT_MODEL else None
        with self._lock:
            if self._transcriber is None:
                shared = audio.whisper_model if getattr(audio, "shareable", False) else None
                self._transcriber = WhisperTranscriber(path, model=shared, device=resolve_device(self.settings.device))
            return self._transcriber

    def transcriber_name(self) -> str:
        """The transcriber's name (its transcripts' cache key) without loading it."""
        from annotator.encoders.base import resolve_device
        from annotator.encoders.transcribe import transcriber_name

        path = None if self.settings.transcribe_model == DEFAULT_MODEL else self.settings.transcribe_model
        return transcriber_name(path, resolve_device(self.settings.device))

    def names(self) -> dict[str, str]:
        """Encoder name per modality loaded so far (recorded with every model version)."""
        return {m: e.name for m, e in self._encoders.items()}

    def describe(self) -> dict[str, dict[str, str]]:
        """Name and runtime (torch, onnx, onnx-int8, ctranslate2…) per modality loaded so far."""
        return {m: {"name": e.name, "runtime": getattr(e, "runtime", "torch")} for m, e in self._encoders.items()}

