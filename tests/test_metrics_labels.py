"""Metrics labels come from fixed sets: a client cannot add series by inventing HTTP methods (issue 23)."""

from __future__ import annotations

from hugie.api import create_app
from hugie.api.metrics import METHODS, Metrics, method_label

from tests.test_api import make_extractor, make_settings, run, serving


def test_method_label_maps_unknown_methods_to_other():
    assert {method_label(m) for m in METHODS} == METHODS
    for method in ("M12345", "get", "PROPFIND", "X" * 4000, ""):
        assert method_label(method) == "other"
    assert Metrics().method_label("POST") == "POST"


def test_an_invented_method_adds_no_series(tiny_tokenizer):
    ex, _ = make_extractor(tiny_tokenizer)

    async def go():
        async with serving(create_app(make_settings(), extractor=ex)) as c:
            for method in ("M12345", "X" * 4000):
                assert (await c.request(method, "/health")).status_code in (404, 405)
            return (await c.get("/metrics")).text

    text = run(go())
    assert "M12345" not in text and "X" * 100 not in text
    assert 'hugie_requests_total{method="other",route="/health",status="405"} 2.0' in text
