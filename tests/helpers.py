"""Training helper for tests: fit a tiny model on the synthetic task."""

from __future__ import annotations

import torch
from hugie.training.examples import DatasetSpec, build_examples
from hugie.training.trainer import collate, encode_examples, make_batches

from hugie.data import parse_record


def synthetic_specs(n: int = 240):
    from tests.conftest import synthetic_records

    recs = [parse_record(r) for r in synthetic_records(n)]
    zh = DatasetSpec("syn-zh", "-", language="zh", ner_negatives=1, re_negatives=0)
    zh.records = [r for r in recs if not r.text.isascii()]
    en = DatasetSpec("syn-en", "-", language="en", ner_negatives=1, re_negatives=0)
    en.records = [r for r in recs if r.text.isascii()]
    return [zh, en]


def fit_tiny(model, epoch_items, collate_items, steps: int, seed: int, lr: float):
    """Train ``model`` for ``steps`` AdamW steps over ``epoch_items(epoch)``'s length-bucketed batches
    (``collate_items`` gives a batch, or the parts of one: ``hugie.training.trainer.collate_slot_parts``)."""
    from hugie.training.trainer import parts_loss

    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    step, epoch = 0, 0
    while step < steps:
        items = epoch_items(epoch)
        for batch_ids in make_batches(items, 16, 4096, seed, epoch):
            batch = collate_items([items[i] for i in batch_ids])
            (parts_loss(model, batch) if isinstance(batch, list) else model(**batch)["loss"]).backward()
            opt.step()
            opt.zero_grad()
            step += 1
            if step >= steps:
                break
        epoch += 1
    return model.eval()


def train_tiny(tokenizer, steps: int = 260, seed: int = 0, lr: float = 3e-3):
    from tests.conftest import tiny_model

    torch.manual_seed(seed)
    model = tiny_model(tokenizer, seed=seed)
    specs = synthetic_specs()

    def epoch_items(epoch):
        return encode_examples(build_examples(specs, seed, epoch), tokenizer, 128, model.config.max_span_width)[0]

    return fit_tiny(model, epoch_items, lambda items: collate(items, tokenizer), steps, seed, lr)


class FakeBackend:
    """Answers by lookup: instruction → answer strings, found by token-id subsequence match.

    Lets extractor tests check batching, windows, decoding and schema chaining without a model.
    """

    name = "fake"
    device = "cpu"

    def __init__(self, tokenizer, answers: dict[str, list[tuple[str, float]]]):
        self.tokenizer = tokenizer
        self.answers = {tuple(tokenizer.tokenize([k])[0].ids): v for k, v in answers.items()}
        self.calls: list[int] = []

    def score(self, batch, threshold, max_width):
        import numpy as np

        from hugie.scoring import logit

        rows, logits = [], []
        self.calls.append(batch.input_ids.shape[0])
        for b in range(batch.input_ids.shape[0]):
            ids = list(batch.input_ids[b])
            sep = ids.index(self.tokenizer.sep_id)
            instr = tuple(ids[1:sep])
            text_pos = [i for i in range(len(ids)) if batch.char_starts[b, i] >= 0]
            pieces = [self.tokenizer.tokenizer.id_to_token(int(ids[i])).lstrip("\u2581") for i in text_pos]
            for answer, prob in self.answers.get(instr, []):
                target = answer.replace(" ", "")
                for s in range(len(pieces)):
                    acc = ""
                    for e in range(s, len(pieces)):
                        acc += pieces[e]
                        if len(acc) >= len(target):
                            break
                    if acc == target and pieces[s]:
                        i, j = text_pos[s], text_pos[e]
                        if logit(prob) > threshold and j - i < max_width:
                            rows.append((b, 0, i, j))
                            logits.append(logit(prob))
        return np.array(rows, dtype=np.int64).reshape(-1, 4), np.array(logits, dtype=np.float32)

    def describe(self):
        return {"backend": "fake"}


def train_tiny_slots(tokenizer, steps: int = 200, seed: int = 0, lr: float = 3e-3, reuse_layers: int = 0,
                     mark_subject: bool = False):
    """A tiny slot model (and its tokenizer with markers) trained on the synthetic task; with ``reuse_layers``,
    one whose relation rows read their texts' states from an entity pass (most of them train that way), and with
    ``mark_subject`` mark their subject's mentions in them."""
    from hugie.training.examples import SlotRecipe, build_slot_examples
    from hugie.training.trainer import collate_slot_parts, encode_slot_examples

    from hugie.prompts import PromptTokenizer
    from tests.conftest import tiny_slot_model

    torch.manual_seed(seed)
    model, marked = tiny_slot_model(tokenizer, seed=seed, reuse_layers=reuse_layers, mark_subject=mark_subject)
    prompts = PromptTokenizer(marked, model.config.slots)
    specs = synthetic_specs()
    recipe = SlotRecipe(drop=0.3, instruction=0.2, reuse=0.9 if reuse_layers else 0.0)

    def epoch_items(epoch):
        examples = build_slot_examples(specs, seed, epoch, recipe)
        return encode_slot_examples(examples, prompts, 128, model.config.max_span_width)[0]

    return fit_tiny(model, epoch_items, lambda items: collate_slot_parts(items, marked), steps, seed, lr), marked
