"""Whisper transcripts with the packaged model, on espeak-made speech, a tone and silence."""

import re

import numpy as np
import pytest

from annotator.encoders.transcribe import SHORT_CLIP_S, WhisperTranscriber
from annotator.media import load_audio
from tests.conftest import DATA


def clip(name: str) -> np.ndarray:
    return load_audio((DATA / name).read_bytes(), name)


@pytest.fixture
def transcriber(encoders):
    return encoders.transcriber()


def test_the_transcriber_shares_the_audio_encoders_model(encoders, transcriber):
    assert transcriber._model is encoders.get("audio").whisper_model
    assert transcriber.name == encoders.transcriber_name() == "whisper-ct2-int8:default"


def test_spoken_words_come_back_and_a_tone_or_silence_gives_nothing(transcriber):
    cat, coffee = clip("cat_speech.wav"), clip("coffee_speech.wav")
    texts = transcriber.transcribe([cat, clip("tone.wav"), coffee, np.zeros(16000, np.float32)])
    assert "sleeping" in texts[0].lower() and "sofa" in texts[0].lower()
    assert "coffee" in texts[2].lower()
    assert texts[1] == "" and texts[3] == ""
    assert transcriber.transcribe([]) == []


def test_a_long_clip_goes_the_long_way_and_a_looping_one_is_redone(transcriber, monkeypatch):
    cat = clip("cat_speech.wav")
    long = np.concatenate([cat, np.zeros(int(16000 * SHORT_CLIP_S), np.float32), cat])
    long_calls = []
    real_long = transcriber._transcribe_long
    monkeypatch.setattr(transcriber, "_transcribe_long", lambda c: long_calls.append(len(c)) or real_long(c))
    [text] = transcriber.transcribe([long])
    assert long_calls == [len(long)] and text.lower().count("sofa") == 2
    # a decoding that reaches the token cap (a loop) is done again the long way
    monkeypatch.setattr("annotator.encoders.transcribe.TOKENS_PER_S", 0)
    monkeypatch.setattr("annotator.encoders.transcribe.MIN_TOKENS", 5)
    long_calls.clear()
    [again] = transcriber.transcribe([cat])
    assert long_calls == [len(cat)] and "sofa" in again.lower()


def test_the_short_path_reads_the_same_words_as_faster_whispers_own(transcriber):
    cat = clip("cat_speech.wav")
    ours = set(re.findall(r"[\w']+", transcriber.transcribe([cat])[0].lower()))
    theirs = set(re.findall(r"[\w']+", WhisperTranscriber._transcribe_long(transcriber, cat).lower()))
    assert {"sleeping", "on", "the", "sofa"} <= ours & theirs
