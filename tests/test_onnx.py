"""ONNX export and the onnxruntime engine: same spans as torch, fused op or fallback."""

import json

import pytest

from hugie.extractor import Extractor
from tests.conftest import synthetic_records

PER = "找到文章中所有【人名】类型的实体？"
LOC = "找到文章中所有【地名】类型的实体？"


@pytest.fixture(scope="module")
def exported(trained_model_dir, tmp_path_factory):
    from hugie.export import export_model

    out = tmp_path_factory.mktemp("onnx")
    fp32 = export_model(trained_model_dir, out / "fp32")
    int8 = export_model(trained_model_dir, out / "int8", quantize="int8")
    return fp32, int8


def pairs():
    texts = [r["text"] for r in synthetic_records(40, seed=11)]
    texts += ["😀张三\r\n在北京。" * 3, "", "   "]
    return [(ins, t) for t in texts for ins in (PER, LOC)]


def test_export_directory_is_self_describing(exported):
    fp32, int8 = exported
    for d, q in ((fp32, "none"), (int8, "int8")):
        cfg = json.loads((d / "config.json").read_text())
        assert cfg["onnx"]["quantize"] == q and (d / cfg["onnx"]["file"]).exists()
        assert (d / "tokenizer.json").exists() and cfg["instructions"]["zh"]["entity"]
        assert cfg["_name_or_path"] == d.name  # not the training run's local path
    assert (int8 / "encoder.onnx").stat().st_size < (fp32 / "encoder.onnx").stat().st_size


@pytest.mark.parametrize("use_custom_op", [True, False])
def test_onnx_fp32_gives_the_same_spans_as_torch(trained_model_dir, exported, use_custom_op):
    from hugie.backends.onnx import OnnxBackend

    torch_ex = Extractor.load(trained_model_dir, backend="torch", device="cpu")
    onnx_ex = Extractor.load(exported[0], backend="onnx", device="cpu")
    onnx_ex.backend = OnnxBackend(exported[0], onnx_ex.config, device="cpu", use_custom_op=use_custom_op)
    if use_custom_op and onnx_ex.backend.library is None:
        pytest.skip("SpanScore custom op could not be built here")
    a = torch_ex.extract(pairs(), threshold=0.3)
    b = onnx_ex.extract(pairs(), threshold=0.3)
    found = 0
    for sa, sb in zip(a, b):
        keys_a = {(s.start, s.end) for s in sa if abs(s.score - 0.3) > 1e-3}
        keys_b = {(s.start, s.end) for s in sb if abs(s.score - 0.3) > 1e-3}
        assert keys_a == keys_b
        found += len(keys_a)
        for x in sa:
            y = next((y for y in sb if (y.start, y.end) == (x.start, x.end)), None)
            if y is not None:
                assert abs(x.score - y.score) < 1e-3
    assert found > 20, "the fixture model must actually find spans"


def test_int8_quantizes_every_projection_and_cpu_sessions_keep_slow_fusions_apart(exported, tmp_path):
    import onnx
    import onnxruntime as ort

    from hugie.backends.onnx import CPU_DISABLED_FUSIONS

    nodes = onnx.load(str(exported[1] / "encoder.onnx")).graph.node
    ops = [n.op_type for n in nodes]
    assert "QAttention" in ops and "Attention" not in ops, "the fused attention's QKV weights must be int8"
    kept = json.loads((exported[1] / "config.json").read_text())["onnx"]["fp32_matmuls"]
    assert [n.name for n in nodes if n.op_type == "MatMul"] == kept, "every other weight MatMul must be quantized"
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "session.onnx")
    ort.InferenceSession(str(exported[1] / "encoder.onnx"), opts, providers=["CPUExecutionProvider"],
                         disabled_optimizers=list(CPU_DISABLED_FUSIONS))
    session_ops = {n.op_type for n in onnx.load(str(tmp_path / "session.onnx")).graph.node}
    assert "LayerNormalization" in session_ops
    assert not session_ops & {"SkipLayerNormalization", "BiasGelu"}


def with_outlier_channel(model, layer: int, channel: int = 5, value: float = 200.0):
    """Make one channel entering ``layer``'s FFN output projection a constant ``value`` with small outgoing
    weights, as in trained BERTs."""
    import torch

    ffn = model.encoder.encoder.layer[layer]
    with torch.no_grad():
        ffn.intermediate.dense.weight[channel] = 0.0
        ffn.intermediate.dense.bias[channel] = value
        ffn.output.dense.weight[:, channel] /= value
    return model


def encoder_outputs(directory, batch, bits: int | None = None):
    """The raw encoder graph's outputs, its int8 weights narrowed as OnnxBackend narrows them on this CPU
    (or to ``bits``)."""
    import onnx
    import onnxruntime as ort

    from hugie.backends.onnx import int8_weight_bits, narrow_int8_weights

    model = onnx.load(str(directory / "encoder.onnx"))
    narrow_int8_weights(model, bits or int8_weight_bits())
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input_ids": batch.input_ids.astype("int64"),
                              "attention_mask": batch.attention_mask.astype("int64")})


def test_outlier_channels_finds_the_injected_channel(random_model, tiny_tokenizer):
    from hugie.export import outlier_channels

    assert outlier_channels(random_model, tiny_tokenizer) == {}
    with_outlier_channel(random_model, layer=1, channel=5)
    assert outlier_channels(random_model, tiny_tokenizer) == {1: [5]}
    assert outlier_channels(random_model, tiny_tokenizer, ratio=None) == {}


def test_export_leaves_the_model_in_eval_mode(random_model, tmp_path):
    from hugie.export import export_onnx

    export_onnx(random_model.eval(), tmp_path / "raw.onnx")
    assert not random_model.training, "dropout would be on in everything run after the export (calibration too)"


def test_split_outlier_channels_computes_the_same_projection(random_model, tiny_tokenizer, tmp_path):
    import numpy as np
    import onnx

    from hugie.export import export_model, split_outlier_channels

    random_model.save_pretrained(tmp_path / "model")
    tiny_tokenizer.save(tmp_path / "model")
    fp32 = export_model(tmp_path / "model", tmp_path / "fp32")
    (tmp_path / "split").mkdir()
    kept = split_outlier_channels(fp32 / "encoder.onnx", tmp_path / "split" / "encoder.onnx", {0: [3, 7], 1: [5]})
    assert [k.split("/")[-5] for k in kept] == ["layer.0", "layer.1"]
    nodes = onnx.load(str(tmp_path / "split" / "encoder.onnx")).graph.node
    assert sum(n.op_type == "Gather" and n.name.endswith("outlier_gather") for n in nodes) == 2
    batch = tiny_tokenizer.encode_pairs(pairs())
    mask = batch.attention_mask.astype(bool)
    for a, b in zip(encoder_outputs(tmp_path / "split", batch), encoder_outputs(fp32, batch)):
        np.testing.assert_allclose(a[mask], b[mask], atol=1e-4)


def test_int8_keeps_outlier_channels_fp32_and_stays_closer_to_fp32(random_model, tiny_tokenizer, tmp_path):
    import numpy as np
    import onnx

    from hugie.export import export_model

    with_outlier_channel(random_model, layer=1, channel=5).save_pretrained(tmp_path / "model")
    tiny_tokenizer.save(tmp_path / "model")
    fp32 = export_model(tmp_path / "model", tmp_path / "fp32")
    mixed = export_model(tmp_path / "model", tmp_path / "mixed", quantize="int8")
    plain = export_model(tmp_path / "model", tmp_path / "plain", quantize="int8", outlier_ratio=None)

    onnx_cfg = json.loads((mixed / "config.json").read_text())["onnx"]
    kept = onnx_cfg["fp32_matmuls"]
    assert onnx_cfg["outlier_channels"] == {"1": [5]}
    assert len(kept) == 1 and kept[0].endswith("layer.1/output/dense/MatMul/outlier_MatMul")
    info = Extractor.load(mixed, backend="onnx", device="cpu").info()
    assert info["fp32_matmuls"] == kept and info["outlier_channels"] == {"1": [5]}
    mixed_nodes = onnx.load(str(mixed / "encoder.onnx")).graph.node
    assert [n.name for n in mixed_nodes if n.op_type == "MatMul"] == kept
    assert sum(n.op_type == "MatMulInteger" for n in mixed_nodes) == sum(
        n.op_type == "MatMulInteger" for n in onnx.load(str(plain / "encoder.onnx")).graph.node), \
        "the projection itself must stay int8"
    assert "MatMul" not in {n.op_type for n in onnx.load(str(plain / "encoder.onnx")).graph.node}

    batch = tiny_tokenizer.encode_pairs(pairs())
    ref = encoder_outputs(fp32, batch)
    mask = batch.attention_mask.astype(bool)
    # 7-bit weights: no CPU saturates them, so every machine computes the same int8 results
    error = {d.name: max(float(np.abs(a - b)[mask].mean()) for a, b in zip(encoder_outputs(d, batch, bits=7)[:2],
                                                                           ref[:2]))
             for d in (mixed, plain)}
    assert error["mixed"] < error["plain"] / 1.5, error  # measured 0.0026 vs 0.0043


def count_sessions(monkeypatch) -> list:
    """Every onnxruntime.InferenceSession built from now on (the backend looks the class up at load)."""
    import onnxruntime

    built, real = [], onnxruntime.InferenceSession

    def counting(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(onnxruntime, "InferenceSession", counting)
    return built


def test_one_session_per_model_for_every_threshold(exported, monkeypatch):
    from hugie.backends.onnx import OnnxBackend
    from hugie.kernels import custom_op_library

    custom_op_library()  # its once-per-process check of a built library runs a tiny session of its own
    built = count_sessions(monkeypatch)
    ex = Extractor.load(exported[0], backend="onnx", device="cpu")
    assert len(built) == 1 and ex.backend.session is built[0]
    results = {t: ex.extract(pairs(), threshold=t) for t in (0.6, 0.2, 0.95, 0.05, 0.5, 0.3)}
    assert len(built) == 1, "a request with a new threshold must not build a session"
    for t, got in results.items():
        assert all(s.score >= t for spans in got for s in spans)
    assert sum(map(len, results[0.05])) > sum(map(len, results[0.5])) > sum(map(len, results[0.95])), \
        "the thresholds must change the answer"
    fresh = Extractor.load(exported[0], backend="onnx", device="cpu")
    fresh.backend = OnnxBackend(exported[0], fresh.config, device="cpu", use_custom_op=False, warmup=False)
    for t in (0.2, 0.95):  # fused op or fallback, the same spans at every threshold
        for a, b in zip(fresh.extract(pairs(), threshold=t), results[t]):
            assert [(s.start, s.end) for s in a] == [(s.start, s.end) for s in b]
            assert [s.score for s in a] == pytest.approx([s.score for s in b], abs=1e-6)


def test_the_session_is_shared_by_concurrent_threads(exported):
    from concurrent.futures import ThreadPoolExecutor

    ex = Extractor.load(exported[0], backend="onnx", device="cpu")
    thresholds = [0.1, 0.3, 0.5, 0.7, 0.9] * 4
    want = {t: ex.extract(pairs(), threshold=t) for t in set(thresholds)}
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda t: ex.extract(pairs(), threshold=t), thresholds))
    assert got == [want[t] for t in thresholds]


def test_a_narrower_max_width_filters_and_a_wider_one_is_refused(exported, tiny_tokenizer):
    import numpy as np

    from hugie.scoring import logit

    ex = Extractor.load(exported[0], backend="onnx", device="cpu")
    batch = tiny_tokenizer.encode_pairs(pairs()[:8])
    width = ex.backend.max_width
    rows, logits = ex.backend.score(batch, logit(0.01), width)
    narrow, narrow_logits = ex.backend.score(batch, logit(0.01), 2)
    keep = rows[:, 3] - rows[:, 2] < 2
    assert 0 < len(narrow) < len(rows)
    np.testing.assert_array_equal(narrow, rows[keep])
    np.testing.assert_array_equal(narrow_logits, logits[keep])
    with pytest.raises(ValueError, match="max_width"):
        ex.backend.score(batch, 0.0, width + 1)


def test_an_export_exports_again(exported, tmp_path):
    """`hugie export` of an ONNX-only directory (the embedded model is one) reads its weights out of the graph."""
    from hugie.export import export_model

    fp32 = export_model(exported[1], tmp_path / "fp32")  # int8 export → fp32
    int8 = export_model(fp32, tmp_path / "int8", quantize="int8")  # and an export of that export
    for directory, quantize in ((fp32, "none"), (int8, "int8")):
        cfg = json.loads((directory / "config.json").read_text())
        assert cfg["onnx"]["quantize"] == quantize and cfg["max_span_width"] == 16
        ex = Extractor.load(directory, backend="onnx", device="cpu")
        assert [s.text for s in ex.extract(PER, "昨天李四在上海开会。")] == ["李四"]


def test_int8_model_still_extracts(exported):
    ex = Extractor.load(exported[1], backend="onnx", device="cpu")
    assert [s.text for s in ex.extract(PER, "昨天李四在上海开会。")] == ["李四"]
    info = ex.info()
    assert info["backend"] == "onnx" and "CPUExecutionProvider" in info["providers"]


def test_auto_backend_prefers_onnx_and_cuda_request_fails_clearly(exported):
    import onnxruntime

    from hugie.errors import HugieError

    assert Extractor.load(exported[0]).backend.name == "onnx"
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(HugieError, match="E014"):
            Extractor.load(exported[0], backend="onnx", device="cuda")


@pytest.fixture(scope="module")
def exported_fp16(trained_model_dir, tmp_path_factory):
    from hugie.export import export_model

    return export_model(trained_model_dir, tmp_path_factory.mktemp("onnx16") / "fp16", quantize="fp16")


def spans_by_pair(extractor, threshold=0.3):
    return [{(s.start, s.end): s.score for s in found} for found in extractor.extract(pairs(), threshold=threshold)]


def clear_of_threshold(spans, threshold=0.3, margin=0.02):
    """Span keys whose score is far enough from the threshold that fp16 rounding cannot flip them."""
    return {k for k, v in spans.items() if abs(v - threshold) > margin}


def test_fp16_export_has_half_weights_and_float_io_and_matches_fp32(exported, exported_fp16):
    import onnx
    from onnx import TensorProto

    cfg = json.loads((exported_fp16 / "config.json").read_text())
    assert cfg["onnx"]["quantize"] == "fp16"
    graph = onnx.load(str(exported_fp16 / cfg["onnx"]["file"])).graph
    assert sum(t.data_type == TensorProto.FLOAT16 for t in graph.initializer) > len(graph.initializer) // 2
    assert all(o.type.tensor_type.elem_type == TensorProto.FLOAT for o in graph.output)  # keep_io_types
    half = spans_by_pair(Extractor.load(exported_fp16, backend="onnx", device="cpu"))
    full = spans_by_pair(Extractor.load(exported[0], backend="onnx", device="cpu"))
    assert sum(map(len, full)) > 0
    for a, b in zip(half, full):  # spans scoring clear of the threshold agree; scores to fp16 precision
        clear = clear_of_threshold(b)
        assert clear <= set(a) and clear_of_threshold(a) <= set(b)
        for k in clear:
            assert a[k] == pytest.approx(b[k], abs=0.02)


@pytest.mark.gpu
def test_fp16_export_on_cuda_matches_cpu(exported_fp16):
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("no CUDA execution provider")
    gpu = spans_by_pair(Extractor.load(exported_fp16, backend="onnx", device="cuda"))
    cpu = spans_by_pair(Extractor.load(exported_fp16, backend="onnx", device="cpu"))
    for a, b in zip(gpu, cpu):
        assert clear_of_threshold(b) <= set(a)


@pytest.mark.parametrize("device, options", [
    ("cuda:1", [("CUDAExecutionProvider", {"device_id": 1}), ("CPUExecutionProvider", {})]),
    ("cuda:0", [("CUDAExecutionProvider", {"device_id": 0}), ("CPUExecutionProvider", {})]),
    ("cuda", [("CUDAExecutionProvider", {"device_id": 0}), ("CPUExecutionProvider", {})]),
    ("auto", [("CUDAExecutionProvider", {"device_id": 0}), ("CPUExecutionProvider", {})]),
    ("cpu", [("CPUExecutionProvider", {})]),
])
def test_cuda_device_index_reaches_the_provider(monkeypatch, device, options):
    import onnxruntime

    from hugie.backends.onnx import session_providers

    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert session_providers(device) == options


@pytest.mark.parametrize("device", ["cuda:", "cuda:x", "cuda1", "cpu:0", "gpu", "cuda:-1", "", "auto:1"])
def test_malformed_devices_are_refused(device):
    from hugie.backends import parse_device
    from hugie.backends.onnx import session_providers
    from hugie.backends.torch import resolve_device
    from hugie.errors import HugieError

    for check in (parse_device, session_providers, resolve_device):
        with pytest.raises(HugieError, match="E014") as info:
            check(device)
        assert "cuda:N" in str(info.value)


def test_parse_device():
    from hugie.backends import parse_device

    assert parse_device("cuda:3") == ("cuda", 3)
    assert parse_device("CUDA") == ("cuda", None)
    assert parse_device("auto") == ("auto", None)
    assert parse_device("cpu") == ("cpu", None)


@pytest.mark.parametrize("quantize, device, first", [
    ("none", "auto", "CUDAExecutionProvider"),
    ("fp16", "auto", "CUDAExecutionProvider"),
    ("int8", "auto", "CPUExecutionProvider"),  # quantized ops have CPU kernels only
    ("int8", "cuda", "CUDAExecutionProvider"),  # an explicit request is honoured (with a warning)
    ("int8", "cpu", "CPUExecutionProvider"),
])
def test_provider_choice_on_a_cuda_machine(monkeypatch, caplog, quantize, device, first):
    import onnxruntime

    from hugie.backends.onnx import choose_providers

    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with caplog.at_level("INFO", logger="hugie.onnx"):
        providers = choose_providers(device, quantize)
    assert providers[0] == first and providers[-1] == "CPUExecutionProvider"
    assert ("fp16 for CUDA" in caplog.text) == (quantize == "int8" and device != "cpu")


@pytest.mark.gpu
def test_cuda_provider_matches_cpu(exported):
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("no CUDA execution provider")
    cpu = Extractor.load(exported[0], backend="onnx", device="cpu").extract(pairs())
    gpu = Extractor.load(exported[0], backend="onnx", device="cuda").extract(pairs())
    assert [[(s.start, s.end) for s in x] for x in cpu] == [[(s.start, s.end) for s in x] for x in gpu]


def test_model_from_export_gives_back_the_weights_of_every_export(random_model, tiny_tokenizer, tmp_path):
    import numpy as np
    import onnx
    import torch

    from hugie.errors import HugieError
    from hugie.export import export_model, model_from_export

    torch.manual_seed(3)
    with torch.no_grad():  # distinct LayerNorms and biases: no two initializers coincide, so none is deduplicated
        for p in random_model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    with_outlier_channel(random_model, layer=1, channel=5).save_pretrained(tmp_path / "model")
    tiny_tokenizer.save(tmp_path / "model")
    original = random_model.state_dict()
    fp32 = export_model(tmp_path / "model", tmp_path / "fp32")
    int8 = export_model(tmp_path / "model", tmp_path / "int8", quantize="int8")
    assert json.loads((int8 / "config.json").read_text())["onnx"]["outlier_channels"] == {"1": [5]}

    exact = model_from_export(fp32).state_dict()
    for name, value in original.items():
        torch.testing.assert_close(exact[name], value, rtol=0, atol=0, msg=name)
    rebuilt = model_from_export(int8).state_dict()
    for name, value in original.items():
        if value.is_floating_point():  # int8 steps are at most max|w| / 127: half of one is the error bound
            assert (rebuilt[name] - value).abs().max() <= value.abs().max() / 254 + 1e-7, name
    ffn_out = "encoder.encoder.layer.1.output.dense.weight"
    assert torch.equal(rebuilt[ffn_out][:, 5], original[ffn_out][:, 5]), "the outlier channel is kept exact"
    assert not torch.equal(rebuilt[ffn_out][:, 4], original[ffn_out][:, 4]), "the other channels were quantized"

    batch = tiny_tokenizer.encode_pairs(pairs())
    with torch.no_grad():
        q, k, *_ = model_from_export(fp32).project(torch.from_numpy(batch.input_ids.astype("int64")),
                                                   torch.from_numpy(batch.attention_mask.astype("int64")))
    mask = batch.attention_mask.astype(bool)
    onnx_q, onnx_k, *_ = encoder_outputs(fp32, batch)
    np.testing.assert_allclose(q.numpy()[mask], onnx_q[mask], atol=1e-4)
    np.testing.assert_allclose(k.numpy()[mask], onnx_k[mask], atol=1e-4)

    from hugie.export import torch_model_dir

    assert torch_model_dir(tmp_path / "model", tmp_path / "work") == tmp_path / "model"
    saved = torch_model_dir(int8, tmp_path / "work")
    assert "onnx" not in json.loads((saved / "config.json").read_text())
    assert Extractor.load(saved, backend="torch", device="cpu").info()["backend"] == "torch"

    graph = onnx.load(str(fp32 / "encoder.onnx"))
    next(n for n in graph.graph.node if n.name == "/projection/MatMul").name = "/renamed/MatMul"
    onnx.save(graph, str(fp32 / "encoder.onnx"))
    with pytest.raises(HugieError, match="projection.weight"):
        model_from_export(fp32)
    (int8 / "encoder.onnx").unlink()
    with pytest.raises(HugieError, match="encoder.onnx"):
        model_from_export(int8)


def test_int8_weights_narrowed_to_7_bits_cannot_saturate_and_stay_within_half_a_step(random_model, tiny_tokenizer,
                                                                                     tmp_path, monkeypatch):
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from hugie.backends.onnx import int8_weight_bits, narrow_int8_weights
    from hugie.errors import HugieError
    from hugie.export import export_model

    with_outlier_channel(random_model, layer=1, channel=5).save_pretrained(tmp_path / "model")
    tiny_tokenizer.save(tmp_path / "model")
    fp32 = export_model(tmp_path / "model", tmp_path / "fp32")
    int8 = export_model(tmp_path / "model", tmp_path / "int8", quantize="int8")
    model = onnx.load(str(int8 / "encoder.onnx"))
    before = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert narrow_int8_weights(model, 8) == 0
    changed = narrow_int8_weights(model, 7)
    assert changed == sum(n.op_type in ("MatMulInteger", "QAttention") for n in model.graph.node)
    after = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for name in (n for n in after if n.endswith("_quantized") and after[n].dtype == np.int8
                 and not n.startswith("model.encoder.embeddings")):
        stem = name.removesuffix("_quantized")
        assert after[name].min() >= -64 and after[name].max() <= 63, name
        old = before[name].astype(np.float32) * before[f"{stem}_scale"]
        new = after[name].astype(np.float32) * after[f"{stem}_scale"]
        assert np.all(np.abs(new - old) <= before[f"{stem}_scale"] * 1.0001), name
    assert np.array_equal(after["model.encoder.embeddings.word_embeddings.weight_quantized"],
                          before["model.encoder.embeddings.word_embeddings.weight_quantized"]), "Gathers do not saturate"

    batch = tiny_tokenizer.encode_pairs(pairs())
    mask = batch.attention_mask.astype(bool)
    ref = encoder_outputs(fp32, batch)
    error = max(float(np.abs(a - b)[mask].max()) for a, b in zip(encoder_outputs(int8, batch, bits=7)[:2], ref[:2]))
    assert error < 0.05, error  # 8-bit weights on an AVX2-only CPU: 0.15 here

    monkeypatch.setenv("HUGIE_INT8_WEIGHT_BITS", "7")
    assert int8_weight_bits() == 7
    assert Extractor.load(int8, backend="onnx", device="cpu").info()["int8_weight_bits"] == 7
    monkeypatch.setenv("HUGIE_INT8_WEIGHT_BITS", "8")
    assert Extractor.load(int8, backend="onnx", device="cpu").info()["int8_weight_bits"] == 8
    assert Extractor.load(fp32, backend="onnx", device="cpu").info()["int8_weight_bits"] is None
    monkeypatch.setenv("HUGIE_INT8_WEIGHT_BITS", "6")
    with pytest.raises(HugieError, match="HUGIE_INT8_WEIGHT_BITS=6"):
        int8_weight_bits()
