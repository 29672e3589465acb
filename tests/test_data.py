import json

import pytest

from hugie.data import (
    apply_label_map,
    convert_cluener,
    convert_conll,
    convert_duie,
    load_label_map,
    read_jsonl,
    write_jsonl,
)
from hugie.errors import HugieError


def write(tmp_path, name, lines):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def test_reader_roundtrip(tmp_path):
    rec = {"id": "a", "text": "张三在北京", "entities": [{"type": "人名", "start": 0, "end": 2, "text": "张三"}],
           "relations": [{"subject": {"start": 0, "end": 2, "text": "张三", "type": "人名"}, "predicate": "位于",
                          "object": {"start": 3, "end": 5, "text": "北京", "type": "地名"}}]}
    p = write(tmp_path, "d.jsonl", [json.dumps(rec, ensure_ascii=False), ""])
    (r,) = list(read_jsonl(p))
    assert r.entities[0].text == "张三" and r.relations[0].object.text == "北京"
    out = tmp_path / "o.jsonl"
    assert write_jsonl([r], out) == 1
    assert json.loads(out.read_text())["relations"][0]["predicate"] == "位于"


@pytest.mark.parametrize("line,field", [
    ('{"text": 5}', "text"),
    ('{"text": "abc", "entities": [{"type": "x", "start": 0, "end": 9}]}', "entities[0]"),
    ('{"text": "abc", "entities": [{"type": "x", "start": 0, "end": 2, "text": "zz"}]}', "entities[0].text"),
    ('{"text": "abc", "entities": [{"type": "x", "start": "0", "end": 2}]}', "entities[0].start"),
    ('{"text": "abc", "relations": [{"subject": {"start": 0, "end": 1}, "object": {"start": 1, "end": 2}}]}',
     "relations[0].predicate"),
])
def test_reader_errors_name_file_line_and_field(tmp_path, line, field):
    p = write(tmp_path, "bad.jsonl", ['{"text": "ok"}', line])
    with pytest.raises(HugieError) as exc:
        list(read_jsonl(p))
    assert "bad.jsonl:2" in str(exc.value) and repr(field) in str(exc.value)


def test_reader_invalid_json_names_line(tmp_path):
    p = write(tmp_path, "bad.jsonl", ['{"text": "ok"}', "{oops"])
    with pytest.raises(HugieError, match=r"bad.jsonl:2: invalid JSON"):
        list(read_jsonl(p))


def test_cluener_converter(tmp_path):
    obj = {"text": "浙商银行企业信贷部叶老桂博士", "label": {"name": {"叶老桂": [[9, 11]]}, "company": {"浙商银行": [[0, 3]]}}}
    p = write(tmp_path, "c.json", [json.dumps(obj, ensure_ascii=False)])
    (r,) = list(convert_cluener(p))
    assert {(e.type, e.text) for e in r.entities} == {("name", "叶老桂"), ("company", "浙商银行")}
    bad = write(tmp_path, "c2.json", [json.dumps({"text": "abc", "label": {"x": {"zz": [[0, 1]]}}})])
    with pytest.raises(HugieError, match="c2.json:1"):
        list(convert_cluener(bad))


def test_duie_converter_locates_first_occurrence_and_flattens_complex_objects(tmp_path):
    obj = {"text": "《喜剧之王》由周星驰主演，周星驰饰演尹天仇",
           "spo_list": [{"subject": "喜剧之王", "subject_type": "影视作品", "predicate": "主演",
                         "object": {"@value": "周星驰"}, "object_type": {"@value": "人物"}},
                        {"subject": "周星驰", "predicate": "饰演", "object": {"@value": "尹天仇", "inWork": "喜剧之王"},
                         "subject_type": "娱乐人物", "object_type": {"@value": "角色", "inWork": "影视作品"}}]}
    p = write(tmp_path, "d.json", [json.dumps(obj, ensure_ascii=False)])
    (r,) = list(convert_duie(p))
    preds = {(x.subject.text, x.predicate, x.object.text) for x in r.relations}
    assert ("喜剧之王", "主演", "周星驰") in preds and ("周星驰", "饰演_inWork", "喜剧之王") in preds
    assert next(x for x in r.relations if x.predicate == "主演").object.start == 7
    missing = write(tmp_path, "m.json", [json.dumps({"text": "abc", "spo_list": [
        {"subject": "zz", "predicate": "p", "object": "a"}]})])
    with pytest.raises(HugieError, match="does not occur"):
        list(convert_duie(missing))


@pytest.mark.parametrize("scheme,tags", [
    ("bio", ["B-PER", "I-PER", "O", "B-LOC", "I-LOC"]),
    ("bioes", ["B-PER", "E-PER", "O", "B-LOC", "E-LOC"]),
    ("bmes", ["B-PER", "E-PER", "O", "B-LOC", "E-LOC"]),
])
def test_conll_converter_chinese_characters(tmp_path, scheme, tags):
    chars = list("张三在北京")
    p = write(tmp_path, "c.conll", [f"{c} {t}" for c, t in zip(chars, tags)] + ["", "他 O", "好 O"])
    recs = list(convert_conll(p, scheme=scheme))
    assert recs[0].text == "张三在北京"
    assert [(e.text, e.type) for e in recs[0].entities] == [("张三", "PER"), ("北京", "LOC")]
    assert recs[1].entities == []


def test_conll_converter_english_singletons_and_docstart(tmp_path):
    lines = ["-DOCSTART- -X- O O", "", "EU NNP B-NP S-ORG", "rejects VBZ B-VP O", "German JJ B-NP S-MISC",
             "New NNP I-NP B-LOC", "York NNP I-NP M-LOC", "City NNP I-NP E-LOC"]
    p = write(tmp_path, "e.conll", lines)
    (r,) = list(convert_conll(p, scheme="bmes"))
    assert r.text == "EU rejects German New York City"
    assert [(e.text, e.type) for e in r.entities] == [("EU", "ORG"), ("German", "MISC"), ("New York City", "LOC")]
    with pytest.raises(HugieError, match="e.conll:1"):
        list(convert_conll(write(tmp_path, "e.conll", ["lonely"]), scheme="bio"))


def test_label_map(tmp_path):
    p = tmp_path / "m.json"
    p.write_text(json.dumps({"PER": "人名", "lives": "居住"}), encoding="utf-8")
    mapping = load_label_map(p)
    rec = next(iter(read_jsonl(write(tmp_path, "r.jsonl", [json.dumps({
        "text": "ab", "entities": [{"type": "PER", "start": 0, "end": 1}],
        "relations": [{"subject": {"start": 0, "end": 1, "type": "PER"}, "predicate": "lives",
                       "object": {"start": 1, "end": 2, "type": "X"}}]})]))))
    mapped = apply_label_map(rec, mapping)
    assert mapped.entities[0].type == "人名" and mapped.relations[0].predicate == "居住"
    assert mapped.relations[0].object.type == "X"
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(HugieError, match="E025"):
        load_label_map(tmp_path / "bad.json")


def test_label_map_with_several_names(tmp_path):
    p = tmp_path / "m.json"
    p.write_text(json.dumps({"GPE": ["行政区", "地名"], "lives": ["居住", "位于"]}), encoding="utf-8")
    rec = next(iter(read_jsonl(write(tmp_path, "r.jsonl", [json.dumps({
        "text": "ab", "entities": [{"type": "GPE", "start": 0, "end": 1}, {"type": "PER", "start": 1, "end": 2}],
        "relations": [{"subject": {"start": 1, "end": 2, "type": "PER"}, "predicate": "lives",
                       "object": {"start": 0, "end": 1, "type": "GPE"}}]})]))))
    mapped = apply_label_map(rec, load_label_map(p))
    assert [(e.type, e.start) for e in mapped.entities] == [("行政区", 0), ("地名", 0), ("PER", 1)]
    assert [r.predicate for r in mapped.relations] == ["居住", "位于"]
    assert {r.object.type for r in mapped.relations} == {"行政区"}
    for bad in ({"GPE": []}, {"GPE": ["ok", 3]}, {"GPE": ""}):
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(HugieError, match="E025"):
            load_label_map(tmp_path / "bad.json")
