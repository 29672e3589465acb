"""Property tests (hypothesis): the Extractor over arbitrary Unicode never crashes and never lies
about offsets, and long-text windows change nothing a context-free backend can see.

* A real (random, untrained) tiny model at threshold 0 returns every candidate span, so the
  offset contract is checked on all of them: ``0 <= start < end <= len(text)`` and
  ``text[start:end] == span.text``. The tiny vocabulary turns most characters into ``<unk>``,
  which is as hostile as it gets for the offset bookkeeping.
* Windowed vs unwindowed: the same model and text, once with room for the whole text and once
  with windows forced (a small ``max_length``). With the real model the scores legitimately differ
  (the encoder sees a different context), so the property is about *which* spans can come back;
  with :class:`FakeBackend` (context-free answers) the two must agree exactly.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, assume, event, given, note, settings, target
from hypothesis import strategies as st

from hugie.errors import HugieError
from hugie.extractor import Extractor
from hugie.instructions import TEMPLATES
from hugie.modeling import HugieConfig
from hugie.tokenization import HugieTokenizer, build_unigram_tokenizer
from hugie.types import Span
from hugie.windows import plan_windows
from tests.conftest import tiny_model, tiny_pieces
from tests.helpers import FakeBackend

PER = TEMPLATES["zh"].for_entity("人名")
LOC = TEMPLATES["zh"].for_entity("地名")
EN_PER = TEMPLATES["en"].for_entity("person")

# zero-width and bidi controls, combining marks, line ends, NUL/DEL/NEL, odd spaces, the metaspace
# itself, U+FFFD, lone surrogates, emoji (ZWJ sequences, flags, skin tones), NFKC expanders
# (ligatures, ﷺ → 18 characters, ㍿ → 4), case-mapping oddities, full-width forms, CJK in the vocab.
HOSTILE = [
    "\u200b", "\u200c", "\u200d", "\u200e", "\u202e", "\u2066", "\ufeff", "\u00ad", "\u034f",
    "\u0301", "\u0345", "\u20dd", "\u0e31", "e\u0301", "a\u0308\u0301\u0327",
    "\r\n", "\r", "\n", "\t", "\x0b", "\x0c", "\x00", "\x1f", "\x7f", "\x85", "\u2028", "\u2029",
    " ", "  ", "\u00a0", "\u1680", "\u2003", "\u3000", "\u2581", "\u2581\u2581", "\ufffd",
    "\ud800", "\udfff", "\udbff", "\udc00", "\ud83d", "\ude00",
    "😀", "👩\u200d👩\u200d👧", "🇨🇳", "👍🏽", "\U0001f9d1\u200d\U0001f4bb", "\U000e0041", "\U0010ffff",
    "ﬁ", "\ufdfa", "㍿", "Ⅸ", "ǅ", "İ", "ß", "ﬃ", "Ａ", "ＡＢＣ", "①", "¼", "ｶﾞ", "\u1e9e",
    "张", "三", "李四", "北京", "上海", "王小明", "，", "。", "【", "】", "？", "!", "'", "\\", '"',
    "Alice", "Bob", "New York", "Paris.", "a", "Z", "9",
]
RUN_CHARS = ["a", "张", " ", "\u200b", "\u0301", "😀", "\ufdfa", "\ud800", "\r\n", "。", "x y", "ab张"]


def _json_escaped(codepoints: list[int]) -> str:
    """What a JSON client sends as ``"\\uXXXX..."``: adjacent high+low escapes pair up into one
    astral character, every other surrogate escape stays a lone surrogate."""
    return json.loads('"' + "".join(f"\\u{c:04x}" for c in codepoints) + '"')


_piece = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(max_size=8),  # any code point but surrogates
    st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, categories=["Cs"]), max_size=3),
    st.builds(lambda c, n: c * n, st.sampled_from(RUN_CHARS), st.integers(20, 300)),  # very long runs
    st.lists(st.one_of(st.integers(0, 0xFFFF), st.integers(0xD800, 0xDFFF)), max_size=6).map(_json_escaped),
)
TEXTS = st.lists(_piece, max_size=6).map("".join)
SHORT_TEXTS = st.lists(st.one_of(st.sampled_from(HOSTILE), st.text(max_size=4)), max_size=12).map("".join)
INSTRUCTIONS = st.one_of(
    st.sampled_from([PER, LOC, EN_PER]),
    st.builds(TEMPLATES["zh"].for_entity, SHORT_TEXTS),
    st.builds(TEMPLATES["en"].for_relation, SHORT_TEXTS, SHORT_TEXTS),
    SHORT_TEXTS,
    st.builds(lambda c, n: c * n, st.sampled_from(RUN_CHARS), st.integers(50, 200)),  # too long: E007
)
PROPS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                          HealthCheck.data_too_large])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def new_tokenizer(max_length: int) -> HugieTokenizer:
    """A private tokenizer: ``Extractor`` sets ``max_length`` on the one it is given."""
    return HugieTokenizer(build_unigram_tokenizer(tiny_pieces(), unk_id=3), max_length=max_length)


@pytest.fixture(scope="module")
def model():
    tok = new_tokenizer(128)
    return tiny_model(tok).eval()


@pytest.fixture(scope="module")
def real(model):
    """The untrained tiny model, room for 128 tokens (longer texts are windowed)."""
    return Extractor.from_model(model, new_tokenizer(128), batch_size=64)


@pytest.fixture(scope="module")
def real_windowed(model):
    """The same model, 40 tokens: a 17-token instruction leaves 20 for each window of text."""
    return Extractor.from_model(model, new_tokenizer(40), batch_size=64)


def check_spans(text: str, spans: list, top_k: int | None = None) -> None:
    """The span contract (every span, whatever the model thought of it)."""
    assert isinstance(spans, list)
    keys = set()
    for s in spans:
        assert isinstance(s, Span)
        assert 0 <= s.start < s.end <= len(text), (s, len(text))
        assert text[s.start:s.end] == s.text, (s, text[s.start:s.end])
        assert 0.0 <= s.score <= 1.0
        keys.add((s.start, s.end))
    assert len(keys) == len(spans), "a span came back twice"
    assert [s.score for s in spans] == sorted((s.score for s in spans), reverse=True)
    if top_k is not None:
        assert len(spans) <= top_k


def expected_error(ex: Extractor, instruction: str) -> str | None:
    """The one catalogue error an instruction may legitimately get (else None)."""
    if not instruction.strip():
        return "E002"
    n = len(ex.tokenizer.tokenize([instruction])[0])
    return "E007" if ex.tokenizer.max_length - n - 3 < 8 else None


# ---------------------------------------------------------------------- never crash, honest offsets
@PROPS
@given(instruction=INSTRUCTIONS, text=TEXTS, top_k=st.one_of(st.none(), st.integers(1, 5)))
def test_extract_never_crashes_and_offsets_index_the_callers_text(real, instruction, text, top_k):
    note(f"len(text)={len(text)}")
    want = expected_error(real, instruction)
    try:
        spans = real.extract(instruction, text, threshold=0.0, top_k=top_k)
    except HugieError as exc:
        assert exc.code == want, exc
        return
    assert want is None, f"expected {want}"
    check_spans(text, spans, top_k)
    if top_k is None and text.strip():
        # threshold 0: every visible token is a span of its own
        tokens = real.tokenizer.tokenize([text])[0]
        singles = {(s, e) for s, e in zip(tokens.starts, tokens.ends) if e > s}
        assert singles <= {(s.start, s.end) for s in spans}


@settings(PROPS, max_examples=15)
@given(pairs=st.lists(st.tuples(st.sampled_from([PER, LOC, EN_PER]), st.one_of(SHORT_TEXTS, TEXTS)), min_size=1,
                      max_size=4))
def test_batched_pairs_answer_each_pair_in_order(real, pairs):
    results = real.extract(pairs, threshold=0.0)
    assert len(results) == len(pairs)
    for (_, text), spans in zip(pairs, results):
        check_spans(text, spans)
    # each pair alone (no padding to a common width): the same spans, the same scores
    for (instruction, text), spans in zip(pairs, results):
        alone = {(s.start, s.end): s.score for s in real.extract(instruction, text, threshold=0.0)}
        got = {(s.start, s.end): s.score for s in spans}
        assert got.keys() == alone.keys()
        assert all(abs(got[k] - alone[k]) < 1e-4 for k in got)


@settings(PROPS, max_examples=20)
@given(text=SHORT_TEXTS, types=st.lists(SHORT_TEXTS.filter(bool), min_size=1, max_size=3),
       language=st.sampled_from([None, "zh", "en"]))
def test_schema_extraction_never_crashes(real, text, types, language):
    schema = {"entities": types, "relations": [{"subject": types[0], "predicate": types[-1]}]}
    try:
        result = real.extract_schema(text, schema, threshold=0.0, top_k=2, language=language)
    except HugieError as exc:
        if any(not t.strip() for t in types):
            assert exc.code == "E009", exc  # a blank type name
        else:
            assert exc.code == "E007", exc  # a type name long enough to crowd out the text
        return
    for ent in result.entities:
        check_spans(text, [Span(**ent.model_dump(exclude={"type"}))])
    for rel in result.relations:
        for ent in (rel.subject, rel.object):
            assert text[ent.start:ent.end] == ent.text and 0 <= ent.start < ent.end <= len(text)


# ---------------------------------------------------------------------- windowed vs unwindowed
@PROPS
@given(text=SHORT_TEXTS, instruction=st.sampled_from([PER, LOC, EN_PER]))
def test_real_model_windows_find_only_real_candidates_and_every_token(real, real_windowed, text, instruction):
    tokens = real.tokenizer.tokenize([text])[0]
    assume(len(tokens) <= real.tokenizer.max_length - len(real.tokenizer.tokenize([instruction])[0]) - 3)
    budget = real_windowed.tokenizer.max_length - len(real.tokenizer.tokenize([instruction])[0]) - 3
    windows = plan_windows(text, tokens, budget)
    event(f"windows: {min(len(windows), 4)}{'+' if len(windows) >= 4 else ''}")
    target(float(len(windows)))
    whole = real.extract(instruction, text, threshold=0.0)
    windowed = real_windowed.extract(instruction, text, threshold=0.0)
    check_spans(text, whole)
    check_spans(text, windowed)
    full, part = {(s.start, s.end) for s in whole}, {(s.start, s.end) for s in windowed}
    assert part <= full, "a window invented a span the whole text does not have"
    singles = {(s, e) for s, e in zip(tokens.starts, tokens.ends) if e > s}
    assert singles <= part, "a token was in no window"
    for lo, hi in windows:  # every span whose first and last tokens share a window is found
        visible = [i for i in range(lo, hi) if tokens.ends[i] > tokens.starts[i]]
        starts, ends = {tokens.starts[i] for i in visible}, {tokens.ends[i] for i in visible}
        assert {(s, e) for (s, e) in full if s in starts and e in ends} <= part
    if len(windows) == 1:  # nothing to window: the very same call
        assert [(s.start, s.end) for s in windowed] == [(s.start, s.end) for s in whole]
        assert all(abs(a.score - b.score) < 1e-5 for a, b in zip(windowed, whole))


# single-character answers are single tokens wherever they occur (CJK characters and punctuation
# are isolated pre-tokens), so every occurrence lies whole inside some window
CHAR_ANSWERS = ["张", "三", "李", "北", "京", "上", "海", "人", "名", "，", "。", "！", "？", "【"]
WORD_ANSWERS = ["张三", "北京", "王小明", "上海", "Alice", "New York", "Carol Smith", "李四去了"]
FAKE_TEXTS = st.lists(st.one_of(st.sampled_from(CHAR_ANSWERS + WORD_ANSWERS), st.sampled_from(HOSTILE),
                                st.text(max_size=3)), max_size=60).map("".join)


def fake_pair(answers: dict) -> tuple[Extractor, Extractor]:
    cfg = HugieConfig(max_span_width=16, threshold=0.5, max_seq_length=128)
    whole_tok, window_tok = new_tokenizer(128), new_tokenizer(30)
    return (Extractor(FakeBackend(whole_tok, answers), whole_tok, cfg, batch_size=64),
            Extractor(FakeBackend(window_tok, answers), window_tok, cfg, batch_size=64))


@settings(PROPS, max_examples=100)
@given(text=FAKE_TEXTS, chars=st.lists(st.sampled_from(CHAR_ANSWERS), min_size=1, max_size=5, unique=True),
       words=st.lists(st.sampled_from(WORD_ANSWERS), max_size=3, unique=True),
       top_k=st.one_of(st.none(), st.integers(1, 4)), threshold=st.sampled_from([0.0, 0.5, 0.9]))
def test_context_free_backend_windowed_equals_unwindowed(text, chars, words, top_k, threshold):
    scores = iter([0.97, 0.91, 0.83, 0.77, 0.62, 0.55, 0.48, 0.31])
    answers = {PER: [(a, next(scores)) for a in chars], LOC: [(a, next(scores)) for a in words]}
    whole, windowed = fake_pair(answers)
    budget = windowed.tokenizer.max_length - len(windowed.tokenizer.tokenize([PER])[0]) - 3
    n_windows = len(plan_windows(text, whole.tokenizer.tokenize([text])[0], budget))
    event(f"windows: {min(n_windows, 4)}{'+' if n_windows >= 4 else ''}")
    target(float(n_windows))
    pairs = [(PER, text), (LOC, text)]
    a = whole.extract(pairs, threshold=threshold, top_k=top_k)
    b = windowed.extract(pairs, threshold=threshold, top_k=top_k)
    for spans in a + b:
        check_spans(text, spans, top_k)
    # single-token answers: exactly the same spans, scores and order
    assert b[0] == a[0]
    # multi-token answers can straddle a window cut: never invented, never re-scored
    if top_k is None:
        assert set(b[1]) <= set(a[1])
    if n_windows == 1:
        assert b == a


def test_windows_are_exercised():
    """The strategies above do reach multi-window texts (a guard against a silent no-op)."""
    whole, windowed = fake_pair({PER: [("张", 0.9)]})
    text = "张" * 100 + "\u200b" * 5 + "张三。" * 20
    budget = windowed.tokenizer.max_length - len(windowed.tokenizer.tokenize([PER])[0]) - 3
    assert len(plan_windows(text, whole.tokenizer.tokenize([text])[0], budget)) > 5
    spans = windowed.extract(PER, text)
    assert spans == whole.extract(PER, text)
    assert len(spans) == 120 and all(text[s.start:s.end] == "张" for s in spans)
    assert sum(windowed.backend.calls) > sum(whole.backend.calls)
