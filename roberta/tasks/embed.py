"""Sentence embeddings: one vector per text, pooled from the encoder's last layer.

    Embedder.from_pretrained("roberta-small-books").embed(["a text", "another"], pooling="mean")  # (2, C)
    roberta embed --jsonl docs.jsonl --field body --json > vectors.jsonl
    POST /embed {"inputs": ["a text", "another"], "pooling": "mean", "normalize": true}

Any checkpoint's encoder embeds (a base, masked-LM or task checkpoint: the head is not used), so
`roberta serve --task embed` serves any of them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from roberta.config import RobertaConfig
from roberta.model import RobertaModel
from roberta.predict import Predictor, Texts, as_text_list
from roberta.tasks.common import Task, short


class EncoderOnly(RobertaModel):
    """The encoder of any checkpoint (base or task) without the <s> pooler, which pooling here does
    not use."""

    def __init__(self, config: RobertaConfig):
        super().__init__(config, add_pooler=False)


class Embedder(Predictor):
    """One vector per text, from the encoder's last layer."""

    model_class = EncoderOnly

    def embed(
        self, texts: Texts, pooling: str = "mean", normalize: bool = True, batch_size: int = 32
    ) -> torch.Tensor:
        """Embeddings: (C,) for one text, (N, C) for a list, on the CPU in fp32.

        pooling: "mean" (the average over the text's tokens, <s> and </s> included) or "cls" (the
            <s> token's vector). normalize: scale each to unit length (cosine similarity = dot product).
        """
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        texts, single = as_text_list(texts)
        batch = self.encode(texts)

        def pool(ids: torch.Tensor, mask: torch.Tensor) -> list:
            h = self.model(ids, mask).last_hidden_state.float()  # (B, T, C)
            if pooling == "cls":
                v = h[:, 0]
            else:
                m = mask.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
                v = (h * m).sum(1) / m.sum(1)  # (B, C)
            return list((F.normalize(v, dim=-1) if normalize else v).cpu())

        vectors = torch.stack(self.run(batch["input_ids"], batch_size, pool))  # (N, C)
        return vectors[0] if single else vectors


class EmbedTask(Task):
    name = "embed"
    help = "one vector per text (mean or <s> pooling of the last layer)"
    predictor = Embedder
    model_class = RobertaModel  # what a base checkpoint exports as
    onnx_outputs = ("last_hidden_state",)

    def add_arguments(self, p) -> None:
        super().add_arguments(p)
        p.add_argument("--pooling", choices=["mean", "cls"], default="mean", help="default: mean")
        p.add_argument(
            "--no-normalize", action="store_true", help="keep the raw length (default: unit vectors)"
        )

    def options(self, args) -> dict[str, Any]:
        return {"pooling": args.pooling, "normalize": not args.no_normalize}

    def predict(self, predictor: Embedder, items: list, options: dict, batch_size: int) -> list:
        return predictor.embed(items, batch_size=batch_size, **options).tolist()

    def json_line(self, item: str, result: list[float]) -> dict:
        return {"text": item, "embedding": result}

    def show(self, items: list, results: list, options: dict) -> None:
        print(f"{len(items)} x {len(results[0])} embeddings ({options['pooling']} pooling)")
        for text, v in zip(items, results):
            print(f"  [{' '.join(f'{x:+.3f}' for x in v[:4])} …]  {short(text)}")

    def request_fields(self) -> dict:
        return {
            **super().request_fields(),
            "pooling": (
                str,
                dict(default="mean", pattern="^(mean|cls)$", description="mean or cls (<s>) pooling"),
            ),
            "normalize": (bool, dict(default=True, description="unit-length vectors")),
        }


TASK = EmbedTask()
