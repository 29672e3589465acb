"""ONNX export: encoder + Global Pointer projection (q, k before RoPE, start/end bias).

The exported ``encoder.onnx`` has dynamic batch and sequence axes. onnxruntime's transformer
optimizer fuses attention, LayerNorm and GELU; ``int8`` applies dynamic quantization (CPU),
FFN output projections whose inputs carry outlier channels stay fp32 (see
:func:`outlier_layers`); ``fp16`` converts weights to half precision with float32 inputs/outputs (CUDA). The span scorer
(fused ``SpanScore`` op, or its standard-ONNX fallback) is attached when a session is created,
so one exported directory works wherever it is loaded.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from .errors import HugieError

log = logging.getLogger("hugie.export")

ENCODER_FILE = "encoder.onnx"
QUANTIZE_CHOICES = ("none", "int8", "fp16")

#: int8 keeps a layer's FFN output projection in fp32 when the largest input channel's peak |activation| is at
#: least this many times the median channel's. Dynamic quantization gives the whole activation one scale, so a
#: channel peaking at 60 leaves a channel peaking at 1 about four levels. ``None`` or 0 quantizes every layer.
OUTLIER_RATIO = 25.0

#: Calibration passes for :func:`outlier_layers`: (language, entity types, texts), written for this purpose.
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


class _Projection(nn.Module):
    """What every backend computes: (input_ids, attention_mask) → q, k, start_bias, end_bias."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model.project(input_ids, attention_mask)


def export_onnx(model, path: Path, opset: int = 17) -> Path:
    """Plain torch → ONNX export with dynamic batch/sequence axes."""
    model = model.eval()
    ids = torch.ones((2, 12), dtype=torch.long)
    attn = torch.ones((2, 12), dtype=torch.long)
    attn[1, 8:] = 0
    axes = {"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"},
            "q": {0: "batch", 1: "length"}, "k": {0: "batch", 1: "length"},
            "start_bias": {0: "batch", 1: "length"}, "end_bias": {0: "batch", 1: "length"}}
    with torch.no_grad():
        torch.onnx.export(_Projection(model), (ids, attn), str(path), input_names=["input_ids", "attention_mask"],
                          output_names=["q", "k", "start_bias", "end_bias"], dynamic_axes=axes,
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


def outlier_layers(model, tokenizer, ratio: float | None = OUTLIER_RATIO) -> list[int]:
    """Encoder layers whose FFN output projection sees outlier input channels on the calibration passes:
    peak |activation| of the largest channel ≥ ``ratio`` × the median channel's (padding excluded)."""
    if not ratio:
        return []
    from .instructions import templates

    pairs = [(templates(lang).for_entity(t), text) for lang, types, texts in CALIBRATION for t in types for text in texts]
    tokens = tokenizer.tokenize([p for pair in pairs for p in pair])
    fitting = [pair for pair in zip(tokens[::2], tokens[1::2]) if tokenizer.pair_length(*pair) <= tokenizer.max_length]
    if not fitting:
        log.warning("no calibration pass fits max_length %d; quantizing every layer", tokenizer.max_length)
        return []
    batch = tokenizer.build_batch(fitting)
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
            model.project(torch.as_tensor(batch.input_ids), torch.as_tensor(batch.attention_mask))
    finally:
        for h in hooks:
            h.remove()
    return sorted(i for i, p in peaks.items() if p.max() >= ratio * p.median().clamp(min=1e-6))


def quantize_int8(source: Path, target: Path, per_channel: bool = True, fp32_layers: list[int] = ()) -> list[str]:
    """Dynamic int8 quantization of MatMul, fused Attention (its QKV projection) and the embedding
    Gather; activations are quantized at run time. Per-channel weight scales keep int8 spans
    closer to fp32 than one scale per tensor (agreement F1 90 vs 81 on CLUENER dev[:300]) at the
    same speed. The FFN output projections of ``fp32_layers`` stay fp32; returns their node names."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    import onnx

    graph = onnx.load(str(source), load_external_data=False).graph
    keep = [n.name for n in graph.node if n.op_type == "MatMul" and (m := _FFN_OUTPUT_NODE.search(n.name))
            and int(m.group(1)) in fp32_layers]
    if len(keep) != len(fp32_layers):
        log.warning("FFN output projections of layers %s not found in the graph; quantizing every layer",
                    list(fp32_layers))
        keep = []
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=per_channel,
                     op_types_to_quantize=["MatMul", "Attention", "Gather"], nodes_to_exclude=keep,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return keep


def _use_eager_attention(model) -> None:
    """Eager attention exports to the pattern onnxruntime's attention fusion recognises."""
    try:
        model.encoder.set_attn_implementation("eager")
    except (AttributeError, ValueError):
        model.encoder.config._attn_implementation = "eager"


def export_model(model_dir: str | Path, output: str | Path, quantize: str = "none", opset: int = 17,
                 outlier_ratio: float | None = OUTLIER_RATIO) -> Path:
    """Export a trained model directory to a self-describing ONNX directory (``outlier_ratio``: int8 only,
    see :func:`outlier_layers`)."""
    from .modeling import GlobalPointerModel
    from .tokenization import HugieTokenizer

    if quantize not in QUANTIZE_CHOICES:
        raise HugieError("E013", backend=f"quantize={quantize}", choices=", ".join(QUANTIZE_CHOICES))
    model_dir, output = Path(model_dir), Path(output)
    for needed in ("config.json", "tokenizer.json"):
        if not (model_dir / needed).exists():
            raise HugieError("E012", path=model_dir, file=needed)
    model = GlobalPointerModel.from_pretrained(model_dir).eval()
    _use_eager_attention(model)
    enc = model.encoder.config
    fp32_matmuls: list[str] = []
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        raw = export_onnx(model, Path(tmp) / "raw.onnx", opset=opset)
        optimized = optimize(raw, Path(tmp) / "opt.onnx", enc.num_attention_heads, enc.hidden_size,
                             fp16=quantize == "fp16", fuse_embeddings=quantize != "int8")
        final = output / ENCODER_FILE
        if quantize == "int8":
            fp32_layers = outlier_layers(model, HugieTokenizer.from_file(model_dir / "tokenizer.json"), outlier_ratio)
            fp32_matmuls = quantize_int8(optimized, final, fp32_layers=fp32_layers)
            log.info("int8: FFN output projections kept fp32 (outlier inputs): %s", fp32_matmuls or "none")
        else:
            shutil.copyfile(optimized, final)
    config = model.config.to_dict()
    config["onnx"] = {"file": ENCODER_FILE, "quantize": quantize, "opset": opset, "fp32_matmuls": fp32_matmuls,
                      "outputs": ["q", "k", "start_bias", "end_bias"],
                      "span_scorer": "hugie::SpanScore custom op when it builds, else standard-ONNX banded fallback"}
    (output / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    for extra in ("tokenizer.json", "tokenizer_config.json", "train_config.yaml", "versions.json", "README.md"):
        if (model_dir / extra).exists() and model_dir.resolve() != output.resolve():
            shutil.copyfile(model_dir / extra, output / extra)
    log.info("exported %s (%s) to %s: %.1f MB", model_dir, quantize, output,
             (output / ENCODER_FILE).stat().st_size / 2**20)
    return output
