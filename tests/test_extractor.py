import pytest

from hugie.errors import HugieError
from hugie.extractor import Extractor
from hugie.modeling import HugieConfig
from tests.helpers import FakeBackend

PER = "找到文章中所有【人名】类型的实体？"
LOC = "找到文章中所有【地名】类型的实体？"


def make(tiny_tokenizer, answers, **kw):
    cfg = HugieConfig(max_span_width=16, threshold=0.5, max_seq_length=kw.pop("max_len", 128))
    backend = FakeBackend(tiny_tokenizer, answers)
    return Extractor(backend, tiny_tokenizer, cfg, **kw), backend


def test_single_and_batched_extract_keep_order(tiny_tokenizer):
    ex, backend = make(tiny_tokenizer, {PER: [("张三", 0.9), ("李四", 0.7)], LOC: [("北京", 0.8)]}, batch_size=2)
    text = "张三和李四在北京"
    spans = ex.extract(PER, text)
    assert [(s.text, s.start, s.end) for s in spans] == [("张三", 0, 2), ("李四", 3, 5)]
    assert spans[0].score == pytest.approx(0.9, abs=1e-4)
    pairs = [(LOC, text), (PER, "李四"), (PER, text), (LOC, "上海")]
    out = ex.extract(pairs)
    assert [[s.text for s in r] for r in out] == [["北京"], ["李四"], ["张三", "李四"], []]
    assert max(backend.calls) <= 2


def test_threshold_and_top_k(tiny_tokenizer):
    ex, _ = make(tiny_tokenizer, {PER: [("张三", 0.9), ("李四", 0.7)]})
    assert [s.text for s in ex.extract(PER, "张三和李四", threshold=0.8)] == ["张三"]
    assert [s.text for s in ex.extract(PER, "张三和李四", top_k=1)] == ["张三"]
    assert len(ex.extract(PER, "张三和李四", threshold=0.0)) == 2
    for bad in (1.5, -0.1, "x"):
        with pytest.raises(HugieError, match="E003"):
            ex.extract(PER, "张三", threshold=bad)
    with pytest.raises(HugieError, match="E004"):
        ex.extract(PER, "张三", top_k=0)


def test_offsets_index_hostile_original_text(tiny_tokenizer):
    ex, _ = make(tiny_tokenizer, {PER: [("张三", 0.9)]})
    text = "😀\r\n＂e\u0301 张三😀张三"
    spans = ex.extract(PER, text)
    assert len(spans) == 2
    for s in spans:
        assert text[s.start:s.end] == s.text == "张三"


def test_long_text_is_windowed_and_merged(tiny_tokenizer):
    ex, backend = make(tiny_tokenizer, {PER: [("王小明", 0.9)]}, max_len=40)
    text = "。".join(f"第{i}句王小明去了北京" for i in range(12))
    spans = ex.extract(PER, text)
    assert len(spans) == 12, "every mention found exactly once, across windows"
    assert all(text[s.start:s.end] == "王小明" for s in spans)
    assert sum(backend.calls) > 1
    assert (ex.tokenizer.max_length, tiny_tokenizer.max_length) == (40, 128), "the caller's tokenizer keeps its limit"


def test_bad_inputs_raise_catalogued_errors(tiny_tokenizer):
    ex, _ = make(tiny_tokenizer, {})
    with pytest.raises(HugieError, match="E002"):
        ex.extract("", "text")
    with pytest.raises(HugieError, match="E001"):
        ex.extract(PER, 5)
    with pytest.raises(HugieError, match="E008"):
        ex.extract([("only one",)])
    with pytest.raises(HugieError, match="E007"):
        ex.extract("人" * 200, "张三")
    with pytest.raises(HugieError, match="E009"):
        ex.extract_entities("张三", [])
    with pytest.raises(HugieError, match="E005"):
        ex.extract_schema("张三", {"types": []})
    with pytest.raises(HugieError, match="E006"):
        ex.extract_schema("张三", {"relations": [{"subject": "人名"}]})
    with pytest.raises(HugieError, match="E009"):
        ex.extract_schema("张三", {"relations": [{"subject": "", "predicate": "出生地"}]})
    with pytest.raises(HugieError, match=r"E029\] invalid request: one_type_per_span: Input should be a valid boolean"):
        ex.extract_schema("张三", {"entities": ["人名"], "one_type_per_span": "sometimes"})
    assert ex.extract(PER, "") == []


def test_extract_entities_and_schema_chaining(tiny_tokenizer):
    answers = {PER: [("张三", 0.9), ("李四", 0.8)], LOC: [("北京", 0.9), ("上海", 0.6)],
               "找到文章中【张三】的【出生地】？": [("北京", 0.5 + 0.4)],
               "找到文章中【李四】的【出生地】？": [("上海", 0.75)]}
    ex, backend = make(tiny_tokenizer, answers)
    text = "张三出生于北京，李四出生于上海"
    ents = ex.extract_entities(text, ["人名", "地名"])
    assert [s.text for s in ents["人名"]] == ["张三", "李四"]
    backend.calls.clear()
    result = ex.extract_schema(text, {"entities": ["地名"],
                                      "relations": [{"subject": "人名", "predicate": "出生地", "object": "地名"}]})
    assert {(e.type, e.text) for e in result.entities} == {
        ("地名", "北京"), ("地名", "上海"), ("人名", "张三"), ("人名", "李四")}
    triples = {(r.subject.text, r.predicate, r.object.text) for r in result.relations}
    assert triples == {("张三", "出生地", "北京"), ("李四", "出生地", "上海")}
    rel = next(r for r in result.relations if r.subject.text == "李四")
    assert rel.score == pytest.approx(0.8 * 0.75, abs=1e-3) and rel.object.type == "地名"
    assert len(backend.calls) == 2, "one batched entity pass, one batched relation pass"


def test_english_instructions_are_chosen_for_english_text(tiny_tokenizer):
    ex, _ = make(tiny_tokenizer, {"Find all entities of type [person].": [("Alice", 0.9)]})
    assert [s.text for s in ex.extract_entities("Alice went to Paris.", ["person"])["person"]] == ["Alice"]


def test_a_missing_model_path_is_named_without_asking_the_hub(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda *a, **k: pytest.fail("a filesystem path must not go to the hub"))
    for missing in (tmp_path / "nope", "./nope", "runs/a/b"):
        with pytest.raises(HugieError) as err:
            Extractor.load(missing)
        assert err.value.code == "E015"
        assert "no such directory" in str(err.value) and str(missing) in str(err.value)


def test_one_type_per_span_keeps_the_best_scoring_type(tiny_tokenizer):
    from hugie.data import EntitySpan, Record
    from hugie.evaluation import evaluate_ner

    answers = {PER: [("张三", 0.9), ("北京", 0.6)], LOC: [("北京", 0.8), ("张三", 0.55)],
               "找到文章中【张三】的【出生地】？": [("北京", 0.9)],
               "找到文章中【北京】的【出生地】？": [("张三", 0.9)]}
    ex, _ = make(tiny_tokenizer, answers)
    text = "张三出生于北京"
    both = ex.extract_entities(text, ["人名", "地名"])
    assert {t: [s.text for s in v] for t, v in both.items()} == {"人名": ["张三", "北京"], "地名": ["北京", "张三"]}
    one = ex.extract_entities(text, ["人名", "地名"], one_type_per_span=True)
    assert {t: [s.text for s in v] for t, v in one.items()} == {"人名": ["张三"], "地名": ["北京"]}

    schema = {"entities": ["地名"], "relations": [{"subject": "人名", "predicate": "出生地", "object": "地名"}]}
    loose = ex.extract_schema(text, schema)
    assert {(r.subject.text, r.object.text) for r in loose.relations} == {("张三", "北京"), ("北京", "张三")}
    strict = ex.extract_schema(text, {**schema, "one_type_per_span": True})
    assert {(e.type, e.text) for e in strict.entities} == {("人名", "张三"), ("地名", "北京")}
    assert strict.relations == loose.relations, "relation subjects come from each type's own pass"
    flat = ex.extract_schema(text, {**schema, "flat_ner": True})
    assert flat.entities == strict.entities and flat.relations == loose.relations

    gold = [Record("r", text, [EntitySpan("人名", 0, 2, "张三"), EntitySpan("地名", 5, 7, "北京")])]
    assert evaluate_ner(ex, gold)["precision"] == 50.0
    assert evaluate_ner(ex, gold, one_type_per_span=True)["precision"] == 100.0

    ex.config.one_type_per_span = True  # the model's default now; a call's False still keeps every type
    assert ex.info()["one_type_per_span"] is True
    assert {t: [s.text for s in v] for t, v in ex.extract_entities(text, ["人名", "地名"]).items()} == \
        {"人名": ["张三"], "地名": ["北京"]}
    assert ex.extract_entities(text, ["人名", "地名"], one_type_per_span=False) == both
    assert ex.extract_schema(text, schema) == strict
    assert ex.extract_schema(text, {**schema, "one_type_per_span": False}) == loose
    assert evaluate_ner(ex, gold)["precision"] == 100.0 and evaluate_ner(ex, gold)["one_type_per_span"] is True
    assert evaluate_ner(ex, gold, one_type_per_span=False)["precision"] == 50.0


def test_keep_flat_keeps_no_overlaps_best_score_first():
    from hugie.extractor import keep_flat
    from hugie.types import Span

    def span(start, end, score):
        return Span(text="x" * (end - start), start=start, end=end, score=score)

    by_type = {"org": [span(0, 6, 0.7), span(8, 10, 0.6)],
               "loc": [span(0, 2, 0.9), span(0, 6, 0.7), span(5, 9, 0.65)],
               "per": [span(2, 4, 0.5), span(10, 12, 0.6)]}
    kept = {t: [(s.start, s.end) for s in v] for t, v in keep_flat(by_type).items()}
    # loc 0-2 (0.9) blocks both 0-6 (0.7: a tie, the first type would win) and then
    # loc 5-9 (0.65) blocks org 8-10 (0.6); per 2-4 and 10-12 touch but do not overlap what is kept
    assert kept == {"org": [], "loc": [(0, 2), (5, 9)], "per": [(2, 4), (10, 12)]}
    kept = {t: [(s.start, s.end) for s in v] for t, v in keep_flat({"org": [span(0, 6, 0.7)],
                                                                     "loc": [span(0, 6, 0.7)]}).items()}
    assert kept == {"org": [(0, 6)], "loc": []}, "a tie goes to the first type"
    assert keep_flat({"org": [], "loc": []}) == {"org": [], "loc": []}


def test_flat_ner_is_the_models_default_unless_a_call_or_schema_says_otherwise(tiny_tokenizer):
    from hugie.data import EntitySpan, Record
    from hugie.evaluation import evaluate_ner

    answers = {PER: [("李四", 0.9), ("四在", 0.7)], LOC: [("上海", 0.8), ("上海市", 0.85)]}
    ex, _ = make(tiny_tokenizer, answers)
    text = "李四在上海市"

    def found(**kw):
        return {t: sorted(s.text for s in v) for t, v in ex.extract_entities(text, ["人名", "地名"], **kw).items()}

    every = {"人名": ["四在", "李四"], "地名": ["上海", "上海市"]}
    flat = {"人名": ["李四"], "地名": ["上海市"]}
    assert found() == every and found(one_type_per_span=True) == every, "no span under two types here"
    assert found(flat_ner=True) == flat
    with pytest.raises(HugieError, match=r"E027\] flat_ner keeps one type per span"):
        found(flat_ner=True, one_type_per_span=False)

    ex.config.flat_ner = True  # the model's default now
    assert ex.info()["flat_ner"] is True
    assert found() == flat and found(one_type_per_span=True) == flat
    assert found(flat_ner=False) == every
    assert found(one_type_per_span=False) == every, "asking for every type turns the default flat off"

    schema = {"entities": ["人名", "地名"]}
    assert sorted(e.text for e in ex.extract_schema(text, schema).entities) == ["上海市", "李四"]
    assert sorted(e.text for e in ex.extract_schema(text, {**schema, "flat_ner": False}).entities) == \
        ["上海", "上海市", "四在", "李四"]
    with pytest.raises(HugieError, match="E027"):
        ex.extract_schema(text, {**schema, "flat_ner": True, "one_type_per_span": False})

    gold = [Record("r", text, [EntitySpan("人名", 0, 2, "李四"), EntitySpan("地名", 3, 6, "上海市")])]
    report = evaluate_ner(ex, gold)
    assert report["precision"] == 100.0 and report["flat_ner"] is True and report["one_type_per_span"] is True
    report = evaluate_ner(ex, gold, flat_ner=False)
    assert report["precision"] == 50.0 and report["flat_ner"] is False


def test_relation_objects_use_the_relation_threshold(tiny_tokenizer):
    from hugie.data import EntitySpan, Record, RelationTriple
    from hugie.evaluation import evaluate_re

    answers = {PER: [("张三", 0.9), ("李四", 0.6)], "找到文章中【张三】的【出生地】？": [("北京", 0.9)],
               "找到文章中【李四】的【出生地】？": [("上海", 0.65)]}
    ex, _ = make(tiny_tokenizer, answers)
    ex.config.relation_threshold = 0.8
    text = "张三出生于北京，李四出生于上海"
    schema = {"relations": [{"subject": "人名", "predicate": "出生地"}]}

    def triples(**kw):
        result = ex.extract_schema(text, {**schema, **kw.pop("schema", {})}, **kw)
        return {(r.subject.text, r.object.text) for r in result.relations}

    assert triples() == {("张三", "北京")}, "李四 is a subject at 0.5; his object misses the model's 0.8"
    assert triples(threshold=0.5) == {("张三", "北京"), ("李四", "上海")}, "an explicit threshold applies to all"
    assert triples(threshold=0.62) == {("张三", "北京")}, "subject 李四 (0.6) is gone at 0.62"
    assert triples(threshold=0.95, schema={"relation_threshold": 0.6}) == set()
    assert triples(schema={"relation_threshold": 0.6}) == {("张三", "北京"), ("李四", "上海")}
    assert ex.info()["relation_threshold"] == 0.8
    ex.config.relation_threshold = None
    assert triples() == {("张三", "北京"), ("李四", "上海")}, "no relation threshold: the model's threshold"
    with pytest.raises(HugieError, match="E003"):
        ex.relation_threshold(relation_threshold=2.0)

    ex.config.relation_threshold = 0.8
    gold = [Record("r", text, [], [RelationTriple(EntitySpan("人名", 8, 10, "李四"), "出生地",
                                                  EntitySpan("地名", 13, 15, "上海"))])]
    strict = evaluate_re(ex, gold)
    assert strict["recall"] == 0.0 and strict["relation_threshold"] == 0.8
    assert evaluate_re(ex, gold, relation_threshold=0.6)["recall"] == 100.0


def test_run_plans_every_request_and_packs_passes_across_documents(tiny_tokenizer):
    answers = {PER: [("张三", 0.9), ("李四", 0.8)], LOC: [("北京", 0.9), ("上海", 0.6)],
               "找到文章中【张三】的【出生地】？": [("北京", 0.9)], "找到文章中【李四】的【出生地】？": [("上海", 0.75)]}
    ex, backend = make(tiny_tokenizer, answers)
    texts = ["张三出生于北京", "李四出生于上海", "张三和李四"]
    schema = {"entities": ["地名"], "relations": [{"subject": "人名", "predicate": "出生地", "object": "地名"}]}
    requests = [{"text": t, "schema": schema} for t in texts]
    requests += [{"text": texts[0], "entities": ["人名", "地名"]}, {"text": texts[1], "instruction": PER}]
    results = ex.run(requests)
    assert [type(r).__name__ for r in results] == ["SchemaResult"] * 3 + ["EntitiesResult", "SpansResult"]
    assert len(backend.calls) == 2, "all entity passes in one call, all relation passes in a second"
    assert backend.calls[0] == 6, "3 documents x 2 types; the same (instruction, text) asked twice runs once"
    assert backend.calls[1] == 4, "one relation pass per subject found (the third text has two)"
    assert {(r.subject.text, r.object.text) for r in results[0].relations} == {("张三", "北京")}
    assert {(r.subject.text, r.object.text) for r in results[1].relations} == {("李四", "上海")}
    assert [s.text for s in results[3].entities["人名"]] == ["张三"] and [s.text for s in results[4].spans] == ["李四"]
    alone = [ex.run([r])[0] for r in requests]
    assert alone == results, "a request's answer does not depend on what it was batched with"
    assert [ex.passes(r) for r in requests] == [2, 2, 2, 2, 1]


def test_run_validates_every_request_before_any_work(tiny_tokenizer):
    ex, backend = make(tiny_tokenizer, {PER: [("张三", 0.9)]})
    good = {"text": "张三", "instruction": PER}
    for bad, code in (({"text": "张三"}, "E029"), ({"text": "张三", "entities": ["人名"], "flat_ner": True,
                                                  "one_type_per_span": False}, "E027"),
                      ({"text": "张三", "instruction": PER, "top_k": "3"}, "E004"),
                      ({"text": "张三", "instruction": PER, "one_type_per_span": True}, "E029"), ("张三", "E029")):
        with pytest.raises(HugieError) as err:
            ex.run([good, bad])
        assert err.value.code == code, err.value
    assert backend.calls == []
    assert ex.run([]) == []
