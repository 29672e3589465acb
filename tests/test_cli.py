import json
import shutil

import pytest
from typer.testing import CliRunner

from hugie.cli import app
from tests.conftest import synthetic_records

runner = CliRunner()


def test_convert_conll_then_eval_json(tmp_path, trained_model_dir):
    conll = tmp_path / "d.conll"
    lines = []
    for rec in synthetic_records(12, seed=3):
        if rec["text"].isascii():
            continue
        tags = ["O"] * len(rec["text"])
        for e in rec["entities"]:
            tags[e["start"]] = "B-" + e["type"]
            for i in range(e["start"] + 1, e["end"]):
                tags[i] = "I-" + e["type"]
        lines += [f"{c} {t}" for c, t in zip(rec["text"], tags) if c.strip()] + [""]
    conll.write_text("\n".join(lines), encoding="utf-8")
    out = tmp_path / "d.jsonl"
    res = runner.invoke(app, ["convert", str(conll), "-o", str(out), "--format", "conll"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["eval", str(out), "--model", str(trained_model_dir), "--backend", "torch", "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert set(result["ner"]) >= {"precision", "recall", "f1", "per_type", "passes_per_second"}
    assert result["ner"]["f1"] >= 80 and result["reachable"] == 100.0


def test_extract_instruction_entities_schema(tmp_path, trained_model_dir):
    m = ["--model", str(trained_model_dir), "--backend", "torch"]
    res = runner.invoke(app, ["extract", "昨天李四在上海开会。", "-i", "找到文章中所有【人名】类型的实体？", *m])
    assert res.exit_code == 0, res.output
    assert [s["text"] for s in json.loads(res.stdout)["spans"]] == ["李四"]
    res = runner.invoke(app, ["extract", "李四出生于上海", "-e", "人名,地名", *m])
    assert json.loads(res.stdout)["entities"]["地名"][0]["text"] == "上海"
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"relations": [{"subject": "人名", "predicate": "出生地", "object": "地名"}]}))
    res = runner.invoke(app, ["extract", "李四出生于上海", "-s", str(schema), *m])
    rel = json.loads(res.stdout)["relations"][0]
    assert (rel["subject"]["text"], rel["object"]["text"]) == ("李四", "上海")


def test_errors_are_reported_not_raised(tmp_path):
    res = runner.invoke(app, ["eval", str(tmp_path / "missing.jsonl"), "--model", str(tmp_path)])
    assert res.exit_code == 2 and "file not found" in res.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": 1}\n')
    res = runner.invoke(app, ["convert", str(bad), "-o", str(tmp_path / "o"), "--format", "nope"])
    assert res.exit_code == 2 and "unknown input format" in res.output
    bad.write_text("{not json")
    res = runner.invoke(app, ["extract", "张三", "-s", str(bad), "--model", str(tmp_path)])
    assert res.exit_code == 2 and "invalid JSON" in res.output, "the schema file is read before any model"


def test_extract_one_type_per_span(untrained_model_dir):
    m = ["--model", str(untrained_model_dir), "--backend", "torch", "--threshold", "0.001"]

    def spans(*extra):
        res = runner.invoke(app, ["extract", "李四出生于上海", "-e", "人名,地名", *m, *extra])
        assert res.exit_code == 0, res.output
        return {t: {(s["start"], s["end"]) for s in v} for t, v in json.loads(res.stdout)["entities"].items()}

    loose, flat = spans(), spans("--one-type-per-span")
    assert loose["人名"] & loose["地名"], "an untrained model at a tiny threshold answers both types"
    assert not flat["人名"] & flat["地名"]
    assert flat["人名"] | flat["地名"] == loose["人名"] | loose["地名"], "spans move, none is lost"


def test_one_type_per_span_follows_the_model_unless_asked(untrained_model_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(untrained_model_dir, model)
    config = json.loads((model / "config.json").read_text(encoding="utf-8"))
    (model / "config.json").write_text(json.dumps({**config, "one_type_per_span": True}), encoding="utf-8")
    m = ["--model", str(model), "--backend", "torch", "--threshold", "0.001"]

    def overlap(*extra):
        res = runner.invoke(app, ["extract", "李四出生于上海", "-e", "人名,地名", *m, *extra])
        assert res.exit_code == 0, res.output
        found = {t: {(s["start"], s["end"]) for s in v} for t, v in json.loads(res.stdout)["entities"].items()}
        return found["人名"] & found["地名"]

    assert not overlap(), "the model's default: one type per span"
    assert overlap("--all-types"), "an untrained model at a tiny threshold answers both types"
    res = runner.invoke(app, ["extract", "李四出生于上海", "-i", "找人名", "--all-types", *m])
    assert res.exit_code != 0 and "one_type_per_span applies to entities and schema requests" in res.output
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"entities": ["人名", "地名"], "one_type_per_span": False}))
    res = runner.invoke(app, ["extract", "李四出生于上海", "-s", str(schema), *m])
    assert res.exit_code == 0, res.output
    spans = [(e["start"], e["end"]) for e in json.loads(res.stdout)["entities"]]
    assert len(spans) > len(set(spans)), "the schema file's key beats the model's default"
    (tmp_path / "in.txt").write_text("李四出生于上海\n", encoding="utf-8")
    res = runner.invoke(app, ["batch", str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.jsonl"), "-i", "找人名",
                              "--all-types", *m])
    assert res.exit_code != 0 and "one_type_per_span applies to entities and schema requests" in res.output
    res = runner.invoke(app, ["batch", str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.jsonl"), "-s", str(schema),
                              "--one-type-per-span", "--no-progress", *m])
    assert res.exit_code == 0, res.output
    [rec] = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text(encoding="utf-8").splitlines()]
    spans = [(e["start"], e["end"]) for e in rec["entities"]]
    assert spans and len(spans) == len(set(spans)), "the flag beats the schema file's key"


def test_flat_ner_option(untrained_model_dir, tmp_path):
    m = ["--model", str(untrained_model_dir), "--backend", "torch", "--threshold", "0.001"]

    def spans(*args):
        res = runner.invoke(app, ["extract", "李四出生于上海", *args, *m])
        assert res.exit_code == 0, res.output
        out = json.loads(res.stdout)
        found = out["entities"]
        if isinstance(found, dict):  # entity types: {type: spans}
            found = [{"type": t, **s} for t, v in found.items() for s in v]
        return sorted((s["start"], s["end"]) for s in found)

    def overlapping(found):
        return any(a[1] > b[0] for a, b in zip(found, found[1:]))

    loose, flat = spans("-e", "人名,地名"), spans("-e", "人名,地名", "--flat-ner")
    assert overlapping(loose), "an untrained model at a tiny threshold answers overlapping spans"
    assert flat and not overlapping(flat) and set(flat) <= set(loose)
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"entities": ["人名", "地名"], "flat_ner": True}))
    assert spans("-s", str(schema)) == flat, "the schema file's key"
    assert spans("-s", str(schema), "--no-flat-ner") == loose, "the flag beats the file"
    res = runner.invoke(app, ["extract", "李四出生于上海", "-s", str(schema), "--all-types", *m])
    assert res.exit_code != 0 and "E027" in res.output, "a flat schema cannot also keep every type"
    res = runner.invoke(app, ["extract", "李四出生于上海", "-i", "找人名", "--flat-ner", *m])
    assert res.exit_code != 0 and "flat_ner applies to entities and schema requests" in res.output

    (tmp_path / "in.txt").write_text("李四出生于上海\n", encoding="utf-8")
    out = tmp_path / "o.jsonl"
    res = runner.invoke(app, ["batch", str(tmp_path / "in.txt"), "-o", str(out), "-i", "找人名", "--flat-ner", *m])
    assert res.exit_code != 0 and "flat_ner applies to entities and schema requests" in res.output
    schema.write_text(json.dumps({"entities": ["人名", "地名"]}))
    res = runner.invoke(app, ["batch", str(tmp_path / "in.txt"), "-o", str(out), "-s", str(schema), "--flat-ner",
                              "--no-progress", *m])
    assert res.exit_code == 0, res.output
    [rec] = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert sorted((e["start"], e["end"]) for e in rec["entities"]) == flat

    gold = tmp_path / "gold.jsonl"
    gold.write_text(json.dumps({"id": "1", "text": "李四出生于上海", "entities": [
        {"type": "人名", "start": 0, "end": 2, "text": "李四"}, {"type": "地名", "start": 5, "end": 7, "text": "上海"}]},
        ensure_ascii=False) + "\n", encoding="utf-8")
    reports = {}
    for flag in ("--flat-ner", "--no-flat-ner"):
        res = runner.invoke(app, ["eval", str(gold), "--json", flag, *m])
        assert res.exit_code == 0, res.output
        reports[flag] = json.loads(res.stdout)["ner"]
    assert reports["--flat-ner"]["flat_ner"] is True and reports["--no-flat-ner"]["flat_ner"] is False
    assert reports["--flat-ner"]["predicted"] < reports["--no-flat-ner"]["predicted"]


def test_relation_threshold_option(untrained_model_dir, tmp_path):
    m = ["--model", str(untrained_model_dir), "--backend", "torch"]
    res = runner.invoke(app, ["extract", "李四出生于上海", "-e", "人名", "--relation-threshold", "0.5", *m])
    assert res.exit_code != 0 and "relation_threshold applies to schema requests" in res.output
    (tmp_path / "in.txt").write_text("李四出生于上海\n", encoding="utf-8")
    res = runner.invoke(app, ["batch", str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.jsonl"), "-i", "找人名",
                              "--relation-threshold", "0.5", *m])
    assert res.exit_code != 0 and "relation_threshold applies to schema requests" in res.output
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"relations": [{"subject": "人名", "predicate": "出生地"}]}))

    def triples(*extra):
        res = runner.invoke(app, ["extract", "李四出生于上海", "-s", str(schema), *m, "--threshold", "0.001", *extra])
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout)["relations"]

    assert triples(), "an untrained model at a tiny threshold answers every pass"
    assert triples("--relation-threshold", "1.0") == [], "objects alone meet the stricter threshold"
    res = runner.invoke(app, ["batch", str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.jsonl"), "-s", str(schema),
                              *m, "--threshold", "0.001", "--relation-threshold", "1.0", "--no-progress"])
    assert res.exit_code == 0, res.output
    [rec] = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rec["entities"] and rec["relations"] == []


def test_export_outlier_ratio_zero_quantizes_every_layer(tmp_path, random_model, tiny_tokenizer):
    from tests.test_onnx import with_outlier_channel

    with_outlier_channel(random_model, layer=0).save_pretrained(tmp_path / "model")
    tiny_tokenizer.save(tmp_path / "model")
    res = runner.invoke(app, ["export", str(tmp_path / "model"), "-o", str(tmp_path / "int8"), "--quantize", "int8",
                              "--outlier-ratio", "0"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "int8" / "config.json").read_text())["onnx"]["fp32_matmuls"] == []
    res = runner.invoke(app, ["export", str(tmp_path / "model"), "-o", str(tmp_path / "x"), "--outlier-ratio", "-1"])
    assert res.exit_code != 0 and "outlier-ratio" in res.output


def test_export_records_the_decoding_defaults_it_is_given(tmp_path, random_model, tiny_tokenizer):
    from hugie.extractor import Extractor

    random_model.save_pretrained(tmp_path / "model")
    tiny_tokenizer.save(tmp_path / "model")
    trained = json.loads((tmp_path / "model" / "config.json").read_text())
    res = runner.invoke(app, ["export", str(tmp_path / "model"), "-o", str(tmp_path / "fp32"), "--threshold", "0.35",
                              "--relation-threshold", "0.85"])
    assert res.exit_code == 0, res.output
    config = json.loads((tmp_path / "fp32" / "config.json").read_text())
    assert (config["threshold"], config["relation_threshold"]) == (0.35, 0.85) != (trained["threshold"],
                                                                                trained.get("relation_threshold"))
    info = Extractor.load(tmp_path / "fp32", backend="onnx", device="cpu").info()
    assert (info["threshold"], info["relation_threshold"]) == (0.35, 0.85)
    res = runner.invoke(app, ["export", str(tmp_path / "model"), "-o", str(tmp_path / "x"), "--threshold", "1.5"])
    assert res.exit_code != 0 and "threshold must be between 0 and 1, got 1.5" in res.output
    assert not (tmp_path / "x").exists()


def test_export_rejects_unknown_or_out_of_range_decoding_before_writing(tmp_path):
    from hugie.errors import HugieError
    from hugie.export import export_model

    for decoding, code in (({"top_k": 3}, "E028"), ({"relation_threshold": -0.1}, "E003"), ({"threshold": True}, "E003")):
        with pytest.raises(HugieError) as err:
            export_model(tmp_path / "missing-model", tmp_path / "out", decoding=decoding)
        assert err.value.code == code
    assert not (tmp_path / "out").exists()


def test_a_file_problem_no_command_checks_is_one_catalogued_line(tmp_path):
    import subprocess
    import sys

    src = tmp_path / "in.json"
    src.write_text('{"text": "张三", "label": {}}\n', encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "hugie.cli", "convert", str(src), "-o", "/proc/hugie-test/out.jsonl",
                           "--format", "cluener"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "[E039] cannot use /proc/hugie-test/out.jsonl" in done.stderr and "Traceback" not in done.stderr
