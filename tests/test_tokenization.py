import pytest

from hugie.tokenization import char_span_to_tokens, is_cjk

HOSTILE = [
    "第一行\r\n第二行😀张三在北京",
    "Ｆｕｌｌ－ｗｉｄｔｈ　ＡＢＣ 和 café",
    "e\u0301tude 组合字符 cafe\u0301",
    "zero\u200bwidth\ufeff混合 text  with   spaces\t\ttabs",
    "😀😀😀",
    "",
    "   ",
    "\u200b\u200b",
    "Mixed中文English混合123数字！？",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_offsets_index_the_original_text(tiny_tokenizer, text):
    (tokens,) = tiny_tokenizer.tokenize([text])
    prev_end = 0
    for s, e in zip(tokens.starts, tokens.ends):
        assert 0 <= s <= e <= len(text)
        assert s >= prev_end or s == e  # visible parts never overlap
        if e > s:
            assert not text[s].isspace(), "a visible span must not start on whitespace"
            prev_end = e


@pytest.mark.parametrize("text", ["张三在北京开会", "昨天李四去了上海。", "Mixed中文English混合"])
def test_every_cjk_character_boundary_is_a_token_boundary(tiny_tokenizer, text):
    (tokens,) = tiny_tokenizer.tokenize([text])
    starts = {s for s, e in zip(tokens.starts, tokens.ends) if e > s}
    ends = {e for s, e in zip(tokens.starts, tokens.ends) if e > s}
    for i, ch in enumerate(text):
        if is_cjk(ch):
            assert i in starts and i + 1 in ends, f"no boundary around {ch!r} at {i}"


def test_spaces_are_trimmed_from_metaspace_pieces(tiny_tokenizer):
    text = "went to Paris"
    (tokens,) = tiny_tokenizer.tokenize([text])
    visible = [text[s:e] for s, e in zip(tokens.starts, tokens.ends) if e > s]
    assert "Paris" in visible and " Paris" not in visible
    assert char_span_to_tokens(tokens, text.index("Paris"), len(text)) is not None


def test_pair_encoding_masks_only_the_text_segment(tiny_tokenizer):
    batch = tiny_tokenizer.encode_pairs([("找到文章中所有【人名】类型的实体？", "张三在北京"), ("x", "李四")])
    assert batch.input_ids.shape[0] == 2
    for b, text in enumerate(["张三在北京", "李四"]):
        ids = batch.input_ids[b]
        assert ids[0] == tiny_tokenizer.cls_id
        seps = [i for i, t in enumerate(ids) if t == tiny_tokenizer.sep_id]
        assert len(seps) == 2
        inside = batch.span_mask[b].nonzero()[0]
        assert inside.min() > seps[0] and inside.max() < seps[1]
        chars = [text[batch.char_starts[b, i]:batch.char_ends[b, i]] for i in inside]
        assert "".join(chars) == text
        assert (batch.char_starts[b, : seps[0] + 1] == -1).all()


def test_too_long_pair_is_an_error_not_a_truncation(tiny_tokenizer):
    from hugie.errors import HugieError

    toks = tiny_tokenizer.tokenize(["张" * 200, "x"])
    with pytest.raises(HugieError, match="E011"):
        tiny_tokenizer.build_batch([(toks[1], toks[0])])


def test_char_span_to_tokens_requires_exact_boundaries(tiny_tokenizer):
    text = "王小明去了南京"
    (tokens,) = tiny_tokenizer.tokenize([text])
    assert char_span_to_tokens(tokens, 0, 3) is not None
    assert char_span_to_tokens(tokens, 5, 7) is not None
    assert char_span_to_tokens(tokens, 0, 0) is None
