"""Translation: a RoBERTa-initialised encoder-decoder ("roberta2roberta", Rothe et al., 2020;
any family's masked LM warm-starts it: "bert2bert", "xlmr2xlmr").

    model = EncoderDecoder.from_encoder_pretrained("roberta-small-books")   # both stacks from RoBERTa
    loss = model(input_ids, attention_mask, labels=labels).loss
    model.generate(input_ids, attention_mask, num_beams=4)                  # token ids per input

The encoder is RobertaModel. The decoder is the same Transformer with the two changes of Vaswani et
al. (2017): its self-attention is causal (a position sees itself and the positions before it), and
each layer gains a cross-attention block over the encoder's output, between self-attention and the
feed-forward network, with its own post-LN residual:

    x = LN(x + SelfAttn_causal(x));  x = LN(x + CrossAttn(x, encoder output));  x = LN(x + FFN(x))

Initialised from a RoBERTa checkpoint, the decoder's embeddings, self-attention, feed-forward
layers and LM head copy the checkpoint's (the MLM head predicts tokens, which is what a decoder
does); only cross-attention starts from random weights.

Targets: the decoder reads `<s> y1 ... yn` and predicts `y1 ... yn </s>`; generation starts from
`<s>` and stops at `</s>` (BERT: `[CLS]` and `[SEP]`). Checkpoints are transformers'
EncoderDecoderModel with the family's encoder and causal-LM decoder (RobertaModel and
RobertaForCausalLM, BertModel and BertLMHeadModel; config.json nests both configs); names map
through checkpoint.KEY_MAP and HEAD_KEY_MAPS like the encoder's.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from roberta import kernels
from roberta.atomic import write_text_atomic
from roberta.checkpoint import PretrainedModel, head_name, hf_names
from roberta.config import RobertaConfig
from roberta.heads import IGNORE_INDEX, MaskedLMHead, RobertaForMaskedLM, TaskOutput
from roberta.model import Embeddings, EncoderLayer, RobertaModel, position_ids_from_input_ids
from roberta.tokenizer import Tokenizer

KeyValue = tuple[torch.Tensor, torch.Tensor]  # keys and values, each (B, nh, S, hs)


@dataclass
class EncoderDecoderConfig:
    """The two stacks' configs and the generation tokens (HF's EncoderDecoderConfig layout)."""

    encoder: RobertaConfig
    decoder: RobertaConfig
    decoder_start_token_id: int = 0  # <s>
    eos_token_id: int = 2  # </s>
    pad_token_id: int = 1
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.encoder.hidden_size != self.decoder.hidden_size:
            raise ValueError(
                f"encoder and decoder must have one hidden size, got {self.encoder.hidden_size} "
                f"and {self.decoder.hidden_size}"
            )

    # what PretrainedModel reads (initialisation, error messages): the decoder's
    @property
    def initializer_range(self) -> float:
        return self.decoder.initializer_range

    @property
    def hidden_size(self) -> int:
        return self.decoder.hidden_size

    @property
    def num_hidden_layers(self) -> int:
        return self.decoder.num_hidden_layers

    @property
    def vocab_size(self) -> int:
        return self.decoder.vocab_size

    @property
    def max_length(self) -> int:
        """The longest source, in tokens (the encoder's position table)."""
        return self.encoder.max_length

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EncoderDecoderConfig:
        if "encoder" not in d or "decoder" not in d:
            raise ValueError(
                "this checkpoint is not an encoder-decoder (its config.json has no 'encoder' and "
                "'decoder' entries): train a translation model from it with `roberta finetune translate` "
                "(in Python: EncoderDecoder.from_encoder_pretrained)"
            )
        tokens = ("decoder_start_token_id", "eos_token_id", "pad_token_id")
        skip = {
            "encoder",
            "decoder",
            "model_type",
            "is_encoder_decoder",
            "architectures",
            "transformers_version",
        }
        return cls(
            RobertaConfig.from_dict(d["encoder"]),
            RobertaConfig.from_dict(d["decoder"]),
            **{k: d[k] for k in tokens if d.get(k) is not None},
            extra={k: v for k, v in d.items() if k not in skip and k not in tokens},
        )

    def to_dict(self) -> dict[str, Any]:
        decoder = {**self.decoder.to_dict(), "is_decoder": True, "add_cross_attention": True}
        return {
            **self.extra,
            "model_type": "encoder-decoder",
            "is_encoder_decoder": True,
            "encoder": self.encoder.to_dict(),
            "decoder": decoder,
            "decoder_start_token_id": self.decoder_start_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
        }

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> EncoderDecoderConfig:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); is the file corrupt?") from None

    def save_json(self, path: str | os.PathLike) -> None:
        write_text_atomic(Path(path), json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


class CrossAttention(nn.Module):
    """softmax(Q Kᵀ / √d_k) V with queries from the decoder and keys, values from the encoder's output."""

    def __init__(self, config: RobertaConfig):
        super().__init__()
        self.n_head, self.head_dim = config.num_attention_heads, config.head_dim
        self.q = nn.Linear(config.hidden_size, config.hidden_size)
        self.kv = nn.Linear(config.hidden_size, 2 * config.hidden_size)  # fused K and V
        self.out = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob

    def keys_values(self, memory: torch.Tensor) -> KeyValue:
        """memory (B, S, C) -> k, v each (B, nh, S, hs): computed once per input, reused at every step."""
        B, S, _ = memory.shape
        kv = self.kv(memory).view(B, S, 2, self.n_head, self.head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        return k, v

    def forward(self, x: torch.Tensor, memory_kv: KeyValue, memory_mask: torch.Tensor) -> torch.Tensor:
        """x (B, t, C); memory_mask (B, 1, 1, S) bool, True = a real source token. Returns (B, t, C)."""
        B, t, C = x.shape
        q = self.q(x).view(B, t, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, t, hs)
        dropout_p = self.dropout_p if self.training else 0.0
        y = kernels.scaled_dot_product_attention(q, *memory_kv, memory_mask, dropout_p)
        return self.out(y.transpose(1, 2).reshape(B, t, C))


class DecoderLayer(EncoderLayer):
    """An encoder layer (its self-attention used causally) plus cross-attention between
    self-attention and the feed-forward network; each block with a post-LN residual."""

    def __init__(self, config: RobertaConfig):
        super().__init__(config)
        self.cross = CrossAttention(config)
        self.norm_cross = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self, x: torch.Tensor, memory_kv: KeyValue, memory_mask: torch.Tensor, past: KeyValue | None = None
    ) -> tuple[torch.Tensor, KeyValue]:
        """x (B, t, C): the next t target positions; past: the keys and values of the positions
        before them (generation), or None (training: all positions at once). Returns x and the
        self-attention keys and values including x's, for the next step."""
        B, t, C = x.shape
        q, k, v = self.attn.heads(x)  # 3 x (B, nh, t, hs)
        if past is not None:
            if t != 1:
                raise ValueError("with cached keys and values, decode one position at a time")
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # (B, nh, S + 1, hs)
        dropout_p = self.attn.dropout_p if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, is_causal=past is None, dropout_p=dropout_p)
        a = self.attn.out(y.transpose(1, 2).reshape(B, t, C))
        x = self.norm1(x + self.dropout(a))
        x = self.norm_cross(x + self.dropout(self.cross(x, memory_kv, memory_mask)))
        x = self.norm2(x + self.dropout(self.ffn(x)))
        return x, (k, v)


class Decoder(nn.Module):
    """Embeddings, decoder layers and the LM head (its output matrix tied to the word embeddings)."""

    def __init__(self, config: RobertaConfig):
        super().__init__()
        self.pad_token_id = config.pad_token_id
        self.positions_after_pad = config.family.positions_after_pad
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.lm_head = MaskedLMHead(config, self.embeddings.word)

    def forward(
        self,
        input_ids: torch.Tensor,
        memory_kv: list[KeyValue],
        memory_mask: torch.Tensor,
        past: list[KeyValue] | None = None,
    ) -> tuple[torch.Tensor, list[KeyValue]]:
        """input_ids (B, t): all target positions (training) or the newest one (generation, with
        `past` the keys and values of the positions before it). Returns hidden states (B, t, C)
        and each layer's keys and values."""
        offset = 0 if past is None else past[0][0].shape[2]  # positions already decoded
        if self.positions_after_pad:  # RoBERTa's rule: real tokens count from pad + 1
            position_ids = position_ids_from_input_ids(input_ids, self.pad_token_id)
            if offset:
                position_ids = position_ids + offset * input_ids.ne(self.pad_token_id)
        else:  # BERT's: 0, 1, 2, ... (targets are right-padded, so real tokens come first)
            B, t = input_ids.shape
            position_ids = torch.arange(offset, offset + t, device=input_ids.device).expand(B, t)
        x = self.embeddings(input_ids, position_ids=position_ids)  # (B, t, C)
        present = []
        for i, layer in enumerate(self.layers):
            x, kv = layer(x, memory_kv[i], memory_mask, None if past is None else past[i])
            present.append(kv)
        return x, present


class EncoderDecoder(PretrainedModel):
    """A RoBERTa encoder and a RoBERTa decoder with cross-attention: sequence to sequence."""

    config_class = EncoderDecoderConfig
    hf_architecture = "EncoderDecoderModel"  # what transformers instantiates from config.json
    tied_weights = {"decoder.lm_head.decoder.weight": "decoder.embeddings.word.weight"}
    key_aliases = {"decoder.lm_head.bias": ("decoder.lm_head.decoder.bias",)}
    config: EncoderDecoderConfig  # type: ignore[assignment]

    def __init__(self, config: EncoderDecoderConfig):
        super().__init__()
        self.config = config
        self.encoder = RobertaModel(config.encoder, add_pooler=False)
        self.decoder = Decoder(config.decoder)
        self.decoder.apply(self._init_weights)

    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[list[KeyValue], torch.Tensor]:
        """The source, once: each decoder layer's cross-attention keys and values, and the mask
        (B, 1, 1, S) of real source tokens."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        memory = self.encoder(input_ids, attention_mask).last_hidden_state  # (B, S, C)
        memory_mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
        return [layer.cross.keys_values(memory) for layer in self.decoder.layers], memory_mask

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> TaskOutput:
        """
        Args:
            input_ids, attention_mask: (B, S) the source; attention_mask 1 = real token.
            decoder_input_ids: (B, T) the target read by the decoder, `<s> y1 ... yn` right-padded;
                default: `labels` shifted right behind decoder_start_token_id.
            labels: (B, T) the target to predict, `y1 ... yn </s>`, -100 at padding.
        Returns logits (B, T, V) and, with labels, the mean cross-entropy over labelled positions.
        """
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("pass decoder_input_ids or labels (the target)")
            decoder_input_ids = self.shift_right(labels)
        memory_kv, memory_mask = self.encode(input_ids, attention_mask)
        h, _ = self.decoder(decoder_input_ids, memory_kv, memory_mask)  # (B, T, C)
        logits = self.decoder.lm_head(h)  # (B, T, V)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)
        return TaskOutput(logits, loss)

    def shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """labels `y1 ... yn </s>` (-100 at padding) -> decoder input `<s> y1 ... yn` (padding: pad)."""
        shifted = labels.new_full(labels.shape, self.config.decoder_start_token_id)
        shifted[:, 1:] = labels[:, :-1]
        return shifted.masked_fill(shifted.eq(IGNORE_INDEX), self.config.pad_token_id)

    # ---- generation ------------------------------------------------------------------------------

    @torch.inference_mode()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        num_beams: int = 4,
        max_new_tokens: int | None = None,
        length_penalty: float = 1.0,
    ) -> list[list[int]]:
        """Beam search (greedy with num_beams=1): the best target of each source, as token ids
        without `<s>` and `</s>`.

        A hypothesis ends at `</s>`; its score is its summed log-probability divided by
        length**length_penalty (lengths count `</s>`). A source's search ends when it has
        num_beams ended hypotheses and no open beam can still beat the worst of them (at once, for
        length_penalty 0; else when the best open beam is below it). max_new_tokens: default each
        source's own length x 2 + 10 (so a result does not depend on its batchmates), at most the
        decoder's positions.
        """
        if num_beams < 1:
            raise ValueError(f"num_beams must be at least 1, got {num_beams}")
        was_training = self.training
        self.eval()
        try:
            return self._beam_search(input_ids, attention_mask, num_beams, max_new_tokens, length_penalty)
        finally:
            self.train(was_training)

    def _beam_search(self, input_ids, attention_mask, k, max_new_tokens, length_penalty) -> list[list[int]]:
        cfg, device = self.config, input_ids.device
        B = input_ids.shape[0]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        # each source's step limit: its own, so that its batchmates do not change its result
        lengths = attention_mask.sum(1).tolist()
        cap = cfg.decoder.max_length - 1  # <s> takes a position
        limits = [min(cap, n * 2 + 10 if max_new_tokens is None else max_new_tokens) for n in lengths]
        memory_kv, memory_mask = self.encode(input_ids, attention_mask)
        # each source k times: rows b*k .. b*k+k-1 are source b's beams
        memory_kv = [(key.repeat_interleave(k, 0), value.repeat_interleave(k, 0)) for key, value in memory_kv]
        memory_mask = memory_mask.repeat_interleave(k, 0)
        tokens = torch.full((B * k, 1), cfg.decoder_start_token_id, dtype=torch.long, device=device)
        scores = torch.full((B, k), float("-inf"), device=device)
        scores[:, 0] = 0.0  # the k beams start as one: expand the first only
        ended: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]  # (normalised score, ids)
        done = [False] * B
        past = None

        def normalised(score: float, length: int) -> float:
            return score / length**length_penalty

        for step in range(max(limits)):
            h, past = self.decoder(tokens[:, -1:], memory_kv, memory_mask, past)  # h (B * k, 1, C)
            logprobs = self.decoder.lm_head(h[:, -1]).float().log_softmax(-1)  # (B * k, V)
            V = logprobs.shape[-1]
            top, index = (scores[:, :, None] + logprobs.view(B, k, V)).view(B, k * V).topk(2 * k, dim=1)
            next_beam = torch.zeros(B, k, dtype=torch.long)  # (B, k) the beam each new beam extends
            next_token = torch.full((B, k), cfg.pad_token_id, dtype=torch.long)
            next_score = torch.full((B, k), float("-inf"))
            for b, (row_scores, row_index) in enumerate(zip(top.tolist(), index.tolist())):
                if done[b]:
                    continue
                n_open = 0
                for rank, (score, i) in enumerate(zip(row_scores, row_index)):
                    beam, token = divmod(i, V)
                    if token == cfg.eos_token_id:  # a hypothesis ends, if it is among the best k
                        if rank < k:
                            ended[b].append((normalised(score, step + 1), tokens[b * k + beam, 1:].tolist()))
                        continue
                    next_beam[b, n_open], next_token[b, n_open], next_score[b, n_open] = beam, token, score
                    n_open += 1
                    if n_open == k:
                        break
                ended[b] = sorted(ended[b], key=lambda e: -e[0])[:k]
                if step + 1 == limits[b]:  # out of steps: the open beams end here
                    for j in range(n_open):
                        hyp = tokens[b * k + next_beam[b, j], 1:].tolist() + [int(next_token[b, j])]
                        ended[b].append((normalised(float(next_score[b, j]), step + 1), hyp))
                    done[b] = True
                    continue
                # done when k have ended and the best open beam (its score only falls) cannot beat them
                best_open = normalised(float(next_score[b, 0]), step + 1)
                done[b] = len(ended[b]) == k and best_open <= ended[b][-1][0]
            if all(done):
                break
            rows = (torch.arange(B)[:, None] * k + next_beam).flatten().to(device)  # (B * k,)
            tokens = torch.cat([tokens[rows], next_token.flatten()[:, None].to(device)], dim=1)
            scores = next_score.to(device)
            past = [(key[rows], value[rows]) for key, value in past]
        return [max(e, key=lambda x: x[0])[1] if e else [] for e in ended]

    # ---- checkpoints -----------------------------------------------------------------------------

    def to_hf_names(self, key: str) -> tuple[str, ...]:
        """Ours -> transformers' EncoderDecoderModel names: `encoder.` + the encoder's; the
        decoder's body under its family's prefix (`decoder.roberta.`, `decoder.bert.`; its layers
        where the encoder's are) and its MLM head under the family's name (`decoder.lm_head.`,
        `decoder.cls.predictions.`), as RobertaForCausalLM and BertLMHeadModel hold them."""
        stack, rest = key.split(".", 1)
        if stack == "encoder":
            return tuple("encoder." + n for n in hf_names(rest))
        family = self.config.decoder.family
        if rest.startswith("lm_head."):
            return ("decoder." + head_name(rest, family.model_type),)
        body = "encoder." + rest if rest.startswith("layers.") else rest
        return tuple(f"decoder.{family.base_model_prefix}." + n for n in hf_names(body))

    def _hf_body_prefixes(self) -> tuple[str, ...]:
        decoder = f"decoder.{self.config.decoder.family.base_model_prefix}."
        return ("encoder.embeddings.", "encoder.encoder.", decoder)  # not the unused pooler

    @classmethod
    def from_encoder_pretrained(
        cls, name_or_path: str | os.PathLike, device: str | torch.device | None = None
    ) -> EncoderDecoder:
        """Both stacks from one masked-LM checkpoint of any family: the encoder is it; the decoder
        copies its embeddings, layers and MLM head, and gets fresh cross-attention. Targets start
        at the family's first token and end at its separator: `<s>`/`</s>`, BERT's `[CLS]`/`[SEP]`
        (read from the folder's tokenizer where config.json names none, as transformers' bert2bert)."""
        mlm = RobertaForMaskedLM.from_pretrained(name_or_path)
        start, end = mlm.config.bos_token_id, mlm.config.eos_token_id
        if start is None or end is None:
            tokenizer = Tokenizer.from_pretrained(name_or_path)
            start, end = tokenizer.cls_token_id, tokenizer.sep_token_id
        config = EncoderDecoderConfig(
            mlm.config,
            mlm.config,
            decoder_start_token_id=start,
            eos_token_id=end,
            pad_token_id=mlm.config.pad_token_id,
        )
        model = cls(config)
        model.encoder.load_state_dict(mlm.roberta.state_dict())
        model.decoder.embeddings.load_state_dict(mlm.roberta.embeddings.state_dict())
        for ours, theirs in zip(model.decoder.layers, mlm.roberta.encoder.layers):
            missing, unexpected = ours.load_state_dict(theirs.state_dict(), strict=False)
            assert not unexpected and all(k.startswith(("cross.", "norm_cross.")) for k in missing)
        model.decoder.lm_head.load_state_dict(mlm.lm_head.state_dict())
        return model.to(device).train()
