"""onnxruntime backend: the exported encoder plus the span scorer in one session.

Providers are chosen automatically (CUDA, then CPU; an int8 export stays on the CPU, where its
dynamic-quantization kernels live); ``cuda:N`` runs on GPU N. The scorer is the fused ``SpanScore``
op when its library has been built (``hugie kernels build``), else the standard-ONNX fallback graph —
same outputs either way. The logit threshold is a graph input: one session per model, built at load
and shared by every thread (onnxruntime's ``run`` is thread-safe).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..errors import HugieError
from ..tokenization import PairBatch
from . import parse_device

log = logging.getLogger("hugie.onnx")

# onnxruntime 1.31's CPU kernels for these fused ops are slower than their parts on AVX-512 cores
# (benchmarks/bench_fusions.py at 144 tokens: SkipLayerNormalization ~175 µs vs ~62 µs for
# Add + LayerNormalization; BiasGelu ~158 µs vs ~93 µs for Add + Gelu), so CPU sessions keep them
# unfused; CUDA sessions fuse as usual.
CPU_DISABLED_FUSIONS = ("SkipLayerNormFusion", "BiasGeluFusion")


# int8 exports use onnxruntime's dynamic-quantization ops (DynamicQuantizeMatMul, QAttention), which
# have CPU kernels only: on the CUDA provider each layer hops between host and device. Measured on
# an H100 with 16 cores (benchmarks/README.md): the shipped int8 model took 12.0 ms per request on
# CUDA against 8.8 ms on the CPU provider alone. "auto" therefore keeps int8 exports on the CPU.
CPU_ONLY_QUANTIZATION = ("int8",)


# Without VNNI, onnxruntime's x86 u8 × s8 GEMM (AVX2, AVX-512BW) sums pairs of products in int16 with
# saturation (VPMADDUBSW): 255 · 127 · 2 overflows, so large activations against large weights clip. On
# an AVX2-only CPU (AMD EPYC, measured here) an int8 tiny model's worst output error was 0.153 with 8-bit
# weights and 0.015 with 7-bit ones. 7-bit weights (255 · 64 · 2 < 2^15) cannot saturate; VNNI and AMX
# accumulate in int32 and keep the full 8 bits. HUGIE_INT8_WEIGHT_BITS=7|8 overrides the detection.
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def int8_weight_bits() -> int:
    """8 where the CPU's int8 GEMM cannot saturate (VNNI, AMX, not x86), else 7; HUGIE_INT8_WEIGHT_BITS overrides."""
    import platform

    forced = os.environ.get("HUGIE_INT8_WEIGHT_BITS", "").strip()
    if forced:
        if forced not in ("7", "8"):
            raise HugieError("E014", device=f"HUGIE_INT8_WEIGHT_BITS={forced}", reason="use 7 or 8")
        return int(forced)
    if platform.machine().lower() not in ("x86_64", "amd64", "x86", "i386", "i686"):
        return 8
    try:
        flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError:
        flags = []  # unknown x86 CPU: 7 bits are safe everywhere
    return 8 if VNNI_FLAGS & set(flags) else 7


def quantization_initializers(initializers: dict, name: str) -> tuple:
    """The ``_scale`` and ``_zero_point`` initializers of onnxruntime's quantized weight ``NAME_quantized``
    (None where absent)."""
    stem = name.removesuffix("_quantized")
    return initializers.get(f"{stem}_scale"), initializers.get(f"{stem}_zero_point")


def narrow_int8_weights(model, bits: int = 7) -> int:
    """Requantize, in place, the symmetric int8 weights of ``model``'s MatMulInteger and QAttention nodes to
    ``bits`` bits (q → round(q / 2^(8 - bits)), scale × 2^(8 - bits)). Returns how many weights changed."""
    from onnx import numpy_helper

    if bits >= 8:
        return 0
    factor = 2 ** (8 - bits)
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    inits = {init.name: init for init in model.graph.initializer}
    names = {node.input[1] for node in model.graph.node if node.op_type in ("MatMulInteger", "QAttention")}
    changed = 0
    for name in sorted(names):
        weight, (scale, zero) = inits.get(name), quantization_initializers(inits, name)
        if weight is None or scale is None or zero is None:
            continue
        q = numpy_helper.to_array(weight)
        if q.dtype != np.int8 or np.any(numpy_helper.to_array(zero)):
            continue  # only symmetric int8 weights (what `hugie export --quantize int8` writes)
        narrowed = np.clip(np.round(q.astype(np.float32) / factor), low, high).astype(np.int8)
        weight.CopyFrom(numpy_helper.from_array(narrowed, name))
        scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * np.float32(factor), scale.name))
        changed += 1
    return changed


def choose_providers(device: str, quantize: str = "none") -> list[str]:
    """onnxruntime providers for ``device`` (auto, cpu, cuda, cuda:N) and an export's ``quantize`` mode."""
    import onnxruntime as ort

    kind, _ = parse_device(device)
    available = ort.get_available_providers()
    cuda = "CUDAExecutionProvider" in available
    if kind == "auto":
        if cuda and quantize in CPU_ONLY_QUANTIZATION:
            log.info("device auto: this %s export runs on the CPU provider (its quantized ops have no CUDA "
                     "kernels); export with --quantize fp16 for CUDA", quantize)
            return ["CPUExecutionProvider"]
        return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    if kind == "cuda":
        if not cuda:
            raise HugieError("E014", device=device, reason=f"onnxruntime providers are {available}; "
                             "install onnxruntime-gpu for CUDA")
        if quantize in CPU_ONLY_QUANTIZATION:
            log.warning("device %s with a %s export: its quantized ops run on the CPU provider, which is "
                        "slower than device cpu; export with --quantize fp16 for CUDA", device, quantize)
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session_providers(device: str, quantize: str = "none") -> list[tuple[str, dict]]:
    """``(provider, options)`` pairs for ``InferenceSession``: the CUDA provider gets ``device_id`` N of
    ``cuda:N`` (0 for ``cuda`` and ``auto``)."""
    _, index = parse_device(device)
    return [(name, {"device_id": index or 0} if name == "CUDAExecutionProvider" else {})
            for name in choose_providers(device, quantize)]


# A CPU call over more padded tokens than this returns the arena memory it grew (onnxruntime's arena keeps
# its peak otherwise: one 20,000-character text left the server 550 MiB larger for good). Calls of short
# texts stay under it and keep their arena. Measured on 2 cores with 1,024-token calls: a 20,000-character
# text 3.65 s, RSS after it +16 MiB (+28 MiB with 2,048-token calls shrinking above 1,024); short requests
# unchanged.
SHRINK_TOKENS = 512


class OnnxBackend:
    """One InferenceSession per model (encoder + span scorer), built at load and shared by every thread:
    the logit threshold is a graph input, so no request builds a session."""

    name = "onnx"

    def __init__(self, path: str | Path, config, device: str = "auto", threads: int | None = None,
                 use_custom_op: bool | None = None, warmup: bool = True, spin: bool = True):
        import onnx
        import onnxruntime as ort

        from ..kernels import attach_span_scorer, custom_op_library

        self.path = Path(path)
        onnx_cfg = getattr(config, "onnx", None) or {}
        file = onnx_cfg.get("file", "encoder.onnx")
        if not (self.path / file).exists():
            raise HugieError("E012", path=self.path, file=file)
        self.quantize = onnx_cfg.get("quantize", "none")
        self.fp32_matmuls = onnx_cfg.get("fp32_matmuls", [])
        self.outlier_channels = onnx_cfg.get("outlier_channels", {})
        providers = session_providers(device, self.quantize)
        self.providers = [name for name, _ in providers]
        _, index = parse_device(device)
        cuda = self.providers[0] == "CUDAExecutionProvider"
        self.device = ("cuda" if index is None else f"cuda:{index}") if cuda else "cpu"
        self.max_width = int(config.max_span_width)
        self.slotted = config.slotted  # the graph takes slot_positions and slot_mask
        # a reuse_layers graph also takes kept text states (reused_states, reused_mask) and gives layer_states
        self.reuse = bool(config.reuse_layers)
        # and, with slots.mark_subject, the text tokens of each row's subject (subject_mask)
        self.mark_subject = config.mark_subject
        self.hidden_size = int((config.encoder or {}).get("hidden_size", 0))
        encoder = onnx.load(str(self.path / file))
        self.int8_weight_bits = None
        if self.quantize == "int8":
            self.int8_weight_bits = int8_weight_bits()
            if narrow_int8_weights(encoder, self.int8_weight_bits):
                log.info("int8 weights narrowed to %d bits: this CPU's int8 GEMM has no VNNI and would saturate",
                         self.int8_weight_bits)
        self.library = custom_op_library() if use_custom_op in (None, True) else None
        if use_custom_op and self.library is None:
            log.warning("SpanScore custom op requested but unavailable; using the fallback graph")
        self.threads = threads or int(os.environ.get("HUGIE_THREADS", "0")) or None
        self._ort = ort

        model = attach_span_scorer(encoder, self.max_width, use_custom_op=self.library is not None)
        del encoder
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            opts.intra_op_num_threads = self.threads
        self.spin = spin  # idle intra-op threads spin (lowest latency for one caller) or sleep (several callers)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        if self.library:
            opts.register_custom_ops_library(self.library)
        disabled = list(CPU_DISABLED_FUSIONS) if not cuda else None
        self._shrink = ort.RunOptions()  # a call larger than usual hands its arena growth back when it ends
        self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self.session = ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=providers,
                                            disabled_optimizers=disabled)
        if warmup:
            self.warmup(config.threshold, self.max_width)

    @property
    def scorer(self) -> str:
        return "SpanScore custom op" if self.library else "standard-ONNX fallback"

    def score(self, batch: PairBatch, threshold: float, max_width: int, keep_states: bool = False):
        """Spans of ``batch`` whose logit is above ``threshold`` and width below ``max_width`` (at most the
        model's) as (spans [N, 4], logits); ``keep_states`` (a ``reuse_layers`` model): and the rows' states
        after those layers [B, L, H]. Safe to call from several threads at once."""
        if max_width > self.max_width:
            raise ValueError(f"max_width {max_width} is over the {self.max_width} this session was built for "
                             "(the model's max_span_width)")
        if keep_states and not self.reuse:
            raise ValueError("keep_states needs a model with slots.reuse_layers")
        if batch.input_ids.size == 0:
            empty = np.zeros((0, 4), np.int64), np.zeros((0,), np.float32)
            return (*empty, np.zeros((0, 0, self.hidden_size), np.float32)) if keep_states else empty
        feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "span_mask": batch.span_mask,
                 "threshold": np.array(threshold, dtype=np.float32)}
        if self.slotted:
            feeds.update(slot_positions=batch.slot_positions, slot_mask=batch.slot_mask)
        if self.reuse:  # rows without kept text states append zero positions
            rows = batch.input_ids.shape[0]
            reused = batch.reused_states
            feeds.update(reused_states=np.zeros((rows, 0, self.hidden_size), np.float32) if reused is None else reused,
                         reused_mask=np.zeros((rows, 0), np.int64) if reused is None else batch.text_mask)
            if self.mark_subject:
                marked = batch.subject_mask if reused is not None else None
                feeds["subject_mask"] = np.zeros_like(feeds["reused_mask"]) if marked is None else marked
        outputs = ["spans", "scores"] + (["layer_states"] if keep_states else [])
        if self.device != "cpu":
            binding = self.session.io_binding()  # one binding per call: calls may run concurrently
            for name, value in feeds.items():
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
            for name in outputs:
                binding.bind_output(name, "cpu")
            self.session.run_with_iobinding(binding)
            spans, scores, *states = binding.copy_outputs_to_cpu()
        else:
            big = batch.input_ids.size > SHRINK_TOKENS
            spans, scores, *states = self.session.run(outputs, feeds, self._shrink if big else None)
        keep = scores > threshold  # float32 logits against the exact threshold, as the torch backend compares
        if max_width < self.max_width:
            keep &= spans[:, 3] - spans[:, 2] < max_width
        found = spans[keep].astype(np.int64), scores[keep].astype(np.float32)
        return (*found, states[0]) if keep_states else found

    def warmup(self, threshold: float, max_width: int) -> None:
        from ..scoring import logit

        ids = np.array([[0, 5, 2, 5, 5, 2]], dtype=np.int64)
        slots = (np.array([[1]], dtype=np.int64), np.array([[1]], dtype=np.int64)) if self.slotted else ()
        batch = PairBatch(ids, np.ones_like(ids), np.array([[0, 0, 0, 1, 1, 0]], dtype=np.int64),
                          np.full_like(ids, -1), np.full_like(ids, -1), *slots)
        self.score(batch, logit(threshold), max_width)

    def describe(self) -> dict:
        return {"backend": self.name, "device": self.device, "providers": self.providers,
                "onnxruntime": self._ort.__version__, "quantize": self.quantize, "fp32_matmuls": self.fp32_matmuls,
                "outlier_channels": self.outlier_channels, "int8_weight_bits": self.int8_weight_bits,
                "span_scorer": self.scorer, "custom_op_library": self.library, "spin": self.spin}
