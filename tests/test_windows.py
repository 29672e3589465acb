import pytest

from hugie.windows import plan_windows


@pytest.mark.parametrize("budget", [5, 8, 13, 40])
def test_windows_cover_every_token_within_budget(tiny_tokenizer, budget):
    text = "张三去了北京。李四在上海开会，王小明出生于南京！" * 3
    (tokens,) = tiny_tokenizer.tokenize([text])
    windows = plan_windows(text, tokens, budget)
    assert windows[0][0] == 0 and windows[-1][1] == len(tokens)
    for (lo, hi), (lo2, _) in zip(windows, windows[1:]):
        assert lo2 <= hi, "windows leave no gap"
        assert lo2 > lo, "windows make progress"
    assert all(0 < hi - lo <= budget for lo, hi in windows)
    if len(tokens) > budget:
        assert len(windows) > 1


def test_windows_prefer_sentence_ends(tiny_tokenizer):
    text = "张三去了北京。李四在上海开会了"
    (tokens,) = tiny_tokenizer.tokenize([text])
    (lo, hi), *_ = plan_windows(text, tokens, 10)
    assert text[tokens.starts[hi] - 1] == "。"


def test_short_text_is_one_window(tiny_tokenizer):
    (tokens,) = tiny_tokenizer.tokenize(["张三"])
    assert plan_windows("张三", tokens, 10) == [(0, len(tokens))]
