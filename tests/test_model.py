import numpy as np
import pytest
import torch

from hugie.modeling import MASK_VALUE, GlobalPointerModel, multilabel_categorical_crossentropy, rope
from hugie.scoring import apply_rope, span_scores_banded, span_scores_reference


def test_torch_rope_matches_numpy_reference():
    x = torch.randn(2, 7, 8)
    assert np.allclose(rope(x).numpy(), apply_rope(x.numpy()), atol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
    q = torch.randn(1, 1, 16).repeat(1, 6, 1)
    k = torch.randn(1, 1, 16).repeat(1, 6, 1)
    s = torch.einsum("bid,bjd->bij", rope(q), rope(k))[0]
    assert torch.allclose(s[0, 2], s[3, 5], atol=1e-4)
    assert not torch.allclose(s[0, 1], s[0, 3], atol=1e-4)


@pytest.mark.parametrize("shape,width", [((1, 1, 4), 1), ((3, 9, 8), 4), ((2, 12, 16), 32), ((4, 5, 2), 2)])
def test_banded_scoring_equals_dense_reference(shape, width):
    rng = np.random.default_rng(sum(shape) + width)
    b, l, _ = shape
    q, k = rng.normal(size=shape).astype(np.float32), rng.normal(size=shape).astype(np.float32)
    sb, eb = rng.normal(size=(b, l)).astype(np.float32), rng.normal(size=(b, l)).astype(np.float32)
    mask = rng.random((b, l)) > 0.3
    for thr in (-1e9, 0.0, 1.0, 1e9):
        s1, v1 = span_scores_reference(q, k, sb, eb, mask, thr, width)
        s2, v2 = span_scores_banded(q, k, sb, eb, mask, thr, width)
        order = np.lexsort((s2[:, 3], s2[:, 2], s2[:, 1], s2[:, 0]))
        assert np.array_equal(s1, s2[order])
        assert np.allclose(v1, v2[order], atol=1e-4)
        if thr == -1e9:
            assert all(mask[x, i] and mask[x, j] and 0 <= j - i < width and slot == 0 for x, slot, i, j in s1)


def test_model_logits_match_shared_scoring(random_model, tiny_tokenizer):
    batch = tiny_tokenizer.encode_pairs([("找到文章中所有【人名】类型的实体？", "张三在北京开会"), ("x", "李四")])
    ids, attn, mask = (torch.from_numpy(a) for a in (batch.input_ids, batch.attention_mask, batch.span_mask))
    with torch.no_grad():
        q, k, sb, eb = random_model.project(ids, attn)
        logits = random_model(ids, attn, mask)["logits"]
    spans, scores = span_scores_reference(q.numpy(), k.numpy(), sb.numpy(), eb.numpy(), batch.span_mask, -1e3,
                                          random_model.config.max_span_width)
    assert np.allclose(logits[spans[:, 0], spans[:, 2], spans[:, 3]].numpy(), scores, atol=1e-4)
    # everything else is masked: outside the text segment, below the diagonal, wider than W
    n_valid = int((logits > MASK_VALUE / 2).sum())
    assert n_valid == len(spans)


def test_mask_value_is_finite_in_fp16_and_loss_ignores_masked():
    assert np.isfinite(np.float16(MASK_VALUE)) and np.isfinite(np.float16(MASK_VALUE * 2))
    logits = torch.tensor([[2.0, -3.0, MASK_VALUE, MASK_VALUE]])
    labels = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    base = multilabel_categorical_crossentropy(logits, labels)
    logits2 = logits.clone()
    logits2[0, 3] = MASK_VALUE * 1.5
    assert torch.allclose(base, multilabel_categorical_crossentropy(logits2, labels))
    assert torch.isfinite(multilabel_categorical_crossentropy(logits.half(), labels))
    better = multilabel_categorical_crossentropy(torch.tensor([[6.0, -6.0, MASK_VALUE, MASK_VALUE]]), labels)
    assert better < base


def test_save_and_load_roundtrip(tmp_path, random_model, tiny_tokenizer):
    random_model.save_pretrained(tmp_path)
    loaded = GlobalPointerModel.from_pretrained(tmp_path)
    assert loaded.config.max_span_width == random_model.config.max_span_width
    assert loaded.config.instructions["zh"]["entity"] == "找到文章中所有【{type}】类型的实体？"
    batch = tiny_tokenizer.encode_pairs([("a", "张三")])
    ids, attn = torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)
    with torch.no_grad():
        a = random_model.eval().project(ids, attn)[0]
        b = loaded.eval().project(ids, attn)[0]
    assert torch.allclose(a, b)


SETTINGS = ("encoder", "head_size", "max_span_width", "threshold", "max_seq_length", "relation_threshold",
            "one_type_per_span", "flat_ner", "instructions")


def test_the_light_config_reads_what_the_torch_config_writes(random_model, tmp_path):
    from hugie.configuration import HugieConfig
    from hugie.modeling import GlobalPointerConfig
    from hugie.modeling import HugieConfig as TorchConfig

    assert TorchConfig is GlobalPointerConfig, "from hugie.modeling import HugieConfig keeps working"
    light_defaults, torch_defaults = HugieConfig(), GlobalPointerConfig()
    for key in SETTINGS:
        assert getattr(light_defaults, key) == getattr(torch_defaults, key), key
    random_model.config.relation_threshold = 0.7
    random_model.save_pretrained(tmp_path)
    light, full = HugieConfig.from_pretrained(tmp_path), GlobalPointerConfig.from_pretrained(tmp_path)
    for key in SETTINGS:
        assert getattr(light, key) == getattr(full, key), key
    assert light.relation_threshold == 0.7 and light.onnx is None
    assert light.extra["model_type"] == "hugie_global_pointer"
    assert HugieConfig.from_dict(light.to_dict()) == light


def test_the_light_config_of_the_embedded_export_and_its_errors(tmp_path):
    from hugie.configuration import HugieConfig, has_torch_weights
    from hugie.errors import HugieError
    from hugie.extractor import DEFAULT_MODEL_DIR

    cfg = HugieConfig.from_pretrained(DEFAULT_MODEL_DIR)
    assert cfg.onnx["quantize"] == "int8" and cfg.head_size == 64 and not has_torch_weights(DEFAULT_MODEL_DIR)
    with pytest.raises(HugieError, match="E012"):
        HugieConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(HugieError, match="E015"):
        HugieConfig.from_pretrained(tmp_path)
