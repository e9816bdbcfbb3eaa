import pytest

from annotator.labelstudio.label_config import LabelConfigError, parse_label_config

CONFIG = """
<View>
  <Image name="image" value="$image"/>
  <Text name="caption" value="$text"/>
  <Audio name="audio" value="$audio"/>
  <Choices name="category" toName="image" choice="single">
    <Choice value="Cat"/>
    <Choice value="Dog" alias="dog" predicted_values="puppy,hound"/>
  </Choices>
  <Choices name="second" toName="caption"><Choice value="x"/></Choices>
  <Labels name="ner" toName="caption"><Label value="PER"/></Labels>
</View>"""


def test_objects_choices_aliases_and_ignored_controls():
    cfg = parse_label_config(CONFIG)
    assert cfg.data_keys() == {"image": "image", "text": "text", "audio": "audio"}
    assert cfg.choices.name == "category" and cfg.choices.to_name == "image" and not cfg.choices.multiple
    assert cfg.choices.values == ("Cat", "Dog")
    assert set(cfg.ignored_controls) == {"second (Choices)", "ner (Labels)"}
    assert cfg.predicted_controls == ["category"]
    assert cfg.coverage_note() == "predicting <Choices> 'category' only; not predicted: second (Choices), ner (Labels)"
    result = [{"from_name": "category", "type": "choices", "value": {"choices": ["dog"]}},
              {"from_name": "second", "type": "choices", "value": {"choices": ["x"]}}]
    assert cfg.labels_from_result(result) == ["Dog"]
    assert cfg.choices.canonical("puppy") == "Dog" and cfg.choices.canonical("lion") is None
    assert cfg.region(["Dog"], 0.8) == {"from_name": "category", "to_name": "image", "type": "choices",
                                        "value": {"choices": ["dog"]}, "score": 0.8}
    assert cfg.item_data({"image": "/data/upload/1/a.png", "text": "", "audio": None}) == {"image": "/data/upload/1/a.png"}


def test_bad_configs_are_refused_with_a_reason():
    with pytest.raises(LabelConfigError, match="not valid XML"):
        parse_label_config("<View><Image")
    with pytest.raises(LabelConfigError, match="no Image, Text or Audio"):
        parse_label_config("<View><Header value='hi'/></View>")
