"""The model commands end to end, as a user runs them: real models, real SQLite, JSON on stdout."""

import json

from tests.cli.test_cli import run_cli


def test_demo_then_retrain_predict_and_rollback(tmp_path):
    env = {"ANNOTATOR_DATA_DIR": str(tmp_path / "data")}
    demo = json.loads(run_cli("demo", "--offline", "--json", env_extra=env, check=True).stdout)
    assert demo["imported"] == 48 and demo["model_version"] == "v1" and demo["promoted"]
    assert demo["model"]  # the candidate chosen on the sample's own labels
    assert len(demo["predictions"]) == 24  # the unlabelled half
    assert demo["metrics"]["accuracy"] > 0.5  # four classes: chance is 0.25

    embed = json.loads(run_cli("embed", "--project", "demo", "--json", env_extra=env, check=True).stdout)
    assert embed["items"] == 48 and sum(embed["encoded"].values()) == 0  # all cached by the demo

    retrained = json.loads(run_cli("retrain", "--project", "demo", "--head", "concat", "--force", "--json",
                                   "--no-self-training", env_extra=env, check=True).stdout)
    assert retrained["model_version"] == "v2" and retrained["promoted"] is True
    assert set(retrained["metrics"]) == {"accuracy", "macro_f1", "ece"} and retrained["n_labels"] == 24
    assert retrained["model"] == "concat" and [r["name"] for r in retrained["candidates"]][0] == "concat"
    assert any(r["name"].startswith("active v1: ") for r in retrained["candidates"])  # compared like with like
    assert retrained["why"]
    # v2 and v1 labelled the demo's 24 unlabelled items; one comparison is not yet enough to stop
    assert retrained["stopping"]["compared_with"] == "v1" and retrained["stopping"]["stop_set"] == 24
    assert retrained["stopping"]["signal"] == "keep going" and -1 <= retrained["stopping"]["kappa"] <= 1

    predictions = json.loads(run_cli("predict", "--project", "demo", "--json", env_extra=env, check=True).stdout)
    assert len(predictions) == 48
    assert {"id", "label", "score", "model_version"} <= set(predictions[0])
    assert {p["model_version"] for p in predictions} == {"v2"}

    run_cli("models", "promote", "v1", "--project", "demo", env_extra=env, check=True)
    versions = json.loads(run_cli("models", "list", "--project", "demo", "--json", env_extra=env, check=True).stdout)
    assert [(v["version"], v["status"]) for v in versions] == [("v1", "active"), ("v2", "retired")]
    v1 = versions[0]
    assert v1["model"] == demo["model"] and sum(r["chosen"] for r in v1["candidates"]) == 1
    assert {"logreg", "concat", "attention"} <= {r["name"] for r in v1["candidates"]}
    table = run_cli("models", "list", "--project", "demo", env_extra=env, check=True).stdout
    assert "chosen because:" in table and "macro-F1" in table and f"* {demo['model']}" in table
    assert "labelling: keep going" in table

    bad = run_cli("retrain", "--project", "demo", "--head", "mlp", env_extra=env)
    assert bad.returncode == 1 and "unknown model 'mlp'" in bad.stderr and "auto" in bad.stderr

    item = predictions[0]["id"]
    picture = tmp_path / "why.png"
    why = json.loads(run_cli("explain", "--project", "demo", "--item", item, "--out", str(picture), "--json",
                             env_extra=env, check=True).stdout)
    assert why["model_version"] == "v1" and why["item"] == item and why["label"] == why["top_classes"][0]["label"]
    assert picture.stat().st_size > 10_000
    uses = set(why["modality_weights"])  # the modalities v1 was chosen on: each one it uses is explained
    assert (why["image_heatmap"] is not None) == ("image" in uses) and bool(why["words"]) == ("text" in uses)
    assert why["image_heatmap"] is None or len(why["image_heatmap"]) == 7
