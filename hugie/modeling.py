"""The instruction-driven Global Pointer span model (one model, one file).

encoder (BERT family) → dense to 2·D → q, k (RoPE) and start/end bias → span logits
``s(i, j) = <rope(q)_i, rope(k)_j>/sqrt(D) + start_bias[i] + end_bias[j]`` (Efficient Global
Pointer, one span head: the instruction says which spans are wanted). Logits are masked to the
text segment, the upper triangle and a maximum span width W; the loss is multilabel categorical
cross-entropy. Saved and loaded in HF format (``config.json`` + ``model.safetensors``).

``architecture="slots"``: a row carries K prompts before the text, each behind a marker token
(``[E] 人名 [E] 公司 … </s> TEXT``), and the head reads slot k's query from its marker's output u_k:
a gate on q shared by each RoPE pair, ``q_k = q ⊙ (1 + G u_k)``, and low-rank start/end biases
``start_bias_k[i] = start_bias[i] + <S u_k, T p_i>`` (G, S zero-initialised, so a fresh slot head
starts as the one-slot head). Span logits are [B, K, L, L]; a whole schema is one encoder pass.

``slots.reuse_layers = m``: a relation row does not read its text through the first m layers again. The entity pass
of the text keeps the text's states after layer m; the row runs only its prompt through those layers, places the
kept text states after it and runs the remaining layers over both (:meth:`GlobalPointerModel.encode`), so a subject's
pass costs the top layers over prompt and text plus the bottom layers over its prompt alone. With
``slots.mark_subject`` the row adds a learned vector (zero-initialised) to the kept states of its subject's mentions in
the text: those states never saw the prompt, and the marker tells the top layers which mention the row asks about.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

from .configuration import TORCH_WEIGHT_FILES, SlotArchitecture, has_torch_weights
from .configuration import HugieConfig as _Settings
from .instructions import default_templates_dict

__all__ = ["TORCH_WEIGHT_FILES", "GlobalPointerConfig", "GlobalPointerModel", "HugieConfig", "has_torch_weights"]

# A finite mask value that survives fp16 (max 65504) even after a few additions.
MASK_VALUE = -1.0e4


class GlobalPointerConfig(SlotArchitecture, PretrainedConfig):
    """The torch model's config: the keys and defaults of :class:`hugie.configuration.HugieConfig`."""

    model_type = "hugie_global_pointer"

    def __init__(
        self,
        encoder: dict | None = None,
        head_size: int = _Settings.head_size,
        max_span_width: int = _Settings.max_span_width,
        threshold: float = _Settings.threshold,
        max_seq_length: int = _Settings.max_seq_length,
        relation_threshold: float | None = _Settings.relation_threshold,
        one_type_per_span: bool = _Settings.one_type_per_span,
        flat_ner: bool = _Settings.flat_ner,
        instructions: dict | None = None,
        architecture: str = _Settings.architecture,
        slots: dict | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.architecture = architecture
        self.slots = _Settings(architecture=architecture, slots=slots).slots
        self.encoder = encoder or {}
        self.head_size = head_size
        self.max_span_width = max_span_width
        self.threshold = threshold
        self.relation_threshold = relation_threshold  # relation-object passes of a schema; None: threshold
        self.one_type_per_span = one_type_per_span  # entity passes: a span keeps only its best type
        self.flat_ner = flat_ner  # entity passes: no two spans overlap (across types, best score first)
        self.max_seq_length = max_seq_length
        self.instructions = instructions or default_templates_dict()

    def encoder_config(self) -> PretrainedConfig:
        cfg = dict(self.encoder)
        model_type = cfg.pop("model_type", "bert")
        return AutoConfig.for_model(model_type, **cfg)


#: The torch config under its historical name (``from hugie.modeling import HugieConfig``).
HugieConfig = GlobalPointerConfig


def rope(x: torch.Tensor) -> torch.Tensor:
    """Rotary position encoding over [B, L, D]: pairs (2m, 2m+1), angle p·10000^(-2m/D)."""
    length, dim = x.shape[-2], x.shape[-1]
    inv_freq = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float32, device=x.device) / dim)
    angles = torch.arange(length, dtype=torch.float32, device=x.device)[:, None] * inv_freq[None, :]
    cos = torch.repeat_interleave(torch.cos(angles), 2, dim=-1).to(x.dtype)
    sin = torch.repeat_interleave(torch.sin(angles), 2, dim=-1).to(x.dtype)
    rotated = torch.stack([-x[..., 1::2], x[..., 0::2]], dim=-1).reshape(x.shape)
    return x * cos + rotated * sin


def span_validity(span_mask: torch.Tensor, max_width: int) -> torch.Tensor:
    """[B, L, L] bool: both ends allowed, i <= j and j - i < max_width."""
    length = span_mask.shape[1]
    idx = torch.arange(length, device=span_mask.device)
    offset = idx[None, :] - idx[:, None]
    band = (offset >= 0) & (offset < max_width)
    allowed = span_mask.bool()
    return allowed[:, :, None] & allowed[:, None, :] & band[None]


def multilabel_categorical_crossentropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Su's multilabel CE over flattened [B, N] logits (masked entries must hold MASK_VALUE)."""
    logits = logits.float()
    labels = labels.float()
    signed = (1 - 2 * labels) * logits
    neg = signed - labels * 1e4
    pos = signed - (1 - labels) * 1e4
    zeros = torch.zeros_like(logits[..., :1])
    neg_loss = torch.logsumexp(torch.cat([neg, zeros], dim=-1), dim=-1)
    pos_loss = torch.logsumexp(torch.cat([pos, zeros], dim=-1), dim=-1)
    return (neg_loss + pos_loss).mean()


class GlobalPointerModel(PreTrainedModel):
    """Encoder + Efficient Global Pointer head."""

    config_class = GlobalPointerConfig
    base_model_prefix = "encoder"
    supports_gradient_checkpointing = False

    def __init__(self, config: GlobalPointerConfig, encoder: nn.Module | None = None):
        super().__init__(config)
        self.encoder = encoder if encoder is not None else AutoModel.from_config(
            config.encoder_config(), add_pooling_layer=False)
        hidden = self.encoder.config.hidden_size
        self.projection = nn.Linear(hidden, 2 * config.head_size)
        self.bias_head = nn.Linear(2 * config.head_size, 2)
        if config.slotted:
            self._build_slot_head()
        self.post_init()

    def _build_slot_head(self) -> None:
        hidden, rank = self.encoder.config.hidden_size, int(self.config.slots["rank"])
        self.slot_gate = nn.Linear(hidden, self.config.head_size // 2)  # one gate per RoPE pair
        self.slot_query = nn.Linear(hidden, 2 * rank)  # start, end
        self.token_key = nn.Linear(2 * self.config.head_size, 2 * rank)
        if self.config.mark_subject:
            self._build_subject_marker()

    def _build_subject_marker(self) -> None:
        self.subject_marker = nn.Linear(1, self.encoder.config.hidden_size, bias=False)  # a 0/1 mask → its vector

    def _init_weights(self, module):
        if module is self.projection or module is self.bias_head or module is getattr(self, "token_key", None):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif module is getattr(self, "slot_gate", None) or module is getattr(self, "slot_query", None):
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)
        elif module is getattr(self, "subject_marker", None):
            nn.init.zeros_(module.weight)

    def add_slots(self, marker_ids: dict[str, int], init_id: int, **slots) -> None:
        """Turn a one-slot model into a slot model whose slot head starts as its head: new marker embeddings
        (rows ``marker_ids``, appended to the vocabulary) start as token ``init_id``'s (e.g. ``【``), the gate
        at 1 and the slot biases at 0."""
        config = self.config
        if config.slotted:
            raise ValueError("the model already has slots")
        embeddings = self.encoder.get_input_embeddings()
        size = max(marker_ids.values()) + 1
        if size > embeddings.num_embeddings:
            self.encoder.resize_token_embeddings(size)
            embeddings = self.encoder.get_input_embeddings()
            config.encoder["vocab_size"] = size
        config.architecture = "slots"
        config.slots = {**_Settings(architecture="slots", slots=slots).slots}
        self._build_slot_head()
        for module in (self.slot_gate, self.slot_query, self.token_key, getattr(self, "subject_marker", None)):
            if module is not None:
                self._init_weights(module)
        with torch.no_grad():
            start = embeddings.weight[init_id].clone()
            for index in marker_ids.values():
                embeddings.weight[index] = start

    def add_subject_marker(self) -> None:
        """Give a ``reuse_layers`` model the subject marker (``slots.mark_subject``), zero at first, so the model
        starts out scoring as it did."""
        if not self.reuse_layers:
            raise ValueError("a subject marker needs a model with slots.reuse_layers")
        self.config.slots["mark_subject"] = True
        if getattr(self, "subject_marker", None) is None:
            self._build_subject_marker()
            self._init_weights(self.subject_marker)

    @classmethod
    def from_encoder(cls, encoder: nn.Module, **head_kwargs) -> GlobalPointerModel:
        enc_cfg = encoder.config.to_dict()
        for key in ("architectures", "_name_or_path", "transformers_version", "torch_dtype", "dtype"):
            enc_cfg.pop(key, None)
        config = GlobalPointerConfig(encoder=enc_cfg, **head_kwargs)
        model = cls(config, encoder=encoder)
        model._init_weights(model.projection)
        model._init_weights(model.bias_head)
        return model

    @property
    def reuse_layers(self) -> int:
        """Encoder layers a relation row takes from its text's entity pass (``slots.reuse_layers``; 0: none)."""
        return self.config.reuse_layers

    def _layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor, first: int, stop: int) -> torch.Tensor:
        """Encoder layers ``first`` to ``stop - 1`` over ``hidden`` [B, L, H] (``attention_mask`` [B, L], 0/1)."""
        mask, _ = self.encoder._create_attention_masks(attention_mask=attention_mask, encoder_attention_mask=None,
                                                       embedding_output=hidden, encoder_hidden_states=None,
                                                       cache=None, position_ids=None)
        for layer in self.encoder.encoder.layer[first:stop]:
            hidden = layer(hidden, mask)
        return hidden

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               reused_states: torch.Tensor | None = None, reused_mask: torch.Tensor | None = None,
               subject_mask: torch.Tensor | None = None):
        """The encoder's last states and, for a model with ``reuse_layers`` m, its rows' states after layer m
        [B, L, H] (else None). ``reused_states`` [B, T, H] (``reused_mask`` [B, T]): texts' states after layer m,
        kept from their entity pass, each placed right after its row (its prompt) of ``input_ids`` before the
        remaining layers; the last states are then [B, L + T, H], laid out as whole rows padded at the end.
        ``subject_mask`` [B, T] (0/1; read with ``slots.mark_subject``): the text tokens of each row's subject."""
        m = self.reuse_layers
        if not m:
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state, None
        lower = self._layers(self.encoder.embeddings(input_ids=input_ids), attention_mask, 0, m)
        hidden, mask = lower, attention_mask
        if reused_states is not None:
            texts = reused_states.to(lower.dtype)
            if subject_mask is not None and getattr(self, "subject_marker", None) is not None:
                texts = texts + self.subject_marker(subject_mask[:, :, None].to(lower.dtype))
            hidden, mask = self._append_texts(lower, attention_mask, texts, reused_mask)
        return self._layers(hidden, mask, m, len(self.encoder.encoder.layer)), lower

    @staticmethod
    def _append_texts(prompts: torch.Tensor, prompt_mask: torch.Tensor, texts: torch.Tensor, text_mask: torch.Tensor):
        """Rows [B, P + T, H] holding each prompt's states, then right after them its text's, then padding (the
        layout of a whole row, which attention kernels that take padding as trailing lengths read correctly),
        and their 0/1 mask [B, P + T]."""
        batch, width, size = prompts.shape
        lengths = prompt_mask.sum(dim=1, keepdim=True)
        position = torch.arange(width + text_mask.shape[1], device=prompts.device)[None, :]
        # a prompt position reads itself; a later one the text state it has reached, or the zero row at the end
        index = torch.where(position < lengths, position, width + position - lengths).clamp(max=position.shape[1])
        states = torch.cat([prompts, texts, prompts.new_zeros((batch, 1, size))], dim=1)
        masks = torch.cat([prompt_mask, text_mask.to(prompt_mask.dtype), prompt_mask.new_zeros((batch, 1))], dim=1)
        return (torch.gather(states, 1, index[:, :, None].expand(-1, -1, size)),
                torch.gather(masks, 1, index.expand(batch, -1)))

    @staticmethod
    def text_states(states: torch.Tensor, starts: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """Each row's text states [B, T, H] out of ``states`` [B, L, H]: T positions from ``starts`` [B] on, zero
        where ``text_mask`` [B, T] is 0."""
        index = (starts[:, None] + torch.arange(text_mask.shape[1], device=states.device)[None, :])
        index = index.clamp(max=states.shape[1] - 1)
        taken = torch.gather(states, 1, index[:, :, None].expand(-1, -1, states.shape[-1]))
        return taken * text_mask[:, :, None].to(taken.dtype)

    def project(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                slot_positions: torch.Tensor | None = None, slot_mask: torch.Tensor | None = None,
                reused_states: torch.Tensor | None = None, reused_mask: torch.Tensor | None = None,
                subject_mask: torch.Tensor | None = None, with_states: bool = False):
        """What every backend computes: q, k (before RoPE) [B, L, D] and start/end bias [B, L]; for a slot model
        (``slot_positions`` [B, K]: each slot's marker position; ``slot_mask`` [B, K]: 0 for padding slots)
        q [B, K, L, D] and biases [B, K, L] per slot, padding slots' start bias at MASK_VALUE. ``reused_states``,
        ``reused_mask``, ``subject_mask``: see :meth:`encode` (L is then the prompts' length plus T); ``with_states``:
        the rows' states after ``reuse_layers`` layers [B, L, H] come fifth."""
        hidden, lower = self.encode(input_ids, attention_mask, reused_states, reused_mask, subject_mask)
        out = self._head(hidden, slot_positions, slot_mask)
        return (*out, lower) if with_states else out

    def _head(self, hidden: torch.Tensor, slot_positions: torch.Tensor | None, slot_mask: torch.Tensor | None):
        p = self.projection(hidden)
        d = self.config.head_size
        q, k = p[..., :d], p[..., d:]
        bias = self.bias_head(p) / 2
        start_bias, end_bias = bias[..., 0], bias[..., 1]
        if not self.config.slotted:
            return q, k, start_bias, end_bias
        # plain MatMuls and slices (no gather with expanded indices, no unflatten): the exported graph keeps static
        # ranks, so onnxruntime's shape inference and attention fusion still apply to the encoder
        length = hidden.shape[1]
        picks = (slot_positions[:, :, None] == torch.arange(length, device=hidden.device)).to(hidden.dtype)
        marker = picks @ hidden  # [B, K, H]: each slot's marker state
        # one gate per RoPE pair (so RoPE and the gate commute), spread to the pair's two dimensions
        half = self.config.head_size // 2
        spread = (torch.arange(2 * half, device=marker.device)[None, :] // 2
                  == torch.arange(half, device=marker.device)[:, None]).to(marker.dtype)  # [D/2, D]: m -> 2m, 2m + 1
        gate = 1.0 + self.slot_gate(marker) @ spread  # [B, K, D]
        q = q[:, None, :, :] * gate[:, :, None, :]  # [B, K, L, D]
        rank = self.slot_query.out_features // 2
        slot_q, token_k = self.slot_query(marker), self.token_key(p)  # [B, K, 2r], [B, L, 2r]
        scale = 1.0 / math.sqrt(rank)
        start_bias = start_bias[:, None, :] + (slot_q[..., :rank] @ token_k[..., :rank].transpose(1, 2)) * scale
        end_bias = end_bias[:, None, :] + (slot_q[..., rank:] @ token_k[..., rank:].transpose(1, 2)) * scale
        start_bias = start_bias.masked_fill((slot_mask == 0)[:, :, None], MASK_VALUE)
        return q, k, start_bias, end_bias

    def span_logits(self, q, k, start_bias, end_bias, span_mask: torch.Tensor) -> torch.Tensor:
        """Dense logits with invalid spans set to MASK_VALUE (training path): [B, L, L], or [B, K, L, L]
        for a slot model's q [B, K, L, D]."""
        valid = span_validity(span_mask, self.config.max_span_width)
        qr, kr = rope(q), rope(k)
        if q.dim() == 4:
            logits = torch.einsum("bkid,bjd->bkij", qr, kr) / math.sqrt(q.shape[-1])
            logits = logits + start_bias[..., :, None] + end_bias[..., None, :]
            return logits.masked_fill(~valid[:, None], MASK_VALUE)
        logits = torch.einsum("bid,bjd->bij", qr, kr) / math.sqrt(q.shape[-1])
        logits = logits + start_bias[:, :, None] + end_bias[:, None, :]
        return logits.masked_fill(~valid, MASK_VALUE)

    def forward(self, input_ids, attention_mask, span_mask, labels: torch.Tensor | None = None,
                slot_positions: torch.Tensor | None = None, slot_mask: torch.Tensor | None = None,
                companion_ids: torch.Tensor | None = None, companion_mask: torch.Tensor | None = None,
                companion_starts: torch.Tensor | None = None, text_mask: torch.Tensor | None = None,
                subject_mask: torch.Tensor | None = None):
        """Returns ``{"logits": [B, L, L] (slot model: [B, K, L, L]), "loss": scalar when labels (0/1, the
        logits' shape) are given}``; a slot model's loss is the mean over its real slots.

        Relation rows of a model with ``reuse_layers`` train as they run: ``input_ids`` holds their prompts,
        ``companion_ids`` / ``companion_mask`` entity-pass rows of their texts, whose text states (T positions
        from ``companion_starts``, ``text_mask`` [B, T]) each prompt reads (:meth:`encode`, ``subject_mask``); L is
        prompts + T."""
        reused = None
        if companion_ids is not None:
            _, lower = self.encode(companion_ids, companion_mask)
            reused = self.text_states(lower, companion_starts, text_mask)
        q, k, sb, eb = self.project(input_ids, attention_mask, slot_positions, slot_mask, reused, text_mask,
                                    subject_mask)
        with torch.autocast(q.device.type, enabled=False):  # span logits in fp32 under a bf16 autocast encoder
            logits = self.span_logits(q.float(), k.float(), sb.float(), eb.float(), span_mask)
        out = {"logits": logits}
        if labels is not None:
            if logits.dim() == 4:
                real = slot_mask.reshape(-1).bool()
                flat = logits.shape[-1] ** 2
                out["loss"] = multilabel_categorical_crossentropy(logits.reshape(-1, flat)[real],
                                                                  labels.reshape(-1, flat)[real])
            else:
                b = logits.shape[0]
                out["loss"] = multilabel_categorical_crossentropy(logits.reshape(b, -1), labels.reshape(b, -1))
        return out


AutoConfig.register(GlobalPointerConfig.model_type, GlobalPointerConfig, exist_ok=True)
