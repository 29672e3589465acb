"""Slot models: several prompts per row, a whole entity schema (or all predicates of a subject) in one pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hugie.configuration import HugieConfig
from hugie.extractor import Extractor
from hugie.prompts import ENTITY, RELATION, Prompt, PromptTokenizer
from hugie.scoring import span_scores_reference
from tests.conftest import tiny_model, tiny_slot_model

TYPES = ["人名", "地名", "机构", "组织", "公司", "时间", "人物", "地点", "出生", "名"]  # ten distinct prompts


class CountingBackend:
    """Wraps a backend and records the rows of every call."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []
        self.name, self.device = inner.name, inner.device

    def score(self, batch, threshold, max_width):
        self.calls.append(batch.input_ids.shape[0])
        return self.inner.score(batch, threshold, max_width)

    def describe(self):
        return self.inner.describe()


def counting(extractor: Extractor) -> CountingBackend:
    extractor.backend = CountingBackend(extractor.backend)
    return extractor.backend


@pytest.fixture(scope="module")
def slot_model(tiny_tokenizer):
    return tiny_slot_model(tiny_tokenizer, spread=0.5)


def test_markers_are_vocabulary_no_text_can_produce(tiny_tokenizer):
    marked = tiny_tokenizer.with_markers(["[E]", "[R]"])
    ids = {marked.marker_id("[E]"), marked.marker_id("[R]")}
    assert len(ids) == 2 and min(ids) >= tiny_tokenizer.vocab_size
    tokens = marked.tokenize(["[E] 人名 [R] a[E]b [R]"])[0]
    assert not ids & set(tokens.ids)
    assert marked.with_markers(["[E]", "[R]"]).vocab_size == marked.vocab_size  # added once


def test_prompt_puts_a_marker_before_each_slot(slot_model):
    model, marked = slot_model
    prompts = PromptTokenizer(marked, model.config.slots)
    tokens, markers = prompts.encode(Prompt(RELATION, ("出生地", "人物"), prefix="【张三】"))
    assert [tokens.ids[m] for m in markers] == [prompts.marker_ids[RELATION]] * 2
    assert tokens.ids[: markers[0]] == marked.tokenize(["【张三】"])[0].ids
    assert tokens.ids[markers[0] + 1: markers[1]] == marked.tokenize(["出生地"])[0].ids


def test_prompt_packing_respects_slots_and_tokens(slot_model):
    model, marked = slot_model
    prompts = PromptTokenizer(marked, {**model.config.slots, "max_slots": 3, "max_prompt_tokens": 10})
    assert prompts.pack([2, 2, 2, 2]) == [[0, 1, 2], [3]]
    assert prompts.pack([3, 3, 12, 1], [("【甲】", 4)] * 4) == [[0, 1], [2], [3]]  # a slot over the budget goes alone


def test_prompt_packing_holds_at_most_max_subjects(slot_model):
    model, marked = slot_model
    cues = [("a", 2), ("a", 2), ("b", 2), ("c", 2)]
    one = PromptTokenizer(marked, {**model.config.slots, "max_slots": 8, "max_prompt_tokens": 20})
    assert one.max_subjects == 1  # the default: one subject per row, as the model was trained
    assert one.pack([2, 2, 2, 2], cues) == [[0, 1], [2], [3]]
    two = PromptTokenizer(marked, {**model.config.slots, "max_slots": 8, "max_prompt_tokens": 20, "max_subjects": 2})
    assert two.pack([2, 2, 2, 2], cues) == [[0, 1, 2], [3]]
    tight = PromptTokenizer(marked, {**model.config.slots, "max_slots": 8, "max_prompt_tokens": 9, "max_subjects": 4})
    assert tight.pack([2, 2, 2, 2], cues) == [[0, 1], [2, 3]]  # "a" 2+2+2 = 6, "b" would make 10: each cue counts


def test_prompt_writes_each_subject_cue_before_its_own_slots(slot_model):
    model, marked = slot_model
    prompts = PromptTokenizer(marked, {**model.config.slots, "max_subjects": 4})
    tokens, markers = prompts.encode(Prompt(RELATION, ("出生地", "妻子", "导演"), cues=("【张三】", "【张三】", "【英雄】")))
    zhang, hero = (marked.tokenize([c])[0].ids for c in ("【张三】", "【英雄】"))
    assert tokens.ids[: markers[0]] == zhang
    assert tokens.ids[markers[1] + 1 + len(marked.tokenize(["妻子"])[0].ids): markers[2]] == hero
    assert tokens.ids.count(prompts.marker_ids[RELATION]) == 3


def test_training_rows_can_hold_all_subjects_of_a_text(slot_model):
    from hugie.training.examples import DatasetSpec, SlotRecipe, build_slot_examples
    from hugie.training.trainer import encode_slot_examples

    from hugie.data import parse_record

    model, marked = slot_model
    spec = DatasetSpec("duie", "-", language="zh", tasks=("re",))
    spec.records = [parse_record({"id": "1", "text": "李四出生于上海，张三出生于北京。", "relations": [
        {"subject": {"type": "人物", "start": 0, "end": 2}, "predicate": "出生地", "object": {"type": "地点", "start": 5, "end": 7}},
        {"subject": {"type": "人物", "start": 8, "end": 10}, "predicate": "出生地", "object": {"type": "地点", "start": 13, "end": 15}},
    ]})]
    apart = build_slot_examples([spec], seed=0, recipe=SlotRecipe(drop=0.0, instruction=0.0))
    assert sorted(e.prefix for e in apart) == ["【张三】", "【李四】"] and not any(e.cues for e in apart)
    [together] = build_slot_examples([spec], seed=0, recipe=SlotRecipe(drop=0.0, instruction=0.0, together=1.0))
    assert sorted(together.cues) == ["【张三】", "【李四】"] and together.slots == ("出生地", "出生地")
    gold = dict(zip(together.cues, together.spans))
    assert gold == {"【李四】": ((5, 7),), "【张三】": ((13, 15),)}
    prompts = PromptTokenizer(marked, {**model.config.slots, "max_subjects": 4})
    [row], stats = encode_slot_examples([together], prompts, max_length=64, max_width=8)
    assert len(row.markers) == 2 and stats["gold"] == 2
    assert row.prompt.ids[: row.markers[0]] == marked.tokenize([together.cues[0]])[0].ids
    [first_only], _ = encode_slot_examples([together], PromptTokenizer(marked, model.config.slots), 64, 8)
    assert len(first_only.markers) == 1  # a one-subject model keeps the first subject's slots


def test_a_fresh_slot_head_scores_every_slot_as_the_one_slot_head(tiny_tokenizer):
    model, marked = tiny_slot_model(tiny_tokenizer)
    prompts = PromptTokenizer(marked, model.config.slots)
    prompt, markers = prompts.encode(Prompt(ENTITY, ("人名", "地名", "时间")))
    batch = marked.build_batch([(prompt, marked.tokenize(["张三去了北京。"])[0])], markers=[markers])
    ids, attn = torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)
    with torch.no_grad():
        q, k, sb, eb = model.project(ids, attn, torch.from_numpy(batch.slot_positions),
                                     torch.from_numpy(batch.slot_mask))
        model.config.architecture = "instruction"  # the same weights read as a one-slot head
        q1, k1, sb1, eb1 = model.project(ids, attn)
        model.config.architecture = "slots"
    assert q.shape == (1, 3, *q1.shape[1:]) and sb.shape == (1, 3, sb1.shape[1])
    for slot in range(3):
        assert torch.allclose(q[:, slot], q1, atol=1e-6)
        assert torch.allclose(sb[:, slot], sb1, atol=1e-6) and torch.allclose(eb[:, slot], eb1, atol=1e-6)


def test_slot_logits_match_the_shared_scoring_and_padding_slots_find_nothing(slot_model):
    model, marked = slot_model
    prompts = PromptTokenizer(marked, model.config.slots)
    rows = [prompts.encode(Prompt(ENTITY, ("人名", "地名", "时间"))), prompts.encode(Prompt(ENTITY, ("人名",)))]
    texts = marked.tokenize(["张三去了北京。", "李四"])
    batch = marked.build_batch([(p, t) for (p, _), t in zip(rows, texts)], markers=[m for _, m in rows])
    assert batch.slot_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    tensors = [torch.from_numpy(x) for x in (batch.input_ids, batch.attention_mask, batch.slot_positions,
                                             batch.slot_mask)]
    with torch.no_grad():
        q, k, sb, eb = model.project(*tensors)
        logits = model(tensors[0], tensors[1], torch.from_numpy(batch.span_mask), slot_positions=tensors[2],
                       slot_mask=tensors[3])["logits"]
    assert logits.shape[:2] == (2, 3)
    spans, scores = span_scores_reference(q.numpy(), k.numpy(), sb.numpy(), eb.numpy(), batch.span_mask, -1e3,
                                          model.config.max_span_width)
    assert len(spans) and set(spans[:, 1].tolist()) == {0, 1, 2}
    assert not any(b == 1 and slot > 0 for b, slot, _, _ in spans.tolist())  # padding slots of row 1
    assert np.allclose(logits[spans[:, 0], spans[:, 1], spans[:, 2], spans[:, 3]].numpy(), scores, atol=1e-4)
    first = {tuple(r[2:]): s for r, s in zip(spans.tolist(), scores) if r[:2] == [0, 0]}
    second = {tuple(r[2:]): s for r, s in zip(spans.tolist(), scores) if r[:2] == [0, 1]}
    assert first.keys() == second.keys() and not np.allclose(list(first.values()), list(second.values()))


def test_the_loss_reads_real_slots_only(slot_model):
    model, marked = slot_model
    prompts = PromptTokenizer(marked, model.config.slots)
    rows = [prompts.encode(Prompt(ENTITY, ("人名", "地名"))), prompts.encode(Prompt(ENTITY, ("人名",)))]
    texts = marked.tokenize(["张三去了北京。", "李四"])
    batch = marked.build_batch([(p, t) for (p, _), t in zip(rows, texts)], markers=[m for _, m in rows])
    inputs = {"input_ids": torch.from_numpy(batch.input_ids), "attention_mask": torch.from_numpy(batch.attention_mask),
              "span_mask": torch.from_numpy(batch.span_mask), "slot_positions": torch.from_numpy(batch.slot_positions),
              "slot_mask": torch.from_numpy(batch.slot_mask)}
    labels = torch.zeros((2, 2, *batch.shape[1:2] * 2))
    noisy = labels.clone()
    noisy[1, 1, 5, 5] = 1.0  # a label in row 1's padding slot
    with torch.no_grad():
        assert model(**inputs, labels=labels)["loss"] == model(**inputs, labels=noisy)["loss"]
        noisy[0, 1, 5, 5] = 1.0  # in a real slot it counts
        assert model(**inputs, labels=labels)["loss"] != model(**inputs, labels=noisy)["loss"]


@pytest.fixture(scope="module")
def trained_slots(trained_slot_model_dir):
    return Extractor.load(trained_slot_model_dir, backend="torch", device="cpu")


def test_ten_entity_types_over_one_document_are_one_encoder_call(trained_slots, trained_model_dir):
    text = "昨天张三在北京开会。" * 8  # 80 characters: prompt and text fit the tiny model's 128 tokens
    calls = counting(trained_slots)
    stats = {}
    result = trained_slots.run([{"text": text, "entities": TYPES}], stats=stats)[0]
    assert calls.calls == [1] and stats["passes"] == 1
    assert list(result.entities) == TYPES
    assert "张三" in {s.text for s in result.entities["人名"]}
    assert "北京" in {s.text for s in result.entities["地名"]}
    one_slot = Extractor.load(trained_model_dir, backend="torch", device="cpu")
    stats = {}
    one_slot.run([{"text": text, "entities": TYPES}], stats=stats)
    assert stats["passes"] == 10


def test_a_relation_schema_costs_one_pass_plus_one_per_subject(trained_slots):
    text = "李四出生于上海，后来搬家了。"
    relations = [{"subject": "人名", "predicate": p} for p in ("出生地", "人物", "公司", "时间", "机构")]
    stats = {}
    result = trained_slots.run([{"text": text, "schema": {"relations": relations}}], stats=stats)[0]
    subjects = {e.text for e in result.entities if e.type == "人名"}
    assert "李四" in subjects
    assert stats["passes"] == 1 + len(subjects)  # every subject's five predicates in one pass
    assert ("李四", "出生地", "上海") in {(r.subject.text, r.predicate, r.object.text) for r in result.relations}


def test_subjects_share_a_pass_up_to_max_subjects(trained_slot_model_dir):
    ex = Extractor.load(trained_slot_model_dir, backend="torch", device="cpu")
    request = {"text": "李四出生于上海，张三出生于北京。",
               "schema": {"relations": [{"subject": "人名", "predicate": p} for p in ("出生地", "公司")]}}
    stats = {}
    apart = ex.run([request], stats=stats)[0]
    subjects = {e.text for e in apart.entities if e.type == "人名"}
    assert len(subjects) >= 2 and stats["passes"] == 1 + len(subjects)
    ex.prompts.max_subjects = 8
    calls = counting(ex)
    together = ex.run([request], stats=stats)[0]
    assert stats["passes"] == 2 and calls.calls == [1, 1]
    assert {r.subject.text for r in together.relations} <= subjects
    assert together.entities == apart.entities


def test_more_types_than_slots_split_into_passes_and_all_are_answered(trained_slot_model_dir):
    ex = Extractor.load(trained_slot_model_dir, backend="torch", device="cpu")
    ex.prompts.max_slots = 4
    types = TYPES + ["人名2", "地名2"]
    stats = {}
    result = ex.run([{"text": "昨天张三在北京开会。", "entities": types}], stats=stats)[0]
    assert stats["passes"] == 3 and list(result.entities) == types
    assert ex.passes({"text": "x", "entities": types}) == 3
    assert ex.relation_passes(9) == 3


def test_an_instruction_is_one_slot(trained_slots):
    assert [s.text for s in trained_slots.extract("找到文章中所有【地名】类型的实体？", "听说李四住在上海附近")] == ["上海"]


def test_the_same_type_at_two_thresholds_shares_one_slot(trained_slots):
    text = "昨天张三在北京开会。"
    stats = {}
    low, high = trained_slots.run([{"text": text, "entities": ["人名", "地名"], "threshold": 0.01},
                                   {"text": text, "entities": ["人名"], "threshold": 0.99}], stats=stats)
    assert stats["passes"] == 1
    assert all(s.score >= 0.99 for s in high.entities["人名"])
    assert {s.text for s in low.entities["人名"]} >= {s.text for s in high.entities["人名"]}


def test_long_texts_are_windowed_with_offsets_into_the_text(trained_slots):
    text = "昨天张三在北京开会。" * 30 + "听说李四住在上海附近"
    found = trained_slots.extract_entities(text, ["人名", "地名"])
    assert all(text[s.start:s.end] == s.text for spans in found.values() for s in spans)
    assert "李四" in {s.text for s in found["人名"]}


def test_onnx_export_of_a_slot_model_matches_torch(trained_slot_model_dir, tmp_path):
    from hugie.export import export_model, model_from_export

    out = export_model(trained_slot_model_dir, tmp_path / "onnx", quantize="none")
    config = HugieConfig.from_pretrained(out)
    assert config.slotted and config.slots["markers"] == {"entity": "[E]", "relation": "[R]"}
    import onnx

    ops = {node.op_type for node in onnx.load(str(out / "encoder.onnx")).graph.node}
    assert "Attention" in ops  # the slot head leaves the encoder's attention fusable
    torch_ex = Extractor.load(trained_slot_model_dir, backend="torch", device="cpu")
    requests = [{"text": "昨天张三在北京开会。", "entities": ["人名", "地名", "时间"]},
                {"text": "李四出生于上海，后来搬家了。", "schema": {"relations": [{"subject": "人名", "predicate": "出生地"}]}},
                {"text": "Yesterday Bob was in Paris.", "entities": ["person", "location"], "threshold": 0.2}]
    for use_custom_op in (False, None):
        from hugie.backends.onnx import OnnxBackend

        onnx_ex = Extractor(OnnxBackend(out, config, device="cpu", use_custom_op=use_custom_op),
                            torch_ex.tokenizer, config)
        for a, b in zip(torch_ex.run(requests), onnx_ex.run(requests)):
            assert type(a) is type(b)
            assert _spans(a) == _spans(b)
    rebuilt = model_from_export(out)
    assert rebuilt.config.slotted
    state = torch_ex.backend.model.state_dict()
    for name, value in rebuilt.state_dict().items():
        assert torch.allclose(value, state[name], atol=1e-5), name


def _spans(result) -> list:
    dump = result.model_dump()
    if "entities" in dump and isinstance(dump["entities"], dict):
        return sorted((t, s["start"], s["end"], round(s["score"], 2)) for t, v in dump["entities"].items() for s in v)
    return sorted((e["type"], e["start"], e["end"], round(e["score"], 2)) for e in dump["entities"]) + sorted(
        (r["predicate"], r["object"]["start"], round(r["score"], 2)) for r in dump.get("relations", []))


def test_one_slot_models_load_and_say_so(trained_model_dir):
    ex = Extractor.load(trained_model_dir, backend="torch", device="cpu")
    assert ex.prompts is None and not ex.config.slotted
    assert ex.relation_passes(5) == 5


def test_an_unknown_architecture_is_refused():
    from hugie.errors import HugieError

    with pytest.raises(HugieError) as err:
        HugieConfig(architecture="gliner")
    assert err.value.code == "E015"


def test_a_one_slot_model_gains_slots_once(tiny_tokenizer):
    model, marked = tiny_slot_model(tiny_tokenizer)
    with pytest.raises(ValueError):
        model.add_slots({"entity": marked.marker_id("[E]")}, init_id=0)
    plain = tiny_model(marked)
    assert plain.encoder.get_input_embeddings().num_embeddings == marked.vocab_size


def test_int8_export_quantizes_weights_only(trained_slot_model_dir, tmp_path):
    """The marker picks and the slot x token biases multiply two activations: they stay fp32 in an int8 export."""
    import onnx

    from hugie.export import export_model

    out = export_model(trained_slot_model_dir, tmp_path / "int8", quantize="int8")
    graph = onnx.load(str(out / "encoder.onnx")).graph
    weights = {init.name for init in graph.initializer}
    integer = [node for node in graph.node if node.op_type == "MatMulInteger"]
    assert integer and all(node.input[1] in weights for node in integer)
    ex = Extractor.load(out)
    found = ex.extract_entities("昨天张三在北京开会。", ["人名", "地名"])
    assert [s.text for s in found["人名"]] == ["张三"] and [s.text for s in found["地名"]] == ["北京"]


def test_idle_subjects_get_rows_without_answers():
    from hugie.training.examples import DatasetSpec, SlotRecipe, build_slot_examples

    from hugie.data import parse_record

    spec = DatasetSpec("conll04", "-", language="zh", tasks=("re",))
    spec.records = [parse_record({"id": "1", "text": "李四出生于上海，王五也在。", "entities": [
        {"type": "人物", "start": 0, "end": 2}, {"type": "地点", "start": 5, "end": 7},
        {"type": "人物", "start": 8, "end": 10}], "relations": [
        {"subject": {"type": "人物", "start": 0, "end": 2}, "predicate": "出生地", "object": {"type": "地点", "start": 5, "end": 7}},
    ]}), parse_record({"id": "2", "text": "王五在家。", "entities": [{"type": "人物", "start": 0, "end": 2}]})]
    plain = build_slot_examples([spec], seed=0, recipe=SlotRecipe(drop=0.0, instruction=0.0))
    assert [e.prefix for e in plain] == ["【李四】"]  # by default only subjects with relations get rows
    rows = build_slot_examples([spec], seed=0, recipe=SlotRecipe(drop=0.0, instruction=0.0, idle_subjects=1.0))
    idle = [e for e in rows if e.prefix == "【王五】"]
    assert len(idle) == 2 and {e.text for e in idle} == {"李四出生于上海，王五也在。", "王五在家。"}
    assert all(e.kind == "relation" and e.slots == ("出生地",) and e.spans == ((),) for e in idle)
    assert not any(e.prefix == "【上海】" for e in rows)  # an object, and of a type that is no subject


def test_objects_of_a_subject_type_get_rows_without_answers():
    from hugie.training.examples import DatasetSpec, SlotRecipe, build_slot_examples

    from hugie.data import parse_record

    spec = DatasetSpec("duie", "-", language="zh", tasks=("re",))
    spec.records = [parse_record({"id": "1", "text": "《红楼》的作者是曹雪芹，李四出生于南京。", "relations": [
        {"subject": {"type": "图书", "start": 0, "end": 4}, "predicate": "作者", "object": {"type": "人物", "start": 8, "end": 11}},
        {"subject": {"type": "人物", "start": 12, "end": 14}, "predicate": "出生地", "object": {"type": "地点", "start": 17, "end": 19}},
    ]})]
    plain = build_slot_examples([spec], seed=0, recipe=SlotRecipe(drop=0.0, instruction=0.0))
    assert sorted(e.subject for e in plain) == ["《红楼》", "李四"]
    rows = build_slot_examples([spec], seed=0, recipe=SlotRecipe(drop=0.0, instruction=0.0, object_subjects=1.0))
    added = [e for e in rows if e.subject not in {"《红楼》", "李四"}]
    assert [e.subject for e in added] == ["曹雪芹"]  # an object of a type with predicates; not 南京 (地点 has none)
    assert added[0].kind == "relation" and added[0].slots == ("出生地",) and added[0].spans == ((),)


def _ner_spec(tmp_path, name, records, label_map):
    import json

    from hugie.training.examples import DatasetSpec

    (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    (tmp_path / f"{name}.json").write_text(json.dumps(label_map, ensure_ascii=False))
    return DatasetSpec(name, str(tmp_path / f"{name}.jsonl"), label_map=str(tmp_path / f"{name}.json"),
                       tasks=("ner",)).load()


def test_a_span_two_asked_names_of_one_label_answer_goes_to_the_narrower(tmp_path):
    from hugie.training.examples import SlotRecipe, build_slot_examples

    text = "张三从新乡去了泰山。"
    weibo = _ner_spec(tmp_path, "weibo", [{"id": "1", "text": text, "entities": [
        {"type": "PER", "start": 0, "end": 2}, {"type": "GPE", "start": 3, "end": 5}, {"type": "LOC", "start": 7, "end": 9}]}],
        {"PER": "人名", "GPE": ["行政区", "地名"], "LOC": "地名"})
    [both] = build_slot_examples([weibo], seed=0, recipe=SlotRecipe(drop=0.0, instruction=0.0, foreign=0.0))
    gold = dict(zip(both.slots, both.spans))
    assert gold == {"人名": ((0, 2),), "行政区": ((3, 5),), "地名": ((7, 9),)}
    asked = set()
    for seed in range(40):  # asked without 行政区, the city is a 地名 as well
        for ex in build_slot_examples([weibo], seed=seed, recipe=SlotRecipe(drop=0.5, instruction=0.0, foreign=0.0)):
            gold = dict(zip(ex.slots, ex.spans))
            if "地名" in gold:
                asked.add("行政区" in gold)
                assert gold["地名"] == (((7, 9),) if "行政区" in gold else ((3, 5), (7, 9)))
    assert asked == {True, False}


def test_no_foreign_negative_is_another_name_of_a_datasets_label(tmp_path):
    from hugie.training.examples import SlotRecipe, build_slot_examples

    weibo = _ner_spec(tmp_path, "weibo", [{"id": "1", "text": "我在新乡玩游戏。", "entities": [
        {"type": "GPE", "start": 2, "end": 4}, {"type": "GAME", "start": 5, "end": 7}]}],
        {"GPE": ["行政区", "地名"], "GAME": "游戏"})
    news = _ner_spec(tmp_path, "news", [{"id": "1", "text": "李四到了北京。", "entities": [
        {"type": "PER", "start": 0, "end": 2}, {"type": "LOC", "start": 4, "end": 6}]}], {"PER": "人名", "LOC": "地名"})
    foreign = set()
    for seed in range(60):
        for ex in build_slot_examples([weibo, news], seed=seed, recipe=SlotRecipe(instruction=0.0, foreign=1.0)):
            if ex.dataset == "news":
                foreign.update(set(ex.slots) - {"人名", "地名"})
    assert foreign == {"游戏"}  # 行政区 names some of news's 地名 spans: it would be a false negative there


def test_subjects_share_rows_as_a_several_subject_model_packs_them():
    from hugie.training.examples import DatasetSpec, SlotRecipe, build_slot_examples

    from hugie.data import parse_record

    spec = DatasetSpec("duie", "-", language="zh", tasks=("re",))
    spec.records = [parse_record({"id": "1", "text": "李四出生于上海，张三出生于北京，王五也在。", "entities": [
        {"type": "人物", "start": 16, "end": 18}], "relations": [
        {"subject": {"type": "人物", "start": 0, "end": 2}, "predicate": "出生地", "object": {"type": "地点", "start": 5, "end": 7}},
        {"subject": {"type": "人物", "start": 8, "end": 10}, "predicate": "出生地", "object": {"type": "地点", "start": 13, "end": 15}},
        {"subject": {"type": "人物", "start": 8, "end": 10}, "predicate": "国籍", "object": {"type": "国家", "start": 13, "end": 15}},
        {"subject": {"type": "国家", "start": 13, "end": 15}, "predicate": "首都", "object": {"type": "地点", "start": 5, "end": 7}},
        {"subject": {"type": "人物", "start": 0, "end": 2}, "predicate": "朋友", "object": {"type": "人物", "start": 16, "end": 18}},
    ]})]
    recipe = dict(drop=0.0, instruction=0.0, idle_subjects=1.0, subjects_per_row=2, max_slots=4, object_subjects=1.0)
    for seed in range(5):
        rows = build_slot_examples([spec], seed=seed, recipe=SlotRecipe(together=1.0, **recipe))
        assert all(e.cues and not e.prefix and len(e.slots) <= 4 for e in rows)
        cues = [list(dict.fromkeys(e.cues)) for e in rows]
        # each subject once: 北京 (首都), and 王五, an object of a subject type; not 上海, whose type has no predicates
        assert sorted(c for row in cues for c in row) == ["【北京】", "【张三】", "【李四】", "【王五】"]
        assert sorted(len(c) for c in cues) in ([2, 2], [1, 1, 2])  # two subjects share a row, one may be left over
        answers = {(c, p): s for e in rows for c, p, s in zip(e.cues, e.slots, e.spans)}
        assert answers[("【李四】", "出生地")] == ((5, 7),) and answers[("【张三】", "国籍")] == ((13, 15),)
        assert not any(s for (c, _), s in answers.items() if c == "【王五】")  # the idle subject answers nothing
    apart = build_slot_examples([spec], seed=0, recipe=SlotRecipe(together=0.0, **recipe))
    assert sorted(e.prefix for e in apart) == ["【北京】", "【张三】", "【李四】"] and not any(e.cues for e in apart)
