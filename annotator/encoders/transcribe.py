"""Speech to text with Whisper on CTranslate2 (faster-whisper): transcripts that pre-fill a
``<TextArea>`` on an audio object, and a text view of audio items in projects without text.

Our own batching rather than faster-whisper's ``transcribe``: that pads every clip to Whisper's
30 s window, one clip at a time, and the encoder's cost is the window's, not the speech's. Here a
short clip is padded to `MIN_WINDOW_S` (or its length plus `TRAILING_SILENCE_S`, if longer) and
clips of one padded length are decoded together (beam search, like faster-whisper's default).
``bench/bench_transcribe.py`` measured the choice on the same clips: windows of the clip's length
plus 1 s looped badly (word error rate above 1); with a 10 s floor the word error rate was 0.36
against faster-whisper's 0.32, with 15 s 0.32 and with 20 s 0.29, in less than half its time.
A short window still loops now and then (Whisper repeats its last
phrase), so a transcript that reaches a token cap set by the clip's duration, or compresses like a
loop (Whisper's own test: zlib ratio above `COMPRESSION_RATIO_THRESHOLD`), is done again through
faster-whisper's own long-form path, as is a clip longer than `SHORT_CLIP_S`.
"""

from __future__ import annotations

from collections.abc import Sequence

import zlib

import numpy as np

from annotator.encoders.audio import SAMPLE_RATE, default_audio_model_path

TRAILING_SILENCE_S = 1.0
MIN_WINDOW_S = 20.0
BEAM_SIZE = 5  # faster-whisper's default; greedy decoding lost words on the benchmark's clips
SHORT_CLIP_S = 28.0  # with the trailing silence it still fits one 30 s window
TOKENS_PER_S = 8  # fast speech is 4–6 tokens a second: more than this is a loop
MIN_TOKENS = 16  # the token cap is MIN_TOKENS + TOKENS_PER_S * padded seconds
NO_SPEECH_THRESHOLD = 0.6  # faster-whisper's: above it, and with a low log-probability, no speech
LOGPROB_THRESHOLD = -1.0
COMPRESSION_RATIO_THRESHOLD = 2.4  # Whisper's and faster-whisper's: above it the text repeats itself


def transcriber_name(model_path: str | None, device: str) -> str:
    """What transcripts are cached under: the model and its CTranslate2 compute type."""
    return f"whisper-ct2-{default_compute_type(device)}:{'default' if model_path is None else model_path}"


def default_compute_type(device: str) -> str:
    return "int8" if device == "cpu" else "float16"


class WhisperTranscriber:
    """Greedy Whisper transcription of 16 kHz mono clips, batched.

    Parameters
    ----------
    model_path : str, optional
        A CTranslate2 Whisper model folder (or a faster-whisper model name, which downloads from
        the Hugging Face hub); default: the packaged Whisper tiny.en.
    model : faster_whisper.WhisperModel, optional
        An already loaded model to share (the Whisper audio encoder's, loaded on ``device`` with
        its default compute type).
    language : str, optional
        For a multilingual model: the language code; None detects it per clip.
    """

    def __init__(self, model_path: str | None = None, *, model=None, device: str = "cpu",
                 compute_type: str | None = None, batch_size: int = 8, language: str | None = None):
        from faster_whisper import WhisperModel

        self._model = model or WhisperModel(model_path or default_audio_model_path(), device=device,
                                            compute_type=compute_type or default_compute_type(device))
        self._fe = self._model.feature_extractor
        self.batch_size, self.language = batch_size, language
        self.multilingual = bool(self._model.model.is_multilingual)
        self.name = transcriber_name(model_path, device)

    def _tokenizer(self, language: str | None):
        from faster_whisper.tokenizer import Tokenizer

        return Tokenizer(self._model.hf_tokenizer, self.multilingual, task="transcribe",
                         language=(language or "en") if self.multilingual else None)

    def transcribe(self, clips: Sequence[np.ndarray]) -> list[str]:
        """One transcript per clip ("" where there is no speech)."""
        out = [""] * len(clips)
        short = [i for i, c in enumerate(clips) if len(c) <= SHORT_CLIP_S * SAMPLE_RATE]
        groups: dict[int, list[int]] = {}
        for i in short:
            groups.setdefault(self._padded_length(len(clips[i])), []).append(i)
        retry = [i for i in range(len(clips)) if i not in set(short)]
        for length, members in sorted(groups.items()):
            for start in range(0, len(members), self.batch_size):
                batch = members[start:start + self.batch_size]
                for i, text in zip(batch, self._transcribe_short([clips[i] for i in batch], length)):
                    if text is None:
                        retry.append(i)
                    else:
                        out[i] = text
        for i in sorted(retry):
            out[i] = self._transcribe_long(clips[i])
        return out

    @staticmethod
    def _padded_length(n_samples: int) -> int:
        """The clip's length plus the trailing silence, rounded up to a whole second, at least
        `MIN_WINDOW_S`."""
        seconds = max(MIN_WINDOW_S, np.ceil(n_samples / SAMPLE_RATE + TRAILING_SILENCE_S))
        return int(seconds) * SAMPLE_RATE

    def _transcribe_short(self, clips: list[np.ndarray], length: int) -> list[str | None]:
        """Transcripts of clips padded to ``length`` samples, in one batch; None for a clip whose
        decoding reached the token cap (to be done again the long way)."""
        import ctranslate2

        n_frames = min(self._fe.nb_max_frames, length // self._fe.hop_length)
        feats = np.stack([self._fe(np.pad(c, (0, length - len(c))), padding=0)[:, :n_frames] for c in clips])
        encoded = self._model.model.encode(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(feats, dtype=np.float32)), to_cpu=False)
        languages = [self.language] * len(clips)
        if self.multilingual and self.language is None:
            languages = [r[0][0].strip("<|>") for r in self._model.model.detect_language(encoded)]
        tokenizers = {lang: self._tokenizer(lang) for lang in set(languages)}
        prompts = [list(tokenizers[lang].sot_sequence) + [tokenizers[lang].no_timestamps] for lang in languages]
        cap = int(MIN_TOKENS + TOKENS_PER_S * length / SAMPLE_RATE)
        results = self._model.model.generate(encoded, prompts, beam_size=BEAM_SIZE, max_length=cap,
                                             suppress_blank=True, suppress_tokens=[-1], return_no_speech_prob=True,
                                             return_scores=True)
        out: list[str | None] = []
        for lang, result in zip(languages, results):
            tokenizer = tokenizers[lang]
            ids = result.sequences_ids[0]
            if result.no_speech_prob > NO_SPEECH_THRESHOLD and result.scores[0] < LOGPROB_THRESHOLD:
                out.append("")
            elif len(ids) >= cap - len(prompts[0]) - 1:
                out.append(None)
            else:
                text = tokenizer.decode([t for t in ids if t < tokenizer.eot]).strip()
                out.append(None if _compression_ratio(text) > COMPRESSION_RATIO_THRESHOLD else text)
        return out

    def _transcribe_long(self, clip: np.ndarray) -> str:
        # beam search here too: greedy decoding read other words than the short path on a CPU whose
        # int8 arithmetic differs (the int8 model's scores shift from machine to machine)
        segments, _ = self._model.transcribe(clip, beam_size=BEAM_SIZE, vad_filter=True,
                                             language=self.language if self.multilingual else None)
        return " ".join(s.text.strip() for s in segments).strip()


def _compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0
