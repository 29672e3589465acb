"""The demo page (``api/static``, served at ``/ui/``).

Routing, headers and the ``ui`` setting are checked with a test client. The page itself runs in a real
headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by selenium) against the embedded
default model served by uvicorn on 127.0.0.1: it loads, highlights spans at the offsets the API gives
(text with emoji and CRLF line ends included), draws relations, and shows API errors (E107, E105).
Those tests skip when selenium, chromium or chromedriver is missing; the browser makes no request
beyond the loopback server.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
from fastapi.testclient import TestClient
from hugie.api.app import create_app
from hugie.api.settings import Settings
from hugie.api.ui import STATIC_DIR

from hugie.extractor import DEFAULT_MODEL_DIR
from tests.test_client import running_server

PERSON = "找到文章中所有【人名】类型的实体？"
KEY = "sesame-0123"

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:  # pragma: no cover - the browser tests skip
    webdriver = None


def _find(env: str, *names: str) -> str | None:
    if os.environ.get(env):
        return os.environ[env]
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


CHROMIUM = _find("HUGIE_TEST_CHROMIUM", "chromium", "chromium-browser", "google-chrome")
CHROMEDRIVER = _find("HUGIE_TEST_CHROMEDRIVER", "chromedriver")
browser = pytest.mark.skipif(
    webdriver is None or CHROMIUM is None or CHROMEDRIVER is None
    or not (DEFAULT_MODEL_DIR / "config.json").exists(),
    reason="needs selenium, chromium and chromedriver (apt-get install chromium chromium-driver) and the "
           "embedded model")


class _NoModel:
    """Stands in for an Extractor where no request reaches the model."""


def _client(**settings) -> TestClient:
    return TestClient(create_app(Settings(warmup=False, **settings), extractor=_NoModel()))


# ---------------------------------------------------------------------- without a browser
def test_the_page_and_its_files_are_served_with_a_strict_policy():
    with _client() as client:
        for path in ("/", "/ui"):
            answer = client.get(path, follow_redirects=False)
            assert answer.status_code == 307 and answer.headers["location"] == "ui/"
        page = client.get("/ui/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "connect-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-content-type-options"] == "nosniff"
        for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
            answer = client.get(f"/ui/{name}")
            assert answer.status_code == 200 and answer.headers["content-type"].startswith(kind)
        missing = client.get("/ui/secret.py")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "E109"
        assert not any(p.startswith("/ui") for p in client.get("/openapi.json").json()["paths"])


def test_the_page_is_off_with_the_ui_setting(monkeypatch):
    with _client(ui=False) as client:
        for path in ("/", "/ui", "/ui/", "/ui/app.js"):
            assert client.get(path, follow_redirects=False).status_code == 404
    monkeypatch.setenv("HUGIE_UI", "0")
    assert Settings().ui is False


def test_with_a_key_the_page_loads_but_the_api_it_calls_needs_the_key():
    """The page is static and holds no data; what it shows comes from the API, behind the same key."""
    with _client(api_key=KEY) as client:
        assert client.get("/ui/").status_code == 200
        assert client.get("/info").status_code == 401
        assert client.post("/extract", json={"text": "张三", "instruction": PERSON}).status_code == 401
        assert client.get("/info", headers={"X-API-Key": KEY}).status_code == 200


def test_the_page_needs_nothing_from_outside_the_server():
    for path in STATIC_DIR.iterdir():
        source = path.read_text(encoding="utf-8")
        # the only absolute URL is the SVG namespace, which is a name, not a request
        urls = set(re.findall(r"""(?:https?:)?//[\w.-]+\.\w+[^\s"'`)]*""", source)) - {"http://www.w3.org/2000/svg"}
        assert not urls, f"{path.name} refers to {urls}"
        assert "@import" not in source


# ---------------------------------------------------------------------- in a browser
@pytest.fixture(scope="module")
def extractor():
    from hugie import Extractor

    return Extractor.load(DEFAULT_MODEL_DIR)


@pytest.fixture(scope="module")
def server(extractor):
    with running_server(create_app(Settings(warmup=False), extractor=extractor)) as (url, _):
        yield url


@pytest.fixture(scope="module")
def locked_server(extractor):
    with running_server(create_app(Settings(warmup=False, api_key=KEY), extractor=extractor)) as (url, _):
        yield url


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-extensions", "--no-first-run", "--no-default-browser-check", "--window-size=1280,900",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    chrome.set_page_load_timeout(60)
    try:
        yield chrome
    finally:
        chrome.quit()


def _open(driver, url):
    driver.get(url + "/ui/")
    driver.execute_script("sessionStorage.clear()")
    driver.get(url + "/ui/")
    _wait_state(driver, ("idle",))
    return driver


def _wait_state(driver, states, timeout=60):
    WebDriverWait(driver, timeout).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute(
        "data-state") in states)
    return driver.find_element(By.TAG_NAME, "body").get_attribute("data-state")


def _set(driver, element_id, value):
    """Set a field as typing would (an ``input`` event follows), whatever characters it holds."""
    driver.execute_script("const e = document.getElementById(arguments[0]); e.value = arguments[1];"
                          "e.dispatchEvent(new Event('input', {bubbles: true}));", element_id, value)


def _choose(driver, mode):
    driver.find_element(By.CSS_SELECTOR, f"input[name=mode][value={mode}]").click()


def _extract(driver):
    driver.find_element(By.ID, "run").click()
    state = _wait_state(driver, ("done", "error"))
    request = json.loads(driver.find_element(By.ID, "raw-request").get_attribute("textContent"))
    raw = driver.find_element(By.ID, "raw-response").get_attribute("textContent")
    return state, request, json.loads(raw) if raw else None


def _check_highlight(driver, sent: str, span: dict, kind: str | None = None) -> None:
    """The mark for ``span`` holds exactly ``sent[start:end]``, and exactly ``sent[:start]`` comes before it."""
    marks = [m for m in driver.find_elements(By.CSS_SELECTOR, "#doc mark")
             if m.get_attribute("data-start") == str(span["start"]) and m.get_attribute("data-end") == str(span["end"])
             and (kind is None or m.get_attribute("data-type") == kind)]
    assert len(marks) == 1, f"no single mark for {span}"
    inside = driver.execute_script("return arguments[0].textContent", marks[0])
    before = driver.execute_script("const r = document.createRange(); r.setStart(document.getElementById('doc'), 0);"
                                   "r.setEndBefore(arguments[0]); return r.toString()", marks[0])
    assert inside == sent[span["start"]:span["end"]] == span["text"]
    assert before == sent[:span["start"]]


def _errors_in_console(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


@browser
def test_the_page_loads_with_the_model_details_and_asks_nothing_of_other_hosts(driver, server):
    _open(driver, server)
    assert "hugie" in driver.title
    model = driver.find_element(By.ID, "model").text
    assert "hugie-small" in model and "threshold" in model
    assert not driver.find_element(By.ID, "key-panel").get_attribute("open")
    fetched = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert fetched and all(name.startswith(server + "/") for name in fetched), fetched
    assert _errors_in_console(driver) == []


@browser
def test_an_instruction_over_emoji_and_crlf_highlights_the_spans_at_the_offsets_the_api_gives(driver, server):
    text = "😀😀 昨天张三在北京开会。\r\n🎉李四去了上海。"
    _open(driver, server)
    _choose(driver, "instruction")
    _set(driver, "instruction", PERSON)
    _set(driver, "text", text)
    state, request, answer = _extract(driver)
    assert state == "done"
    sent = request["text"]
    assert sent == text.replace("\r\n", "\n")  # a textarea keeps LF line ends; offsets index what was sent
    assert {s["text"] for s in answer["spans"]} >= {"张三", "李四"}
    assert next(s for s in answer["spans"] if s["text"] == "李四")["start"] == sent.index("李四") == 15
    for span in answer["spans"]:
        _check_highlight(driver, sent, span)
    assert _errors_in_console(driver) == []


@browser
def test_a_file_with_crlf_line_ends_is_sent_as_read_and_highlighted_at_its_offsets(driver, server, tmp_path):
    text = "😀😀 昨天张三在北京开会。\r\n🎉李四去了上海。\r\n"
    path = tmp_path / "news.txt"
    path.write_bytes(text.encode("utf-8"))
    _open(driver, server)
    _choose(driver, "instruction")
    _set(driver, "instruction", PERSON)
    driver.find_element(By.ID, "file").send_keys(str(path))
    WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "file-note").is_displayed())
    state, request, answer = _extract(driver)
    assert state == "done" and request["text"] == text
    lisi = next(s for s in answer["spans"] if s["text"] == "李四")
    assert lisi["start"] == text.index("李四") == 16  # 2 emoji = 2 code points (4 UTF-16 units), CR counted
    for span in answer["spans"]:
        _check_highlight(driver, text, span)


@browser
def test_entity_types_are_highlighted_with_their_type_and_score(driver, server):
    text = "浙商银行企业信贷部叶老桂博士则从另一个角度对五道门槛进行了解读。"
    _open(driver, server)
    _choose(driver, "entities")
    _set(driver, "entities", "人名，公司")
    _set(driver, "text", text)
    state, request, answer = _extract(driver)
    assert state == "done", driver.find_element(By.ID, "error").text
    assert request["entities"] == ["人名", "公司"]
    people = answer["entities"]["人名"]
    assert any(s["text"] == "叶老桂" and s["start"] == 9 for s in people)
    for kind, spans in answer["entities"].items():
        for span in spans:
            _check_highlight(driver, text, span, kind)
    mark = driver.find_element(By.CSS_SELECTOR, "#doc mark[data-start='9'][data-type='人名']")
    score = next(s["score"] for s in people if s["start"] == 9)
    assert mark.get_attribute("data-label") == f"人名 {score:.2f}"


@browser
def test_a_schema_draws_an_arrow_for_each_relation(driver, server):
    _open(driver, server)
    Select(driver.find_element(By.ID, "example")).select_by_index(3)  # the schema example
    state, request, answer = _extract(driver)
    assert state == "done" and "schema" in request
    assert answer["relations"], answer
    for entity in answer["entities"]:
        _check_highlight(driver, request["text"], entity, entity["type"])
    arcs = driver.find_elements(By.CSS_SELECTOR, "#arcs path.arc")
    assert len(arcs) == len(answer["relations"])
    labels = [t.get_attribute("textContent") for t in driver.find_elements(By.CSS_SELECTOR, "#arcs text")]
    assert labels == [r["predicate"] for r in answer["relations"]]
    items = driver.find_elements(By.CSS_SELECTOR, "#relations li")
    assert len(items) == len(answer["relations"]) and answer["relations"][0]["predicate"] in items[0].text


@browser
@pytest.mark.parametrize("mode, field, value", [("instruction", "threshold", "2"), ("entities", "entities", " , ")])
def test_an_api_error_is_shown_with_its_code_and_message(driver, server, mode, field, value):
    _open(driver, server)
    _choose(driver, mode)
    _set(driver, field, value)
    state, request, answer = _extract(driver)
    assert state == "error"
    assert request.get("threshold") == 2 if field == "threshold" else request["entities"] == []
    error = driver.find_element(By.ID, "error")
    assert error.is_displayed()
    assert driver.find_element(By.ID, "error-code").text == answer["error"]["code"]
    assert answer["error"]["code"] in ("E107", "E009")  # the request's validation, or the library's
    assert driver.find_element(By.ID, "error-message").text == answer["error"]["message"]
    assert answer["error"]["request_id"] in driver.find_element(By.ID, "error-id").text


@browser
def test_behind_a_key_the_page_shows_401_until_the_key_is_given(driver, locked_server):
    _open(driver, locked_server)
    assert "API key" in driver.find_element(By.ID, "model").text
    _choose(driver, "instruction")
    _set(driver, "text", "昨天张三在北京开会。")
    state, _, answer = _extract(driver)
    assert state == "error" and answer["error"]["code"] == "E105"
    assert driver.find_element(By.ID, "error-code").text == "E105"
    assert driver.find_element(By.ID, "key-panel").get_attribute("open")
    driver.find_element(By.ID, "api-key").send_keys(KEY)
    state, _, answer = _extract(driver)
    assert state == "done" and [s["text"] for s in answer["spans"]] == ["张三"]
    assert driver.execute_script("return sessionStorage.getItem('hugie.apiKey')") == KEY
    driver.execute_script("sessionStorage.clear()")
