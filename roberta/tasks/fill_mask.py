"""Fill-mask: the token at each `<mask>`, from the masked-LM head of pretraining.

    FillMask.from_pretrained("roberta-small-books").fill_mask("Paris is the <mask> of France.", top_k=3)
    roberta fill-mask "Paris is the <mask> of France." --top-k 3
    POST /fill-mask {"inputs": "Paris is the <mask> of France.", "top_k": 3}

Its training is pretraining (`roberta pretrain`, roberta/pretrain.py); `roberta evaluate mlm`
scores it. Rankings follow transformers' fill-mask pipeline (tests/test_predict.py).
"""

from __future__ import annotations

from typing import Any

import torch

from roberta.heads import RobertaForMaskedLM
from roberta.predict import Predictor, Texts, as_text_list
from roberta.tasks.common import Task, short


class FillMask(Predictor):
    """Predict the token at each `<mask>`: the masked-LM head of pretraining."""

    model_class = RobertaForMaskedLM

    def fill_mask(self, texts: Texts, top_k: int = 5, batch_size: int = 32) -> list:
        """The `top_k` most likely tokens at each `<mask>` of each text.

        Returns, per text, a list of `top_k` dicts {"token" (id), "token_str", "score" (probability),
        "sequence" (the text with this mask filled)}, best first; a text with several masks gets
        one such list per mask, in text order.
        """
        texts, single = as_text_list(texts)
        if not isinstance(top_k, int) or not 1 <= top_k <= self.model.config.vocab_size:
            raise ValueError(f"top_k must be an int in 1..{self.model.config.vocab_size}, got {top_k!r}")
        batch = self.encode(texts)
        mask, mask_id = self.tokenizer.mask_token, self.tokenizer.mask_token_id
        for i, ids in enumerate(batch["input_ids"]):
            found, written = ids.count(mask_id), texts[i].count(mask)
            if found and found == written:
                continue
            if written > found:  # a mask past the limit would be dropped, and the result's shape change
                raise ValueError(
                    f"text #{i}: {written - found} of its {written} {mask} lie beyond the first "
                    f"{self.max_length} tokens, which is all the model reads; shorten the text"
                )
            if found:
                continue
            raise ValueError(
                f"text #{i} has no {mask}: put {mask} where the word to predict goes, "
                f"e.g. 'Paris is the {mask} of France.'"
            )

        def top_tokens(ids: torch.Tensor, mask: torch.Tensor, **types) -> list:
            h = self.model.roberta(ids, mask, **types).last_hidden_state  # (B, T, C)
            at_mask = ids.eq(mask_id)  # (B, T)
            probs = self.model.lm_head(h[at_mask]).float().softmax(-1)  # (N masks, V): only where needed
            best = probs.topk(top_k, dim=-1)
            counts = at_mask.sum(1).tolist()
            return list(zip(best.values.cpu().split(counts), best.indices.cpu().split(counts)))

        tops = self.run(batch["input_ids"], batch_size, top_tokens, batch.get("token_type_ids"))
        results = [self._fill(texts[i], batch, i, *tops[i]) for i in range(len(texts))]
        return results[0] if single else results

    def _fill(self, text: str, batch, row: int, scores: torch.Tensor, ids: torch.Tensor) -> list:
        """One text's predictions: scores, ids (M masks, top_k) -> a list per mask (or the only list)."""
        tokens, offsets = batch["input_ids"][row], batch["offset_mapping"][row]
        spans = [span for t, span in zip(tokens, offsets) if t == self.tokenizer.mask_token_id]
        per_mask = []
        for (start, end), row_scores, row_ids in zip(spans, scores.tolist(), ids.tolist()):
            while start > 0 and text[start - 1].isspace():  # the token brings its own space, if any
                start -= 1
            words = [self.tokenizer.decode([t]) for t in row_ids]  # " Paris": a space is part of a token
            # " Paris" where a word begins, "ital" (BERT's "##ital") where it continues the one before
            inserts = [self.tokenizer.token_text(t) for t in row_ids]
            per_mask.append(
                [
                    {"token": t, "token_str": w, "score": p, "sequence": text[:start] + x + text[end:]}
                    for t, w, x, p in zip(row_ids, words, inserts, row_scores)
                ]
            )
        return per_mask[0] if len(per_mask) == 1 else per_mask


class FillMaskTask(Task):
    name = "fill-mask"
    predictor = FillMask
    architectures = ("RobertaForMaskedLM", "RobertaModel")  # a base checkpoint fills masks
    onnx_outputs = ("logits",)

    def add_arguments(self, p) -> None:
        super().add_arguments(p)
        p.add_argument("--top-k", type=int, default=5, help="predictions per mask (default: 5)")

    def options(self, args) -> dict[str, Any]:
        return {"top_k": args.top_k}

    def predict(self, predictor: FillMask, items: list, options: dict, batch_size: int) -> list:
        return predictor.fill_mask(items, batch_size=batch_size, **options)

    def json_line(self, item: str, result: list) -> dict:
        return {"text": item, "masks": _per_mask(result)}

    def show(self, items: list, results: list, options: dict) -> None:
        for text, result in zip(items, results):
            print(short(text))
            for m, predictions in enumerate(_per_mask(result)):
                print(f"  {f'mask #{m + 1}':10} {'score':>8}  {'token':15}  sequence")
                for p in predictions:
                    print(
                        f"  {'':10} {p['score']:8.4f}  {p['token_str'].strip()!r:15}  {short(p['sequence'])}"
                    )

    def request_fields(self) -> dict:
        return {
            "inputs": (
                str | list[str],
                dict(description="text(s) with <mask> where the word to predict goes"),
            ),
            "top_k": (int, dict(default=5, ge=1, description="predictions per mask")),
        }


def _per_mask(result: list) -> list[list[dict]]:
    """A text's result as one list per mask (a one-mask text's result is that mask's list)."""
    return result if isinstance(result[0], list) else [result]


TASK = FillMaskTask()
