"""Shared fixtures: a tiny unigram tokenizer, tiny models built on the fly, a synthetic task."""

from __future__ import annotations

import random
import string

import pytest

from hugie.instructions import TEMPLATES
from hugie.tokenization import HugieTokenizer, build_unigram_tokenizer

PERSONS = ["张三", "李四", "王小明", "赵云", "刘德华", "陈静", "周杰伦", "孙悟空"]
PLACES = ["北京", "上海", "广州", "南京", "杭州", "成都", "西安", "深圳市"]
EN_PERSONS = ["Alice", "Bob", "Carol Smith", "David"]
EN_PLACES = ["Paris", "Berlin", "New York", "Tokyo"]
TEMPLATES_ZH = ["{p}去了{l}。", "昨天{p}在{l}开会。", "{l}欢迎{p}！", "{p}出生于{l}，后来搬家了。", "听说{p}住在{l}附近"]
TEMPLATES_EN = ["{p} went to {l}.", "Yesterday {p} was in {l}.", "{l} welcomes {p}!"]


def synthetic_records(n: int, seed: int = 0) -> list[dict]:
    """Unified-JSONL dicts: persons/places with a 出生地 / born_in relation."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        en = i % 4 == 3
        p = rng.choice(EN_PERSONS if en else PERSONS)
        l = rng.choice(EN_PLACES if en else PLACES)
        tmpl = rng.choice(TEMPLATES_EN if en else TEMPLATES_ZH)
        text = tmpl.format(p=p, l=l)
        ps, ls = text.index(p), text.index(l)
        pe = {"type": "person" if en else "人名", "start": ps, "end": ps + len(p), "text": p}
        le = {"type": "location" if en else "地名", "start": ls, "end": ls + len(l), "text": l}
        out.append({"id": f"syn-{i}", "text": text, "entities": [pe, le],
                    "relations": [{"subject": pe, "predicate": "born in" if en else "出生地", "object": le}]})
    return out


def tiny_pieces() -> list[tuple[str, float]]:
    chars = set()
    for r in synthetic_records(200):
        chars |= set(r["text"])
    for t in TEMPLATES.values():
        chars |= set(t.entity + t.relation)
    chars |= set("人名地出生点机构组织公司时间人物" + string.ascii_letters + string.digits + string.punctuation)
    chars |= set("，。！？：；（）【】“”、 😀é\u0301ＡＢＣ")
    pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -3.0)]
    words = ["\u2581Find", "\u2581all", "\u2581entities", "\u2581of", "\u2581type", "\u2581the", "\u2581went",
             "\u2581to", "\u2581was", "\u2581in", "\u2581welcomes", "\u2581Yesterday", "\u2581Alice", "\u2581Bob",
             "\u2581Paris", "\u2581Berlin", "\u2581Tokyo", "\u2581New", "\u2581York", "\u2581Smith", "\u2581born",
             "\u2581person", "\u2581location", "Carol", "David"]
    pieces += [(w, -4.0) for w in words]
    pieces += [(c, -6.0) for c in sorted(chars) if c.strip()]
    pieces += [("\u2581" + c, -7.0) for c in sorted(chars) if c.strip()]
    seen, out = set(), []
    for p, s in pieces:
        if p not in seen:
            seen.add(p)
            out.append((p, s))
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer() -> HugieTokenizer:
    return HugieTokenizer(build_unigram_tokenizer(tiny_pieces(), unk_id=3), max_length=128)


def tiny_model(tokenizer: HugieTokenizer, layers: int = 2, hidden: int = 64, width: int = 16, seed: int = 0,
               max_seq_length: int = 128):
    import torch
    from transformers import BertConfig, BertModel

    from hugie.modeling import GlobalPointerModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=4, intermediate_size=hidden * 2, max_position_embeddings=max_seq_length,
                     pad_token_id=tokenizer.pad_id)
    return GlobalPointerModel.from_encoder(BertModel(cfg, add_pooling_layer=False), head_size=16,
                                           max_span_width=width, max_seq_length=max_seq_length)


@pytest.fixture
def random_model(tiny_tokenizer):
    return tiny_model(tiny_tokenizer).eval()


@pytest.fixture(scope="session")
def untrained_model_dir(tmp_path_factory):
    """An untrained tiny model saved as a model directory (service and fault paths need no training)."""
    tok = HugieTokenizer(build_unigram_tokenizer(tiny_pieces(), unk_id=3), max_length=128)
    directory = tmp_path_factory.mktemp("untrained_model")
    tiny_model(tok).save_pretrained(directory)
    tok.save(directory)
    return directory


@pytest.fixture(scope="module")
def one_torch_thread():
    """A tiny model on a shared CI box runs fastest on one thread (restored afterwards)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def trained_model_dir(tmp_path_factory, tiny_tokenizer):
    """A tiny model trained on the synthetic task (shared by extractor, CLI and ONNX tests)."""
    from tests.helpers import train_tiny

    directory = tmp_path_factory.mktemp("tiny_trained")
    model = train_tiny(tiny_tokenizer, steps=260)
    model.save_pretrained(directory)
    tiny_tokenizer.save(directory)
    return directory


def tiny_slot_model(tokenizer: HugieTokenizer, seed: int = 0, spread: float = 0.0, **slots):
    """A tiny slot model and its tokenizer (``tokenizer`` plus the [E] / [R] markers); ``spread`` > 0 gives its
    slot head random weights, so slots of one row score differently before any training."""
    import torch

    from hugie.configuration import SLOT_DEFAULTS

    settings = {**SLOT_DEFAULTS, "rank": 4, **slots}
    marked = tokenizer.with_markers(list(settings["markers"].values()))
    model = tiny_model(marked, seed=seed)
    ids = {kind: marked.marker_id(m) for kind, m in settings["markers"].items()}
    model.add_slots(ids, init_id=marked.tokenize(["【"])[0].ids[-1], **settings)
    if spread:
        with torch.no_grad():
            for module in (model.slot_gate, model.slot_query):
                module.weight.normal_(0.0, spread)
    return model.eval(), marked


@pytest.fixture(scope="session")
def trained_slot_model_dir(tmp_path_factory, tiny_tokenizer):
    """A tiny slot model trained on the synthetic task."""
    from tests.helpers import train_tiny_slots

    directory = tmp_path_factory.mktemp("tiny_slots")
    model, tokenizer = train_tiny_slots(tiny_tokenizer, steps=400)
    model.save_pretrained(directory)
    tokenizer.save(directory)
    return directory
