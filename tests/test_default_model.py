"""The embedded default model (hugie/models/hugie-small): it loads with no argument, offline, and answers."""

import json

import pytest

from hugie.extractor import DEFAULT_MODEL_DIR, Extractor

pytestmark = pytest.mark.skipif(not (DEFAULT_MODEL_DIR / "config.json").exists(),
                                reason="the default model is not installed")

TEXT = "浙商银行企业信贷部叶老桂博士则从另一个角度对五道门槛进行了解读。"


@pytest.fixture(scope="module")
def default_extractor():
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("HUGIE_MODEL", raising=False)
        return Extractor.load()


def test_the_default_model_ships_within_the_size_budget():
    size = sum(f.stat().st_size for f in DEFAULT_MODEL_DIR.iterdir() if f.is_file())
    assert size <= 60 * 1024 * 1024
    for needed in ("config.json", "tokenizer.json", "encoder.onnx", "train_config.yaml", "README.md"):
        assert (DEFAULT_MODEL_DIR / needed).is_file(), needed


def test_the_default_model_loads_with_no_argument_on_the_onnx_backend(default_extractor):
    info = default_extractor.info()
    assert str(info["model"]) == str(DEFAULT_MODEL_DIR)
    assert info["backend"] == "onnx"
    config = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text(encoding="utf-8"))
    assert info["threshold"] == config["threshold"]
    assert info["relation_threshold"] == config["relation_threshold"]


def test_the_default_model_finds_the_person_in_chinese(default_extractor):
    found = default_extractor.extract_entities(TEXT, ["人名", "公司"])
    people = {(s.start, s.end, s.text) for s in found["人名"]}
    assert (9, 12, "叶老桂") in people
    assert all(TEXT[s.start:s.end] == s.text for spans in found.values() for s in spans)


def test_the_default_model_finds_the_person_in_english(default_extractor):
    text = "Barack Obama met Angela Merkel in Berlin on Tuesday."
    spans = default_extractor.extract("Find all entities of type [person].", text)
    assert {s.text for s in spans} >= {"Barack Obama", "Angela Merkel"}
    assert all(text[s.start:s.end] == s.text for s in spans)
