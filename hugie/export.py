"""ONNX export: encoder + Global Pointer projection (q, k before RoPE, start/end bias).

The exported ``encoder.onnx`` has dynamic batch and sequence axes. onnxruntime's transformer
optimizer fuses attention, LayerNorm and GELU; ``int8`` applies dynamic quantization (CPU), with
the outlier input channels of FFN output projections split off into thin fp32 MatMuls (see
:func:`outlier_channels`); ``fp16`` converts weights to half precision with float32 inputs/outputs (CUDA).
The span scorer (fused ``SpanScore`` op, or its standard-ONNX fallback) is attached when a session is created,
so one exported directory works wherever it is loaded.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from pathlib import Path

from .errors import HugieError

log = logging.getLogger("hugie.export")

ENCODER_FILE = "encoder.onnx"
QUANTIZE_CHOICES = ("none", "int8", "fp16")

#: int8 keeps an input channel of an FFN output projection in fp32 when its peak |activation| is at least this
#: many times the median channel's. Dynamic quantization gives the whole activation one scale, so a channel
#: peaking at 60 leaves a channel peaking at 1 about four levels. ``None`` or 0 quantizes every channel.
OUTLIER_RATIO = 25.0

#: Calibration passes for :func:`outlier_channels`: (language, entity types, texts), written for this purpose.
CALIBRATION = (
    ("zh", ("人名", "地名", "机构名", "公司"), (
        "浙商银行企业信贷部叶老桂博士则从另一个角度对五道门槛进行了解读。",
        "2023年3月，李明在北京大学附属医院接受了记者的采访，谈到了新药研发的进展。",
        "《雅典娜女神》是由李安执导的电影，于去年秋天在上海首映。",
        "阿里巴巴集团宣布将在杭州建设新的研发中心，预计投资五十亿元。",
        "今天天气不错，和朋友去西湖边散步，晚上吃了火锅😀",
        "中国足球协会昨日公布了国家队新一期集训名单，共有二十六名球员入选。",
    )),
    ("en", ("person", "location", "organization"), (
        "Apple chief executive Tim Cook met European Commission officials in Brussels on Tuesday.",
        "The Red Cross said 40 people were injured when the storm hit the coast of Florida.",
        "Born in Ulm, Albert Einstein later worked at the patent office in Bern.",
        "Shares of Toyota Motor Corp. rose 3 percent in Tokyo after the company raised its forecast.",
    )),
)

_FFN_OUTPUT = re.compile(r"layer\.(\d+)\.output\.dense$")
_FFN_OUTPUT_NODE = re.compile(r"layer\.(\d+)/output/dense/MatMul$")


def require_torch(what: str = "hugie export") -> None:
    """E015 naming the ``train`` extra unless torch and transformers import (they are not in the light install)."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise HugieError("E015", name=what, reason=f"it needs torch and transformers ({exc}); "
                         'install them with pip install "hugie[train]"') from exc


def _projection(model):
    """What every backend computes, as a module: (input_ids, attention_mask) → q, k, start_bias, end_bias."""
    from torch import nn

    class Projection(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model.project(input_ids, attention_mask)

    class SlotProjection(Projection):
        def forward(self, input_ids, attention_mask, slot_positions, slot_mask):
            return self.model.project(input_ids, attention_mask, slot_positions, slot_mask)

    class ReuseProjection(Projection):
        def forward(self, input_ids, attention_mask, slot_positions, slot_mask, reused_states, reused_mask):
            return self.model.project(input_ids, attention_mask, slot_positions, slot_mask, reused_states,
                                      reused_mask, with_states=True)

    class MarkedProjection(Projection):
        def forward(self, input_ids, attention_mask, slot_positions, slot_mask, reused_states, reused_mask,
                    subject_mask):
            return self.model.project(input_ids, attention_mask, slot_positions, slot_mask, reused_states,
                                      reused_mask, subject_mask, with_states=True)

    if model.reuse_layers:
        return MarkedProjection() if _marks_subject(model) else ReuseProjection()
    return SlotProjection() if model.config.slotted else Projection()


def _marks_subject(model) -> bool:
    return getattr(model, "subject_marker", None) is not None


#: graph inputs of an export: every model's, a slot model's slot markers, and a ``reuse_layers`` model's kept text
#: states (zero positions for rows that read their whole text), with ``slots.mark_subject`` its subjects' tokens in
#: them; such a model also outputs its rows' states
INPUTS = ("input_ids", "attention_mask")
SLOT_INPUTS = ("slot_positions", "slot_mask")
REUSE_INPUTS = ("reused_states", "reused_mask")
SUBJECT_INPUT = "subject_mask"
OUTPUTS = ("q", "k", "start_bias", "end_bias")
REUSE_OUTPUT = "layer_states"


def export_onnx(model, path: Path, opset: int = 17) -> Path:
    """Plain torch → ONNX export with dynamic batch/sequence axes. The model is left in eval mode (the
    exporter restores the wrapper's own mode afterwards, so the wrapper is made in eval mode too)."""
    import torch

    model = model.eval()
    ids = torch.ones((2, 12), dtype=torch.long)
    attn = torch.ones((2, 12), dtype=torch.long)
    attn[1, 8:] = 0
    axes = {"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"},
            "q": {0: "batch", 1: "length"}, "k": {0: "batch", 1: "length"},
            "start_bias": {0: "batch", 1: "length"}, "end_bias": {0: "batch", 1: "length"}}
    args, names, outputs = (ids, attn), list(INPUTS), list(OUTPUTS)
    if model.config.slotted:  # q [B, K, L, D], biases [B, K, L]
        args += (torch.tensor([[1, 3, 5], [1, 3, 0]]), torch.tensor([[1, 1, 1], [1, 1, 0]]))
        names += SLOT_INPUTS
        axes.update({"slot_positions": {0: "batch", 1: "slots"}, "slot_mask": {0: "batch", 1: "slots"},
                     "q": {0: "batch", 1: "slots", 2: "length"}, "start_bias": {0: "batch", 1: "slots", 2: "length"},
                     "end_bias": {0: "batch", 1: "slots", 2: "length"}})
    if model.reuse_layers:  # outputs span the rows' positions and the reused text's: "positions"
        reused_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
        args += (torch.randn((2, 4, model.encoder.config.hidden_size)), reused_mask)
        names += REUSE_INPUTS
        if _marks_subject(model):
            args += (torch.tensor([[0, 1, 0, 0], [1, 0, 0, 0]]),)
            names.append(SUBJECT_INPUT)
            axes[SUBJECT_INPUT] = {0: "batch", 1: "text"}
        outputs.append(REUSE_OUTPUT)
        axes.update({"reused_states": {0: "batch", 1: "text"}, "reused_mask": {0: "batch", 1: "text"},
                     "q": {0: "batch", 1: "slots", 2: "positions"}, "k": {0: "batch", 1: "positions"},
                     "start_bias": {0: "batch", 1: "slots", 2: "positions"},
                     "end_bias": {0: "batch", 1: "slots", 2: "positions"},
                     REUSE_OUTPUT: {0: "batch", 1: "length"}})
    with torch.no_grad():
        torch.onnx.export(_projection(model).eval(), args, str(path),
                          input_names=names,
                          output_names=outputs, dynamic_axes=axes,
                          opset_version=opset, do_constant_folding=True, dynamo=False)
    return path


def optimize(source: Path, target: Path, num_heads: int, hidden_size: int, fp16: bool = False,
             fuse_embeddings: bool = True) -> Path:
    """onnxruntime transformer fusions (attention, LayerNorm, GELU); optional fp16 weights.

    ``fuse_embeddings=False`` keeps the word-embedding Gather visible so int8 quantization can
    shrink the embedding table (the fused EmbedLayerNormalization keeps it in fp32). Residual
    Add + LayerNorm and bias + GELU stay unfused here: the session fuses them where that is faster
    (see :data:`hugie.backends.onnx.CPU_DISABLED_FUSIONS`).
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_embed_layer_norm = fuse_embeddings
    options.enable_skip_layer_norm = options.enable_bias_skip_layer_norm = False
    options.enable_bias_gelu = False
    opt = optimize_model(str(source), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                         opt_level=1 if fp16 else 0, optimization_options=options)
    if fp16:
        opt.convert_float_to_float16(keep_io_types=True)
    fused = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
    log.info("fused operators: %s", fused)
    opt.save_model_to_file(str(target))
    return target


def outlier_channels(model, tokenizer, ratio: float | None = OUTLIER_RATIO) -> dict[int, list[int]]:
    """Input channels of each layer's FFN output projection whose peak |activation| on the calibration passes
    is at least ``ratio`` × the median channel's (padding excluded): {layer: channels}, layers without any left out."""
    if not ratio:
        return {}
    import torch

    from .instructions import templates

    if model.config.slotted:  # one row per text: its language's types as slots
        from .prompts import ENTITY, Prompt, PromptTokenizer

        prompts = PromptTokenizer(tokenizer, model.config.slots)
        rows = [(prompts.encode(Prompt(ENTITY, tuple(types))), text)
                for _, types, texts in CALIBRATION for text in texts]
        tokens = tokenizer.tokenize([text for _, text in rows])
        pairs = [(prompt, text) for ((prompt, _), _), text in zip(rows, tokens)]
        markers = [markers for ((_, markers), _) in rows]
    else:
        pairs = [(templates(lang).for_entity(t), text)
                 for lang, types, texts in CALIBRATION for t in types for text in texts]
        tokens = tokenizer.tokenize([p for pair in pairs for p in pair])
        pairs, markers = list(zip(tokens[::2], tokens[1::2])), None
    fits = [tokenizer.pair_length(*pair) <= tokenizer.max_length for pair in pairs]
    if not any(fits):
        log.warning("no calibration pass fits max_length %d; quantizing every channel", tokenizer.max_length)
        return {}
    batch = tokenizer.build_batch([p for p, fit in zip(pairs, fits) if fit],
                                  markers=None if markers is None else [m for m, fit in zip(markers, fits) if fit])
    valid = torch.as_tensor(batch.attention_mask, dtype=torch.bool)
    peaks: dict[int, torch.Tensor] = {}

    def record(layer: int):
        def hook(module, inputs):
            peaks[layer] = inputs[0][valid].abs().amax(dim=0)
        return hook

    hooks = [module.register_forward_pre_hook(record(int(m.group(1))))
             for name, module in model.named_modules() if (m := _FFN_OUTPUT.search(name))]
    try:
        with torch.no_grad():
            slots = () if batch.slot_positions is None else (torch.as_tensor(batch.slot_positions),
                                                              torch.as_tensor(batch.slot_mask))
            model.project(torch.as_tensor(batch.input_ids), torch.as_tensor(batch.attention_mask), *slots)
    finally:
        for h in hooks:
            h.remove()
    found = {i: torch.nonzero(p >= ratio * p.median().clamp(min=1e-6)).flatten().tolist() for i, p in peaks.items()}
    return {i: channels for i, channels in sorted(found.items()) if channels}


def split_outlier_channels(source: Path, target: Path, channels: dict[int, list[int]]) -> list[str]:
    """Rewrite each listed FFN output projection ``x @ W`` as ``(x · inlier_mask) @ W + x[..., C] @ W[C]``:
    the first MatMul, whose input no longer holds the outlier channels C, is left to int8; the second, a
    thin fp32 one, carries C exactly. Returns the names of the fp32 MatMuls."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    kept: list[str] = []
    for node in list(graph.node):
        m = _FFN_OUTPUT_NODE.search(node.name) if node.op_type == "MatMul" else None
        if not m or int(m.group(1)) not in channels or node.input[1] not in weights:
            continue
        picked = channels[int(m.group(1))]
        weight = numpy_helper.to_array(weights[node.input[1]])
        mask = np.ones(weight.shape[0], dtype=weight.dtype)
        mask[picked] = 0
        base, x, out = node.name, node.input[0], node.output[0]
        graph.initializer.extend([numpy_helper.from_array(mask, f"{base}/inlier_mask"),
                                  numpy_helper.from_array(np.asarray(picked, dtype=np.int64), f"{base}/outlier_index"),
                                  numpy_helper.from_array(weight[picked], f"{base}/outlier_weight")])
        node.input[0], node.output[0] = f"{base}/inliers", f"{base}/inlier_out"
        at = list(graph.node).index(node)
        added = [helper.make_node("Mul", [x, f"{base}/inlier_mask"], [f"{base}/inliers"],
                                  name=f"{base}/inlier_mask_mul"),
                 helper.make_node("Gather", [x, f"{base}/outlier_index"], [f"{base}/outliers"],
                                  name=f"{base}/outlier_gather", axis=-1),
                 helper.make_node("MatMul", [f"{base}/outliers", f"{base}/outlier_weight"], [f"{base}/outlier_out"],
                                  name=f"{base}/outlier_MatMul"),
                 helper.make_node("Add", [f"{base}/inlier_out", f"{base}/outlier_out"], [out],
                                  name=f"{base}/outlier_add")]
        graph.node.insert(at, added[0])
        for i, extra in enumerate(added[1:]):
            graph.node.insert(at + 2 + i, extra)
        kept.append(f"{base}/outlier_MatMul")
    if len(kept) != len(channels):
        log.warning("FFN output projections of layers %s not found in the graph; quantizing every channel",
                    sorted(channels))
        shutil.copyfile(source, target)
        return []
    onnx.save(model, str(target))
    return kept


def quantize_int8(source: Path, target: Path, per_channel: bool = True, fp32_matmuls: list[str] = ()) -> None:
    """Dynamic int8 quantization of MatMul, fused Attention (its QKV projection) and the embedding
    Gather; activations are quantized at run time. Per-channel weight scales keep int8 spans
    closer to fp32 than one scale per tensor (agreement F1 90 vs 81 on CLUENER dev[:300]) at the
    same speed. The MatMuls named in ``fp32_matmuls`` stay fp32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=per_channel,
                     op_types_to_quantize=["MatMul", "Attention", "Gather"], nodes_to_exclude=list(fp32_matmuls),
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT,
                                    # weights only: a slot model's marker picks and slot x token biases
                                    # multiply two activations, which stay fp32
                                    "MatMulConstBOnly": True})


def _use_eager_attention(model) -> None:
    """Eager attention exports to the pattern onnxruntime's attention fusion recognises."""
    try:
        model.encoder.set_attn_implementation("eager")
    except (AttributeError, ValueError):
        model.encoder.config._attn_implementation = "eager"


DECODING_KEYS = ("threshold", "relation_threshold")


def _checked_decoding(decoding: dict) -> dict:
    """Decoding defaults an export records in place of the trained model's, validated."""
    unknown = sorted(set(decoding) - set(DECODING_KEYS))
    if unknown:
        raise HugieError("E028", key=unknown[0], choices=", ".join(DECODING_KEYS))
    from .extractor import checked_threshold

    return {key: checked_threshold(value) for key, value in decoding.items()}


def export_model(model_dir: str | Path, output: str | Path, quantize: str = "none", opset: int = 17,
                 outlier_ratio: float | None = OUTLIER_RATIO, decoding: dict | None = None) -> Path:
    """Export a trained model directory to a self-describing ONNX directory (``outlier_ratio``: int8 only,
    see :func:`outlier_channels`; ``decoding``: ``threshold`` / ``relation_threshold`` to record as the
    export's defaults instead of the trained model's). ``model_dir`` may itself be an export (the embedded
    ``hugie-small`` among them): its weights are read back out of the graph (:func:`load_model`)."""
    from .tokenization import HugieTokenizer

    if quantize not in QUANTIZE_CHOICES:
        raise HugieError("E013", backend=f"quantize={quantize}", choices=", ".join(QUANTIZE_CHOICES))
    require_torch()
    decoding = _checked_decoding(decoding or {})
    model_dir, output = Path(model_dir), Path(output)
    for needed in ("config.json", "tokenizer.json"):
        if not (model_dir / needed).exists():
            raise HugieError("E012", path=model_dir, file=needed)
    model = load_model(model_dir).eval()
    _use_eager_attention(model)
    enc = model.encoder.config
    fp32_matmuls: list[str] = []
    outliers: dict[int, list[int]] = {}
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        raw = export_onnx(model, Path(tmp) / "raw.onnx", opset=opset)
        optimized = optimize(raw, Path(tmp) / "opt.onnx", enc.num_attention_heads, enc.hidden_size,
                             fp16=quantize == "fp16", fuse_embeddings=quantize != "int8")
        final = output / ENCODER_FILE
        if quantize == "int8":
            outliers = outlier_channels(model, HugieTokenizer.from_file(model_dir / "tokenizer.json"), outlier_ratio)
            split = Path(tmp) / "split.onnx"
            fp32_matmuls = split_outlier_channels(optimized, split, outliers) if outliers else []
            quantize_int8(split if fp32_matmuls else optimized, final, fp32_matmuls=fp32_matmuls)
            if not fp32_matmuls:
                outliers = {}
            log.info("int8: outlier input channels of FFN output projections kept fp32: %s", outliers or "none")
        else:
            shutil.copyfile(optimized, final)
    config = {**model.config.to_dict(), **decoding}
    config["_name_or_path"] = output.name  # the export's own name, not the path of the run it came from
    config["onnx"] = {"file": ENCODER_FILE, "quantize": quantize, "opset": opset, "fp32_matmuls": fp32_matmuls,
                      "outlier_channels": {str(k): v for k, v in outliers.items()},
                      "outputs": list(OUTPUTS) + ([REUSE_OUTPUT] if model.reuse_layers else []),
                      "span_scorer": "hugie::SpanScore custom op when built (hugie kernels build), else the "
                                     "standard-ONNX banded fallback"}
    (output / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    for extra in ("tokenizer.json", "tokenizer_config.json", "train_config.yaml", "versions.json", "README.md"):
        if (model_dir / extra).exists() and model_dir.resolve() != output.resolve():
            shutil.copyfile(model_dir / extra, output / extra)
    log.info("exported %s (%s) to %s: %.1f MB", model_dir, quantize, output,
             (output / ENCODER_FILE).stat().st_size / 2**20)
    return output


_LINEAR_NODE = re.compile(r"^/(encoder/encoder/layer\.(\d+)/(attention/output/dense|intermediate/dense|output/dense"
                          r"|attention/self/query|attention/self/key|attention/self/value)"
                          r"|projection|bias_head|slot_gate|slot_query|token_key|subject_marker)/MatMul(?:_quant)?$")


def _encoder_scope(name: str) -> str:
    """A graph node's name with the encoder's module path spelled out: a ``reuse_layers`` model calls its encoder's
    embeddings and layers itself, so their nodes are named ``/embeddings/...`` and ``/layer.N/...``."""
    if name.startswith(("/layer.", "/embeddings/")):
        return ("/encoder/encoder" if name.startswith("/layer.") else "/encoder") + name
    return name


def model_from_export(directory: str | Path):
    """The inverse of :func:`export_model`: rebuild the torch ``GlobalPointerModel`` from an exported directory,
    to fine-tune a model that ships only as ONNX (the embedded ``hugie-small`` among them). fp32 exports give back
    their exact weights; int8 ones their dequantized weights (outlier channels exact); fp16 ones their fp16
    weights in float32. Every parameter must be found in the graph, or E012 names the missing ones."""
    import numpy as np
    import onnx
    import torch
    from onnx import numpy_helper

    from .backends.onnx import quantization_initializers
    from .modeling import GlobalPointerConfig, GlobalPointerModel

    directory = Path(directory)
    config_file = directory / "config.json"
    onnx_file = directory / (json.loads(config_file.read_text()).get("onnx", {}).get("file", ENCODER_FILE)
                             if config_file.exists() else ENCODER_FILE)
    for needed in (config_file, onnx_file):
        if not needed.exists():
            raise HugieError("E012", path=directory, file=needed.name)
    graph = onnx.load(str(onnx_file)).graph
    weights = {init.name: init for init in graph.initializer}
    nodes = {_encoder_scope(node.name): node for node in graph.node}

    def value(name: str) -> np.ndarray:
        """An initializer as float32; an int8 / uint8 one dequantized with its ``_scale`` and ``_zero_point``."""
        array = numpy_helper.to_array(weights[name])
        if array.dtype in (np.int8, np.uint8):
            scale, zero = (numpy_helper.to_array(init).astype(np.float32)
                           for init in quantization_initializers(weights, name))
            return (array.astype(np.float32) - zero) * scale  # per tensor, or per output column (the last axis)
        return array.astype(np.float32)

    state: dict[str, np.ndarray] = {}
    for node in graph.node:
        node.name = _encoder_scope(node.name)
        if node.op_type in ("Attention", "QAttention"):  # fused q, k, v: weight [H, 3H], bias [3H]
            layer = int(node.name.split("_")[1])
            qkv, bias = value(node.input[1]), value(node.input[2])
            for part, w, b in zip(("query", "key", "value"), np.split(qkv, 3, axis=1), np.split(bias, 3)):
                state[f"encoder.encoder.layer.{layer}.attention.self.{part}.weight"] = w.T
                state[f"encoder.encoder.layer.{layer}.attention.self.{part}.bias"] = b
        elif node.op_type == "EmbedLayerNormalization":
            parts = ("word_embeddings.weight", "position_embeddings.weight", "token_type_embeddings.weight",
                     "LayerNorm.weight", "LayerNorm.bias")
            for part, name in zip(parts, node.input[2:7]):
                state[f"encoder.embeddings.{part}"] = value(name)
        elif node.op_type == "Gather" and node.name.startswith("/encoder/embeddings/") and node.input[0] in weights:
            state[f"encoder.embeddings.{node.name.split('/')[3]}.weight"] = value(node.input[0])
        elif node.op_type == "LayerNormalization" and node.name.endswith("/LayerNorm/LayerNormalization"):
            module = node.name.removeprefix("/encoder/").removesuffix("/LayerNorm/LayerNormalization").replace("/", ".")
            state[f"encoder.{module}.LayerNorm.weight"] = value(node.input[1])
            state[f"encoder.{module}.LayerNorm.bias"] = value(node.input[2])
        elif node.op_type in ("MatMul", "MatMulInteger") and (m := _LINEAR_NODE.match(node.name)):
            prefix = m.group(1)
            module = "encoder." + prefix.removeprefix("encoder/").replace("/", ".") if m.group(2) else prefix
            weight = value(node.input[1])
            split = next((name for name in (f"/{prefix}/MatMul", f"/{prefix.removeprefix('encoder/encoder/')}/MatMul")
                          if f"{name}/outlier_index" in weights), None)
            if split is not None:  # rows of the outlier channels, kept exact in fp32
                weight = weight.copy()
                weight[numpy_helper.to_array(weights[f"{split}/outlier_index"])] = value(f"{split}/outlier_weight")
            state[f"{module}.weight"] = weight.T
            add = nodes.get(f"/{prefix}/Add")
            bias = [name for name in (add.input if add is not None else ()) if name in weights]
            if bias:
                state[f"{module}.bias"] = value(bias[0])
    config = GlobalPointerConfig.from_pretrained(directory)
    if hasattr(config, "onnx"):
        del config.onnx  # describes the graph the weights came from, not the torch model
    model = GlobalPointerModel(config)
    expected = {name for name, _ in model.named_parameters()}
    missing = sorted(expected - set(state))
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise HugieError("E012", path=onnx_file, file=f"weights for {', '.join(missing[:3])}{more}")
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items() if k in expected},
                          strict=False)
    return model.eval()


def load_model(directory: str | Path):
    """The torch model of a model directory: its torch weights, or an export's (:func:`model_from_export`)."""
    from .configuration import has_torch_weights
    from .modeling import GlobalPointerModel

    if has_torch_weights(directory):
        return GlobalPointerModel.from_pretrained(directory)
    log.info("%s has no torch weights: using its ONNX graph's weights", directory)
    return model_from_export(directory)


def torch_model_dir(directory: str | Path, work: str | Path) -> Path:
    """A model directory with torch weights: ``directory`` itself when it has them, else its export's weights
    (:func:`model_from_export`) saved under ``work`` beside its tokenizer, config and instruction templates."""
    from .configuration import has_torch_weights

    directory, target = Path(directory), Path(work) / "torch"
    if has_torch_weights(directory):
        return directory
    model_from_export(directory).save_pretrained(target)
    for extra in ("tokenizer.json", "tokenizer_config.json"):
        if (directory / extra).exists():
            shutil.copyfile(directory / extra, target / extra)
    log.info("%s has no torch weights: its ONNX weights were saved to %s", directory, target)
    return target
