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


def test_objects_controls_aliases_and_ignored_controls():
    cfg = parse_label_config(CONFIG)
    assert cfg.data_keys() == {"image": "image", "text": "text", "audio": "audio"}
    primary, second = cfg.controls
    assert cfg.primary is primary and primary.name == "category" and primary.to_name == "image"
    assert not primary.multiple and primary.values == ("Cat", "Dog")
    assert cfg.control_key(primary) is None and cfg.control_key(second) == "second"
    assert cfg.ignored_controls == ("ner (Labels)",)
    assert cfg.predicted_controls == ["category", "second"]
    assert cfg.coverage_note() == "predicting category (Choices), second (Choices); not predicted: ner (Labels)"
    result = [{"from_name": "category", "type": "choices", "value": {"choices": ["dog"]}},
              {"from_name": "second", "type": "choices", "value": {"choices": ["x"]}}]
    assert cfg.labels_from_result(result) == ["Dog"] and second.labels_from_result(result) == ["x"]
    assert primary.canonical("puppy") == "Dog" and primary.canonical("lion") is None
    assert cfg.region(["Dog"], 0.8) == {"from_name": "category", "to_name": "image", "type": "choices",
                                        "value": {"choices": ["dog"]}, "score": 0.8}
    assert cfg.item_data({"image": "/data/upload/1/a.png", "text": "", "audio": None}) == {"image": "/data/upload/1/a.png"}


TAXONOMY = """
<View>
  <Text name="text" value="$text"/>
  <Taxonomy name="kind" toName="text" maxUsages="2">
    <Choice value="Animal">
      <Choice value="Mammal" alias="mammalia"/>
      <Choice value="Bird"/>
    </Choice>
    <Choice value="Plant"/>
  </Taxonomy>
  <Taxonomy name="leaf" toName="text" leafsOnly="true">
    <Choice value="A"><Choice value="B"/></Choice>
  </Taxonomy>
</View>"""


def test_a_taxonomy_predicts_paths_and_reads_them_back():
    cfg = parse_label_config(TAXONOMY)
    kind, leaf = cfg.controls
    assert kind.tag == "Taxonomy" and kind.multiple and not leaf.multiple
    assert kind.values == ("Animal", "Animal / Mammal", "Animal / Bird", "Plant")
    assert leaf.values == ("A / B",)  # leafsOnly: inner nodes are not classes
    result = [{"from_name": "kind", "type": "taxonomy", "value": {"taxonomy": [["Animal", "mammalia"], ["Plant"]]}},
              {"from_name": "kind", "type": "taxonomy", "value": {"taxonomy": [["Animal", "Unknown"]]}}]
    assert kind.labels_from_result(result) == ["Animal / Mammal", "Plant"]  # an alias maps back, an unknown path is dropped
    assert kind.region(["Animal / Mammal", "Plant"], 0.7) == {
        "from_name": "kind", "to_name": "text", "type": "taxonomy",
        "value": {"taxonomy": [["Animal", "mammalia"], ["Plant"]]}, "score": 0.7}
    assert cfg.coverage_note() is None


def test_a_config_without_classification_controls_says_so():
    cfg = parse_label_config('<View><Text name="t" value="$text"/><Labels name="ner" toName="t"><Label value="P"/></Labels></View>')
    assert cfg.primary is None and cfg.controls == () and cfg.labels_from_result([]) == []
    assert "nothing in this label config is predicted" in cfg.coverage_note() and "ner (Labels)" in cfg.coverage_note()


def test_bad_configs_are_refused_with_a_reason():
    with pytest.raises(LabelConfigError, match="not valid XML"):
        parse_label_config("<View><Image")
    with pytest.raises(LabelConfigError, match="two controls with the same name"):
        parse_label_config('<View><Text name="t" value="$text"/><Choices name="c" toName="t"/><Taxonomy name="c" toName="t"/></View>')
    with pytest.raises(LabelConfigError, match="no Image, Text or Audio"):
        parse_label_config("<View><Header value='hi'/></View>")
