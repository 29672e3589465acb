"""Slot models with ``reuse_layers``: a subject's relation pass takes its text's states from the entity pass."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from hugie.configuration import HugieConfig
from hugie.extractor import Extractor
from hugie.prompts import ENTITY, RELATION, Prompt, PromptTokenizer
from tests.conftest import tiny_slot_model

RELATIONS = [{"subject": "人名", "predicate": p} for p in ("出生地", "公司", "时间")]
TEXTS = ["李四出生于上海，后来搬家了。", "李四出生于上海，张三出生于北京。", "听说王五在深圳工作。"]


class Recorder:
    """Wraps a backend's ``score``: each call's batch and outputs."""

    def __init__(self, extractor):
        self.calls = []
        self.score = extractor.backend.score
        extractor.backend.score = self

    def __call__(self, batch, *args, **kwargs):
        out = self.score(batch, *args, **kwargs)
        self.calls.append((batch, out))
        return out


@pytest.fixture(scope="module")
def reuse_model_dir(tmp_path_factory, tiny_tokenizer):
    """A tiny two-layer slot model trained on the synthetic task whose relation rows reuse the first layer and
    mark their subject in it."""
    from tests.helpers import train_tiny_slots

    directory = tmp_path_factory.mktemp("tiny_reuse")
    model, tokenizer = train_tiny_slots(tiny_tokenizer, steps=400, reuse_layers=1, mark_subject=True)
    model.save_pretrained(directory)
    tokenizer.save(directory)
    return directory


@pytest.fixture(scope="module")
def reuse(reuse_model_dir):
    return Extractor.load(reuse_model_dir, backend="torch", device="cpu")


def test_reuse_rows_hold_prompts_and_lay_out_whole_rows(tiny_tokenizer):
    _, marked = tiny_slot_model(tiny_tokenizer)
    prompts = PromptTokenizer(marked, {"markers": {"entity": "[E]", "relation": "[R]"}, "max_slots": 16,
                                       "max_prompt_tokens": 128, "max_subjects": 1})
    rows = [prompts.encode(Prompt(RELATION, ("出生地", "公司"), prefix="【李四】")),
            prompts.encode(Prompt(RELATION, ("出生地",), prefix="【张】"))]
    texts = marked.tokenize(TEXTS[:2])
    pairs = [(prompt, text) for (prompt, _), text in zip(rows, texts)]
    markers = [m for _, m in rows]
    whole, reused = marked.build_batch(pairs, markers=markers), marked.build_reuse_batch(pairs, markers)
    width = whole.input_ids.shape[1]
    for name, padding in (("span_mask", 0), ("char_starts", -1), ("char_ends", -1)):
        got = getattr(reused, name)
        assert np.array_equal(got[:, :width], getattr(whole, name)) and (got[:, width:] == padding).all()
    assert np.array_equal(reused.slot_positions, whole.slot_positions)
    for b, ((prompt, text), ids) in enumerate(zip(pairs, reused.input_ids)):
        assert list(ids[: len(prompt) + 2]) == list(whole.input_ids[b, : len(prompt) + 2])  # no text token
        assert reused.attention_mask[b].sum() == len(prompt) + 2
        assert reused.text_mask[b].sum() == len(text) + 1  # its tokens and </s>


def test_relation_passes_send_prompts_only_and_cost_one_pass_per_subject(reuse):
    calls = Recorder(reuse)
    stats = {}
    result = reuse.run([{"text": TEXTS[1], "schema": {"relations": RELATIONS}}], stats=stats)[0]
    subjects = {e.text for e in result.entities if e.type == "人名"}
    assert {"李四", "张三"} <= subjects and stats["passes"] == 1 + len(subjects)
    entity_batch, _ = calls.calls[0]
    assert entity_batch.reused_states is None
    text = reuse.tokenizer.tokenize([TEXTS[1]])[0]
    rows = 0
    for batch, _ in calls.calls[1:]:  # each row holds its prompt only; its text follows it in the row layout
        prompt_lengths = batch.attention_mask.sum(axis=1)
        assert batch.input_ids.shape[1] == prompt_lengths.max()
        assert batch.reused_states.shape[1] == len(text) + 1
        for b, n in enumerate(prompt_lengths):
            assert list(batch.char_starts[b, n:n + len(text)]) == text.starts
        rows += len(batch.input_ids)
    assert rows == len(subjects)
    triples = {(r.subject.text, r.predicate, r.object.text) for r in result.relations}
    assert {("李四", "出生地", "上海"), ("张三", "出生地", "北京")} <= triples


def test_a_long_text_reuses_every_window_its_entity_pass_read(reuse):
    text = "昨天张三在北京开会。" * 12 + "李四出生于上海。"  # several windows of the tiny model's 128 tokens
    calls = Recorder(reuse)
    stats = {}
    result = reuse.run([{"text": text, "schema": {"relations": RELATIONS}}], stats=stats)[0]
    windows = sum(len(batch.input_ids) for batch, _ in calls.calls if batch.reused_states is None)
    relation_rows = sum(len(batch.input_ids) for batch, _ in calls.calls if batch.reused_states is not None)
    subjects = {e.text for e in result.entities if e.type == "人名"}
    assert windows > 1 and relation_rows == windows * len(subjects) and stats["passes"] == 1 + len(subjects)
    assert all(text[r.object.start:r.object.end] == r.object.text for r in result.relations)
    assert ("李四", "出生地", "上海") in {(r.subject.text, r.predicate, r.object.text) for r in result.relations}


def test_a_relation_pass_scores_as_training_computes_it(reuse):
    """The runtime path (kept entity-pass states) and the training path (a companion entity row) agree."""
    model, tok = reuse.backend.model, reuse.tokenizer
    calls = Recorder(reuse)
    reuse.run([{"text": TEXTS[0], "schema": {"relations": RELATIONS}, "threshold": 0.0}])
    relation_batch, (spans, logits) = calls.calls[1]
    assert len(spans)
    words = reuse._tokens(["人名"])
    companion, _ = reuse.prompts.encode(Prompt(ENTITY, ("人名",)), words)
    text = tok.tokenize([TEXTS[0]])[0]
    rows = tok.build_batch([(companion, text)] * len(relation_batch.input_ids))
    with torch.no_grad():
        out = model(torch.from_numpy(relation_batch.input_ids), torch.from_numpy(relation_batch.attention_mask),
                    torch.from_numpy(relation_batch.span_mask),
                    slot_positions=torch.from_numpy(relation_batch.slot_positions),
                    slot_mask=torch.from_numpy(relation_batch.slot_mask),
                    companion_ids=torch.from_numpy(rows.input_ids), companion_mask=torch.from_numpy(rows.attention_mask),
                    companion_starts=torch.full((len(rows.input_ids),), len(companion) + 2),
                    text_mask=torch.from_numpy(relation_batch.text_mask),
                    subject_mask=torch.from_numpy(relation_batch.subject_mask))["logits"]
    expected = out[spans[:, 0], spans[:, 1], spans[:, 2], spans[:, 3]].numpy()
    assert np.allclose(expected, logits, atol=1e-4)


def test_onnx_export_of_a_reuse_model_matches_torch(reuse_model_dir, reuse, tmp_path):
    import onnx

    from hugie.backends.onnx import OnnxBackend
    from hugie.export import export_model, model_from_export

    out = export_model(reuse_model_dir, tmp_path / "onnx", quantize="none")
    config = HugieConfig.from_pretrained(out)
    assert config.reuse_layers == 1 and config.mark_subject and config.onnx["outputs"][-1] == "layer_states"
    graph = onnx.load(str(out / "encoder.onnx")).graph
    assert sum(node.op_type == "Attention" for node in graph.node) == 2  # both layers still fuse
    long_text = "昨天张三在北京开会。" * 12 + "李四出生于上海。"  # several windows for the tiny model's 128 tokens
    requests = [{"text": t, "schema": {"relations": RELATIONS}} for t in [*TEXTS, long_text]]
    requests.append({"text": TEXTS[1], "schema": {"relations": RELATIONS[:1]}, "threshold": 0.05})
    onnx_ex = Extractor(OnnxBackend(out, config, device="cpu", use_custom_op=False), reuse.tokenizer, config)
    for a, b in zip(reuse.run(requests), onnx_ex.run(requests)):
        assert [t[:-1] for t in _triples(a)] == [t[:-1] for t in _triples(b)]
        assert np.allclose([t[-1] for t in _triples(a)], [t[-1] for t in _triples(b)], atol=2e-3)
    for result, request in zip(onnx_ex.run(requests), requests):
        assert all(request["text"][r.object.start:r.object.end] == r.object.text for r in result.relations)
    rebuilt = model_from_export(out)
    state = reuse.backend.model.state_dict()
    for name, value in rebuilt.state_dict().items():
        assert torch.allclose(value, state[name], atol=1e-5), name


def _triples(result) -> list:
    return sorted((r.subject.start, r.predicate, r.object.start, r.object.end, round(r.score, 3))
                  for r in result.relations)


def test_onnx_backend_refuses_kept_states_without_reuse_layers(trained_slot_model_dir, tmp_path):
    from hugie.backends.onnx import OnnxBackend
    from hugie.export import export_model

    out = export_model(trained_slot_model_dir, tmp_path / "onnx", quantize="none")
    backend = OnnxBackend(out, HugieConfig.from_pretrained(out), device="cpu", use_custom_op=False)
    batch = Extractor.load(trained_slot_model_dir, backend="torch").tokenizer.encode_pairs([("x", "李四")])
    with pytest.raises(ValueError, match="reuse_layers"):
        backend.score(batch, 0.0, 8, keep_states=True)


def test_reuse_recipe_gives_relation_rows_companions_and_changes_nothing_else():
    from hugie.training.examples import SlotRecipe, build_slot_examples

    from tests.helpers import synthetic_specs

    specs = synthetic_specs(80)
    plain = build_slot_examples(specs, 3, 0, SlotRecipe())
    reused = build_slot_examples(specs, 3, 0, SlotRecipe(reuse=1.0))
    assert [e.companion for e in plain] == [()] * len(plain)
    relation_rows = [e for e in reused if e.kind == "relation"]
    assert relation_rows and all(e.companion and set(e.companion) <= {"人名", "person", "地名", "location"}
                                 for e in relation_rows)
    assert all(not e.companion for e in reused if e.kind != "relation")
    assert [e.__class__(**{**e.__dict__, "companion": ()}) for e in reused] == plain


def test_a_relation_row_marks_every_mention_of_its_subject_and_nothing_else(reuse):
    text = "李四出生于上海，张三说李四去了北京。"
    calls = Recorder(reuse)
    result = reuse.run([{"text": text, "schema": {"relations": RELATIONS}}])[0]
    subjects = {e.text for e in result.entities if e.type == "人名"}
    assert {"李四", "张三"} <= subjects
    tokens = reuse.tokenizer.tokenize([text])[0]
    marked = []
    for batch, _ in calls.calls[1:]:
        assert batch.subject_mask.shape == batch.text_mask.shape
        for row in batch.subject_mask:
            marked.append("".join(text[s:e] for s, e, m in zip(tokens.starts, tokens.ends, row) if m))
            assert row[len(tokens)] == 0  # never the text's </s>
    assert sorted(marked) == sorted(s * text.count(s) for s in subjects)


def test_a_fresh_subject_marker_changes_no_score_and_a_learned_one_only_its_rows(tiny_tokenizer):
    plain, marked_tok = tiny_slot_model(tiny_tokenizer, seed=3, spread=0.5, reuse_layers=1)
    marking = copy.deepcopy(plain)
    marking.add_subject_marker()
    assert not hasattr(plain, "subject_marker") and float(marking.subject_marker.weight.abs().sum()) == 0.0
    requests = [{"text": t, "schema": {"relations": RELATIONS}, "threshold": 0.0} for t in TEXTS]
    fresh = [_triples(r) for r in Extractor.from_model(marking, marked_tok).run(requests)]
    assert fresh == [_triples(r) for r in Extractor.from_model(plain, marked_tok).run(requests)]
    with torch.no_grad():
        marking.subject_marker.weight.normal_(0.0, 1.0)
    learned = [_triples(r) for r in Extractor.from_model(marking, marked_tok).run(requests)]
    assert learned != fresh
    entities = [{"text": t, "entities": ["人名", "地名"], "threshold": 0.0} for t in TEXTS]
    before = Extractor.from_model(plain, marked_tok).run(entities)
    assert Extractor.from_model(marking, marked_tok).run(entities) == before  # entity rows carry no subject


def test_the_training_recipe_marks_a_relation_rows_subject(tiny_tokenizer):
    from hugie.training.examples import SlotRecipe, build_slot_examples
    from hugie.training.trainer import collate_reuse, encode_slot_examples

    from tests.helpers import synthetic_specs

    model, marked = tiny_slot_model(tiny_tokenizer, reuse_layers=1, mark_subject=True)
    examples = [e for e in build_slot_examples(synthetic_specs(40), 3, 0, SlotRecipe(reuse=1.0))
                if e.kind == "relation"]
    assert examples and all(e.subject and e.subject in e.text and e.subject in e.prefix for e in examples)
    items, _ = encode_slot_examples(examples, PromptTokenizer(marked, model.config.slots), 128, 8)
    batch = collate_reuse(items[:8], marked)
    for row, (example, item) in enumerate(zip(examples, items[:8])):
        marked_text = "".join(example.text[s:e] for s, e, m in
                              zip(item.text.starts, item.text.ends, batch["subject_mask"][row].tolist()) if m)
        assert marked_text == (example.subject * example.text.count(example.subject)).replace(" ", "")
    with torch.no_grad():
        model.subject_marker.weight.fill_(1.0)
        loss = model(**batch)["loss"]
        assert loss.isfinite()
        unmarked = model(**{**batch, "subject_mask": torch.zeros_like(batch["subject_mask"])})["loss"]
    assert not torch.isclose(loss, unmarked)


def test_a_schema_request_tokenizes_its_text_once(reuse, monkeypatch):
    seen = []
    tokenize = reuse.tokenizer.tokenize
    monkeypatch.setattr(reuse.tokenizer, "tokenize", lambda texts: seen.extend(texts) or tokenize(texts))
    result = reuse.run([{"text": TEXTS[1], "schema": {"relations": RELATIONS}}])[0]
    assert result.relations and seen.count(TEXTS[1]) == 1
