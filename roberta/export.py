"""ONNX export: a checkpoint as one ONNX graph, for onnxruntime or any other ONNX runtime.

    roberta export-onnx --model runs/sst2/best --out sst2-onnx
    # sst2-onnx/model.onnx, config.json and the tokenizer files

    export_checkpoint("runs/sst2/best", "sst2-onnx")   # the same in Python
    export_onnx(RobertaForSequenceClassification.from_pretrained("runs/sst2/best"), "model.onnx")

The graph takes `input_ids` and `attention_mask` (int64, (batch, length), 1 = real token; every
dimension free, the length up to the model's maximum; multiple choice: (batch, choice, length)),
and `token_type_ids` of the same shape (0 = first text, 1 = second) for a family that has them (BERT)
and returns what the task's model returns, as each task in roberta/tasks/ declares
(`Task.onnx_outputs`): `last_hidden_state` (RobertaModel), `logits` (masked LM; sequence
classification, (batch, num_labels); token classification; multiple choice, (batch, choices))
or `start_logits` and `end_logits` (question answering).

torch's exporter (`torch.onnx.export(dynamo=True)`; it needs the `onnx` and `onnxscript`
packages: `pip install -e ".[onnx]"`) traces the encoder's plain padded path: the unpadding of
packing.py sizes its work from the mask's values, which a graph of fixed shapes cannot. The model
switches to that path by itself while it is being exported (`torch.compiler.is_exporting()`).
`max_difference` runs the file in onnxruntime against the PyTorch model.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from roberta.architectures import architecture_class
from roberta.atomic import atomic_file
from roberta.collate import pad_batch
from roberta.tasks import TASKS, Task
from roberta.tokenizer import Tokenizer

INPUTS = ("input_ids", "attention_mask")  # and token_type_ids where the family has them: input_names
# The exportable model classes and the task that says how: its outputs and input dimensions.
EXPORTS: dict[type[nn.Module], Task] = {t.model_class: t for t in TASKS.values() if t.onnx_outputs}
# The graph's outputs for each model class: fields of what its forward returns.
OUTPUTS: dict[type[nn.Module], tuple[str, ...]] = {cls: t.onnx_outputs for cls, t in EXPORTS.items()}


def spec_of(model: nn.Module) -> Task:
    """The task whose model `model` is (its onnx_outputs and onnx_axes); TypeError if none exports."""
    if type(model) not in EXPORTS:
        names = ", ".join(cls.__name__ for cls in EXPORTS)
        raise TypeError(f"ONNX export takes one of {names}; got {type(model).__name__}")
    return EXPORTS[type(model)]


def input_names(model: nn.Module) -> tuple[str, ...]:
    """The graph's inputs: input_ids, attention_mask, and token_type_ids where the model's family
    has them (BERT)."""
    return INPUTS + (("token_type_ids",) if model.config.family.token_types else ())


class _Graph(nn.Module):
    """(input_ids, attention_mask[, token_type_ids]) -> the model's outputs as a tuple of tensors:
    what export takes."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        types = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, **types)
        return tuple(getattr(out, name) for name in OUTPUTS[type(self.model)])


def example_inputs(model: nn.Module) -> tuple[torch.Tensor, ...]:
    """A (2, 8) batch whose second row is padded, (2, 3, 8) for multiple choice: what the exporter
    traces with (each dimension a different size, so none is taken for another); with token types
    (1 on the last three real tokens of each row) where the family has them."""
    config = model.config
    ids = torch.randint(config.pad_token_id + 1, config.vocab_size, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    ids[1, 5:], mask[1, 5:] = config.pad_token_id, 0
    types = torch.zeros(2, 8, dtype=torch.long)
    types[0, 5:], types[1, 2:5] = 1, 1
    inputs = (ids, mask, types)[: len(input_names(model))]
    if len(spec_of(model).onnx_axes) == 3:  # (batch, choice, length)
        return tuple(x[:, None].expand(2, 3, 8).clone() for x in inputs)
    return inputs


def export_onnx(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write `model` (one of EXPORTS' classes) to `path` as an ONNX graph, in fp32, atomically.

    The model itself is left as it was (a CPU fp32 copy in eval mode is exported). Returns the path.
    """
    spec = spec_of(model)
    try:
        import onnxscript  # noqa: F401  (torch's exporter needs it; say so before it fails deep inside)
    except ImportError:
        raise ImportError(
            'ONNX export needs the onnx and onnxscript packages: pip install -e ".[onnx]"'
        ) from None
    graph = _Graph(copy.deepcopy(model).float().cpu()).eval()
    dims = [torch.export.Dim(axis) for axis in spec.onnx_axes[:-1]]
    dims.append(torch.export.Dim(spec.onnx_axes[-1], max=model.config.max_length))
    names = input_names(model)
    shapes = {name: dict(enumerate(dims)) for name in names}
    path = Path(path)
    with atomic_file(path) as tmp, torch.no_grad(), _quiet_exporter():
        torch.onnx.export(
            graph,
            example_inputs(model),
            str(tmp),
            input_names=list(names),
            output_names=list(spec.onnx_outputs),
            dynamic_shapes=shapes,
            dynamo=True,
            external_data=False,  # one file (up to 2 GB: roberta-large is 1.4 GB)
            verbose=False,
        )
    return path


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's chatter (its warnings about torch internals and missing torchvision)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def max_difference(
    path: str | os.PathLike,
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None = None,
) -> float:
    """The largest absolute difference between onnxruntime running `path` and `model` in PyTorch,
    over every output, at every position whose token is real (padding positions are free).
    token_type_ids: for a family that has them (BERT); None: zeros."""
    import onnxruntime as ort

    if "token_type_ids" in input_names(model) and token_type_ids is None:
        token_type_ids = torch.zeros_like(input_ids)
    inputs = dict(zip(input_names(model), (input_ids, attention_mask, token_type_ids)))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {name: x.numpy() for name, x in inputs.items()})
    with torch.no_grad():
        want = _Graph(copy.deepcopy(model).float().cpu()).eval()(**inputs)
    real = attention_mask.bool()
    worst = 0.0
    for g, w in zip(got, want):
        diff = (torch.from_numpy(g) - w).abs()
        if diff.dim() >= 2 and diff.shape[:2] == real.shape:  # per-token outputs: real tokens only
            diff = diff[real]
        worst = max(worst, float(diff.max()))
    return worst


def onnxruntime_difference(
    path: str | os.PathLike, model: nn.Module, tokenizer: Tokenizer, texts: list[str]
) -> float:
    """`max_difference` on `texts` (padded into one batch; for multiple choice, each text is a
    choice of one question)."""
    enc = tokenizer(texts)
    keys = [k for k in ("input_ids", "token_type_ids") if k in enc and k in input_names(model)]
    rows = [dict(zip(keys, row)) for row in zip(*(enc[k] for k in keys))]
    batch = pad_batch(rows, {"input_ids": tokenizer.pad_token_id, "token_type_ids": 0})
    inputs = [batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")]
    if len(spec_of(model).onnx_axes) == 3:
        inputs = [None if x is None else x[None] for x in inputs]  # (1, choices, T)
    return max_difference(path, model, *inputs)


def export_checkpoint(
    name_or_path: str | os.PathLike, out_dir: str | os.PathLike
) -> tuple[Path, nn.Module, Tokenizer]:
    """Export a checkpoint as the class its config.json names: out_dir/model.onnx, config.json and
    the tokenizer files. Returns (the .onnx path, the model, the tokenizer)."""
    cls = architecture_class(name_or_path)
    if cls not in EXPORTS:
        names = ", ".join(c.__name__ for c in EXPORTS)
        raise ValueError(f"{name_or_path} holds a {cls.__name__}; ONNX export takes one of {names}")
    model, tokenizer = cls.from_pretrained(name_or_path), Tokenizer.from_pretrained(name_or_path)
    out = Path(out_dir)
    path = export_onnx(model, out / "model.onnx")
    model.save_config(out)
    tokenizer.save_pretrained(out)
    return path, model, tokenizer
