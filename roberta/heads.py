"""Task models: the encoder (`self.roberta`) with a small head on top.

Each class loads and saves the Hugging Face checkpoint of the same name (head keys `lm_head.*`,
`classifier.*`, `qa_outputs.*` are HF's own), returns a small output object with `logits`
(question answering: `start_logits`, `end_logits`) and a `loss` when labels are given.
Labels equal to -100 are ignored. Every forward takes the encoder's keyword arguments too
(`token_type_ids` (B, T), 0 = first text, 1 = second, for a family that has them: BERT).

A family's checkpoints (FAMILIES in roberta/config.py) load into the same classes: BERT's
`BertForMaskedLM` is our RobertaForMaskedLM with its head under BERT's names (checkpoint.py's
HEAD_KEY_MAPS); BERT's sequence classifier reads the pooler (`pooled_classifier`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from roberta.checkpoint import PretrainedModel
from roberta.config import RobertaConfig
from roberta.model import Dropout, RobertaModel, WordEmbedding

IGNORE_INDEX = -100


@dataclass
class TaskOutput:
    """logits: (B, T, V) masked LM, (B, num_labels) classification, (B, T, num_labels) tagging,
    (B, num_choices) multiple choice; loss: a scalar when labels were given."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class QuestionAnsweringOutput:
    """start_logits, end_logits: (B, T), a score per token for being the answer's first/last."""

    start_logits: torch.Tensor
    end_logits: torch.Tensor
    loss: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class TaskModel(PretrainedModel):
    """The encoder under HF's `roberta.` prefix; subclasses add a head."""

    base_model_prefix = "roberta"

    def encode(self, input_ids, attention_mask, **kw):
        return self.roberta(input_ids, attention_mask, **kw)


# ---- masked language modelling -------------------------------------------------------------------


class MaskedLMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> decoder; the decoder's matrix is the word embedding matrix."""

    def __init__(self, config: RobertaConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.decoder.weight = word_embeddings.weight  # tied: one tensor, two names
        if isinstance(word_embeddings, WordEmbedding):  # the decoder's gradient is dense: the lookup's
            word_embeddings.sparse_grad = True  # rows are added to it, no (V, C) matrix of their own
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h: (..., C) -> logits (..., V)."""
        return self.decoder(self.layer_norm(F.gelu(self.dense(h)))) + self.bias


class RobertaForMaskedLM(TaskModel):
    """RoBERTa's pretraining model: predict the original token at each masked position."""

    tied_weights = {"lm_head.decoder.weight": "roberta.embeddings.word.weight"}
    key_aliases = {"lm_head.bias": ("lm_head.decoder.bias",)}

    def __init__(self, config: RobertaConfig):
        super().__init__()
        self.config = config
        self.roberta = RobertaModel(config, add_pooler=False)
        self.lm_head = MaskedLMHead(config, self.roberta.embeddings.word)
        self.lm_head.dense.apply(self._init_weights)  # not the decoder: it is the embedding matrix

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        sparse_logits: bool = False,
        **encoder_kw,
    ) -> TaskOutput:
        """
        Args:
            input_ids, attention_mask: (B, T); attention_mask 1 = real token.
            labels: (B, T) original ids at masked positions, -100 elsewhere.
            sparse_logits: compute logits only where labels != -100 and return them as (N, V),
                in the order of `labels[labels != -100]` — what pretraining needs (saves the
                (B, T, V) projection, the largest matmul of a small model).
        """
        if sparse_logits:
            if labels is None:
                raise ValueError("sparse_logits=True needs labels: logits are computed at labelled positions")
            keep = labels.ne(IGNORE_INDEX)  # (B, T)
            out = self.encode(input_ids, attention_mask, subset_mask=keep, **encoder_kw)
            logits = self.lm_head(out.last_hidden_state)  # (N, V): the last layer ran at `keep` only
            loss = F.cross_entropy(logits.float(), labels[keep]) if keep.any() else logits.sum() * 0
        else:
            out = self.encode(input_ids, attention_mask, **encoder_kw)
            logits = self.lm_head(out.last_hidden_state)  # (B, T, V)
            loss = None
            if labels is not None:
                loss = F.cross_entropy(
                    logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX
                )
        return TaskOutput(logits, loss, out.hidden_states, out.attentions)


# ---- sequence classification ------------------------------------------------------------------


class ClassificationHead(nn.Module):
    """<s> -> dropout -> dense -> tanh -> dropout -> out_proj."""

    def __init__(self, config: RobertaConfig):
        super().__init__()
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = Dropout(p)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h: (B, C), the <s> token's final state."""
        x = self.dropout(h)
        x = self.dropout(torch.tanh(self.dense(x)))
        return self.out_proj(x)  # (B, num_labels)


class PooledClassificationHead(nn.Module):
    """BERT's: the pooled first token (the encoder's pooler, tanh(W h_[CLS])) -> dropout -> out_proj."""

    def __init__(self, config: RobertaConfig):
        super().__init__()
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = Dropout(p)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """pooled: (B, C), the pooler's output."""
        return self.out_proj(self.dropout(pooled))  # (B, num_labels)


def problem_type(config: RobertaConfig, labels: torch.Tensor) -> str:
    """The config's problem_type, else HF's rule: 1 label = regression; integer labels = single-label."""
    if config.problem_type:
        return config.problem_type
    if config.num_labels == 1:
        return "regression"
    is_int = not labels.dtype.is_floating_point
    return "single_label_classification" if is_int else "multi_label_classification"


def classification_loss(config: RobertaConfig, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    kind = problem_type(config, labels)
    if kind == "regression":  # one target: (B,) labels; several: (B, num_labels)
        if config.num_labels == 1:
            return F.mse_loss(logits.squeeze(-1).float(), labels.float().view(-1))
        return F.mse_loss(logits.float(), labels.float())
    if kind == "single_label_classification":
        return F.cross_entropy(logits.float(), labels.long().view(-1), ignore_index=IGNORE_INDEX)
    if kind == "multi_label_classification":
        if labels.shape != logits.shape:
            raise ValueError(
                f"multi-label labels must be (batch, {config.num_labels}) of 0/1, got {tuple(labels.shape)}"
            )
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
    raise ValueError(
        f"unknown problem_type {kind!r}; use single_label_classification, multi_label_classification or regression"
    )


def first_position(x: torch.Tensor | None) -> torch.Tensor | None:
    """(B, T) bool, True at position 0 (the <s> token) of inputs x (B, T, ...); None for None."""
    if x is None or x.dim() < 2 or x.shape[1] == 0:
        return None  # the encoder's input checks say what is wrong
    first = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
    first[:, 0] = True
    return first


class RobertaForSequenceClassification(TaskModel):
    """One label per text (or text pair): single-label, multi-label or regression (see problem_type)."""

    def __init__(self, config: RobertaConfig):
        super().__init__()
        self.config = config
        pooled = config.family.pooled_classifier  # BERT's classifies the pooler's output
        self.roberta = RobertaModel(config, add_pooler=pooled)
        self.classifier = PooledClassificationHead(config) if pooled else ClassificationHead(config)
        self.classifier.apply(self._init_weights)

    def forward(self, input_ids=None, attention_mask=None, labels=None, **encoder_kw) -> TaskOutput:
        """labels: (B,) class ids; (B, num_labels) 0/1 for multi-label; (B,) floats for regression."""
        # the head reads <s> only, so the encoder's last layer runs at that position only
        first = first_position(input_ids if input_ids is not None else encoder_kw.get("inputs_embeds"))
        out = self.encode(input_ids, attention_mask, subset_mask=first, **encoder_kw)
        h = out.last_hidden_state  # (B, C): the first token's final state
        if self.roberta.pooler is not None:
            h = self.roberta.pooler(h[:, None])  # (B, C): tanh(W h)
        logits = self.classifier(h)  # (B, num_labels)
        loss = None if labels is None else classification_loss(self.config, logits, labels)
        return TaskOutput(logits, loss, out.hidden_states, out.attentions)


# ---- token classification (NER) ----------------------------------------------------------------


class RobertaForTokenClassification(TaskModel):
    """A label per token: dropout -> Linear(C, num_labels) on every position."""

    def __init__(self, config: RobertaConfig):
        super().__init__()
        self.config = config
        self.roberta = RobertaModel(config, add_pooler=False)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.classifier.apply(self._init_weights)

    def forward(self, input_ids=None, attention_mask=None, labels=None, **encoder_kw) -> TaskOutput:
        """labels: (B, T) label ids, -100 on specials, padding and non-first sub-tokens."""
        out = self.encode(input_ids, attention_mask, **encoder_kw)
        logits = self.classifier(self.dropout(out.last_hidden_state))  # (B, T, num_labels)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)
        return TaskOutput(logits, loss, out.hidden_states, out.attentions)


# ---- extractive question answering -------------------------------------------------------------


class RobertaForQuestionAnswering(TaskModel):
    """Scores each token as the answer span's start and end: Linear(C, 2)."""

    def __init__(self, config: RobertaConfig):
        super().__init__()
        self.config = config
        self.roberta = RobertaModel(config, add_pooler=False)
        if config.num_labels != 2:
            raise ValueError(
                f"question answering scores a start and an end: num_labels must be 2, got {config.num_labels}"
            )
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.qa_outputs.apply(self._init_weights)

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        **encoder_kw,
    ) -> QuestionAnsweringOutput:
        """start_positions, end_positions: (B,) token indices of the answer; 0 (<s>) when the window
        holds no answer. Positions outside the window are ignored, as in HF."""
        out = self.encode(input_ids, attention_mask, **encoder_kw)
        start, end = self.qa_outputs(out.last_hidden_state).unbind(-1)  # 2 x (B, T)
        loss = None
        if start_positions is not None and end_positions is not None:
            T = start.size(1)
            s, e = start_positions.clamp(0, T), end_positions.clamp(0, T)
            loss = (
                F.cross_entropy(start.float(), s, ignore_index=T)
                + F.cross_entropy(end.float(), e, ignore_index=T)
            ) / 2
        return QuestionAnsweringOutput(start, end, loss, out.hidden_states, out.attentions)


# ---- multiple choice ---------------------------------------------------------------------------


class RobertaForMultipleChoice(TaskModel):
    """Scores each of N candidate continuations: pooled <s> -> dropout -> Linear(C, 1)."""

    def __init__(self, config: RobertaConfig):
        super().__init__()
        self.config = config
        self.roberta = RobertaModel(config, add_pooler=True)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.classifier.apply(self._init_weights)

    def forward(self, input_ids=None, attention_mask=None, labels=None, **encoder_kw) -> TaskOutput:
        """input_ids, attention_mask (and token_type_ids): (B, num_choices, T); labels: (B,) the right choice."""
        if input_ids is None or input_ids.dim() != 3:
            raise ValueError("multiple choice takes input_ids of shape (batch, num_choices, length)")
        B, N, T = input_ids.shape
        flat_mask = None if attention_mask is None else attention_mask.reshape(B * N, T)
        if encoder_kw.get("token_type_ids") is not None:
            encoder_kw["token_type_ids"] = encoder_kw["token_type_ids"].reshape(-1, T)  # one row: all
        out = self.encode(input_ids.reshape(B * N, T), flat_mask, **encoder_kw)
        logits = self.classifier(self.dropout(out.pooler_output)).view(B, N)  # (B, num_choices)
        loss = None if labels is None else F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)
        return TaskOutput(logits, loss, out.hidden_states, out.attentions)
