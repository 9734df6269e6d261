"""Padded batches: the one place where rows of token ids become (B, T) tensors.

    pad_batch([{"input_ids": [0, 31414, 2], "labels": 1}, {"input_ids": [0, 2], "labels": 0}],
              {"input_ids": 1})
    # {"input_ids": (2, 3) padded with 1, "attention_mask": (2, 3) 1 = real token, "labels": (2,)}

Every list-valued key is right-padded to its own longest row with the value `pad_values` gives it
(ids with the tokenizer's pad id, labels with -100 so the loss ignores them, token types with 0);
scalar keys are stacked into (B,). `attention_mask` is made from the rows of `input_ids`.
Inference (roberta/predict.py) and fine-tuning (roberta/tasks/) both build their batches here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

Batch = dict[str, torch.Tensor]


def pad_batch(
    rows: Sequence[Mapping[str, Any]],
    pad_values: Mapping[str, int],
    device: str | torch.device | None = None,
) -> Batch:
    """Stack `rows` (dicts of token lists and scalars, all with the same keys) into tensors.

    pad_values: the padding value of each list-valued key; a list-valued key missing from it is
    an error (a silent default would be a wrong label or id). Returns int64 tensors: lists as
    (B, T_key), scalars as (B,), and attention_mask (B, T) for input_ids (1 = real token).
    """
    if not rows:
        raise ValueError("pad_batch needs at least one row")
    keys = list(rows[0])
    batch: Batch = {}
    for key in keys:
        values = [row[key] for row in rows]
        if not isinstance(values[0], (list, tuple)):
            batch[key] = torch.tensor(values, dtype=torch.long)  # (B,)
            continue
        if key not in pad_values:
            raise KeyError(f"no padding value for {key!r}: pass it in pad_values")
        T = max(len(v) for v in values)
        out = torch.full((len(values), T), pad_values[key], dtype=torch.long)  # (B, T)
        for b, v in enumerate(values):
            out[b, : len(v)] = torch.as_tensor(v, dtype=torch.long)
        batch[key] = out
        if key == "input_ids":
            lengths = torch.tensor([len(v) for v in values])
            batch["attention_mask"] = (torch.arange(T)[None, :] < lengths[:, None]).long()  # (B, T)
    if device is not None:
        batch = {k: v.to(device) for k, v in batch.items()}
    return batch
