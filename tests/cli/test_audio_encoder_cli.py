"""`annotator audio-encoder`: the project's own MFCC-GRU, trained from the command line, then used
as the audio model (ANNOTATOR_AUDIO_MODEL=mfcc-gru) by `embed`."""

import json

from annotator.sample_data import SAMPLE_DIR
from tests.cli.test_cli import run_cli


def test_train_the_audio_encoder_then_embed_with_it(tmp_path):
    env = {"ANNOTATOR_DATA_DIR": str(tmp_path / "data")}
    run_cli("import", str(SAMPLE_DIR / "items.jsonl"), "--project", "p", env_extra=env, check=True)
    before = run_cli("embed", "--project", "p", env_extra={**env, "ANNOTATOR_AUDIO_MODEL": "mfcc-gru"})
    assert before.returncode == 2 and "annotator audio-encoder --project" in before.stderr
    assert "Traceback" not in before.stderr

    result = json.loads(run_cli("audio-encoder", "--project", "p", "--json", env_extra=env, check=True).stdout)
    labelled_audio = [r for r in map(json.loads, (SAMPLE_DIR / "items.jsonl").read_text().splitlines())
                      if "audio" in r and "label" in r]
    assert result["trained_on"] == "labels" and result["clips"] == len(labelled_audio) and result["failed"] == []
    assert result["use"] == "ANNOTATOR_AUDIO_MODEL=mfcc-gru"

    report = json.loads(run_cli("embed", "--project", "p", "--json", check=True,
                                env_extra={**env, "ANNOTATOR_AUDIO_MODEL": "mfcc-gru"}).stdout)
    assert report["encoded"]["audio"] == 16 and report["failed"] == []
