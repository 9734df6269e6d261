"""Translation: text to text with an encoder-decoder whose both stacks start from a RoBERTa checkpoint.

    finetune_translation(("train.en", "train.de"), ("val.en", "val.de"), "roberta-small-books",
                         TrainConfig(out_dir="runs/translate"))
    evaluate_translation("runs/translate/best", "test.en", "test.de")   # {"bleu", "chrf"}
    Translator.from_pretrained("runs/translate/best").translate("A dog runs in the park.", num_beams=4)

    roberta finetune translate --train train.en train.de --dev val.en val.de --out runs/translate
    roberta translate "A dog runs in the park." --model runs/translate/best
    POST /translate {"inputs": "A dog runs in the park.", "num_beams": 4}

Data: two line-aligned text files (Multi30k's train.en and train.de). The model is roberta/
seq2seq.py's EncoderDecoder (transformers' EncoderDecoderModel layout); BLEU and chrF are
sacrebleu's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from roberta.architectures import saved_as
from roberta.atomic import write_text_atomic
from roberta.metrics import bleu
from roberta.predict import Predictor, Texts, as_text_list
from roberta.seq2seq import EncoderDecoder
from roberta.tasks.common import (
    Feature,
    Task,
    add_data_files,
    load_finetuned,
    max_length_for,
    read_text,
    require,
    run_finetuning,
    short,
)
from roberta.tokenizer import Tokenizer
from roberta.train import TrainConfig, TrainResult, seed_everything

# ---- data ------------------------------------------------------------------------------------------


@dataclass
class Pair:
    source: str
    target: str
    line: int  # 1-based line number in both files


def read_parallel(source_file: str | os.PathLike, target_file: str | os.PathLike) -> list[Pair]:
    """Line-aligned text files (e.g. Multi30k's train.en and train.de): line i of the target file
    translates line i of the source file. Lines blank in both files are skipped."""
    sources = read_text(Path(source_file)).splitlines()
    targets = read_text(Path(target_file)).splitlines()
    if len(sources) != len(targets):
        raise ValueError(
            f"{source_file} has {len(sources)} lines but {target_file} has {len(targets)}; "
            "the files must be line-aligned (line i of one translates line i of the other)"
        )
    pairs = []
    for n, (src, tgt) in enumerate(zip(sources, targets), start=1):
        if not src.strip() and not tgt.strip():
            continue
        if not src.strip() or not tgt.strip():
            blank = source_file if not src.strip() else target_file
            raise ValueError(f"line {n} is blank in {blank} but not in the other file; are they aligned?")
        pairs.append(Pair(src.strip(), tgt.strip(), n))
    return pairs


def translation_features(tokenizer: Tokenizer, pairs: Sequence[Pair], max_length: int) -> list[Feature]:
    """Per pair: the source ids `<s> x </s>`, the decoder's input `<s> y` and the labels `y </s>`
    (the target shifted by one), each at most max_length tokens."""
    sources = tokenizer([p.source for p in pairs], truncation=True, max_length=max_length)["input_ids"]
    targets = tokenizer([p.target for p in pairs], truncation=True, max_length=max_length + 1)["input_ids"]
    return [
        {"input_ids": src, "decoder_input_ids": tgt[:-1], "labels": tgt[1:]}
        for src, tgt in zip(sources, targets)
    ]


def translation_scores(
    model: nn.Module, tokenizer: Tokenizer, pairs: Sequence[Pair], batch_size: int = 32, num_beams: int = 4
) -> tuple[dict[str, float], list[str]]:
    """BLEU and chrF of the model's translations of the sources against the targets; and the
    translations, in order."""
    hypotheses = Translator(model, tokenizer).translate(
        [p.source for p in pairs], num_beams, batch_size=batch_size
    )
    return bleu(hypotheses, [p.target for p in pairs]), hypotheses


# ---- fine-tuning and evaluation --------------------------------------------------------------------


def finetune_translation(
    train_files: tuple[str | os.PathLike, str | os.PathLike],
    dev_files: tuple[str | os.PathLike, str | os.PathLike],
    model: str | os.PathLike,
    cfg: TrainConfig,
    *,
    max_length: int | None = None,
    num_beams: int = 1,
    resume: bool = False,
) -> TrainResult:
    """Train a translation model on line-aligned (source, target) files.

    model: a RoBERTa checkpoint (both stacks start from it: EncoderDecoder.from_encoder_pretrained)
    or an encoder-decoder checkpoint (training continues). The dev pairs are translated with
    num_beams beams (1: greedy, fast) at each evaluation and scored by BLEU, which picks best/.
    """
    require("sacrebleu", "translate", "scoring translations (BLEU, chrF)")
    train_pairs, dev_pairs = read_parallel(*train_files), read_parallel(*dev_files)
    tokenizer = Tokenizer.from_pretrained(model)
    seed_everything(cfg.seed)  # cross-attention's initial weights
    if saved_as(model, EncoderDecoder):
        net = EncoderDecoder.from_pretrained(model).train()
    else:
        net = EncoderDecoder.from_encoder_pretrained(model)
    length = max_length_for(tokenizer, net.config.decoder, max_length)
    features = translation_features(tokenizer, train_pairs, length)

    def eval_fn(m: nn.Module) -> dict[str, float]:
        return translation_scores(m, tokenizer, dev_pairs, cfg.batch_size, num_beams)[0]

    return run_finetuning(net, tokenizer, features, cfg, eval_fn, "bleu", resume)


def evaluate_translation(
    model: str | os.PathLike,
    source_file: str | os.PathLike,
    target_file: str | os.PathLike,
    *,
    num_beams: int = 4,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    output_file: str | os.PathLike | None = None,
) -> dict[str, float]:
    """BLEU and chrF of an encoder-decoder checkpoint on line-aligned files; the translations go
    to output_file (one per line) if given."""
    require("sacrebleu", "translate", "scoring translations (BLEU, chrF)")
    tokenizer, net = load_finetuned(model, EncoderDecoder, device, dtype)
    scores, hypotheses = translation_scores(
        net, tokenizer, read_parallel(source_file, target_file), batch_size, num_beams
    )
    if output_file is not None:
        write_text_atomic(Path(output_file), "".join(h + "\n" for h in hypotheses))
    return scores


# ---- inference -------------------------------------------------------------------------------------


class Translator(Predictor):
    """Text to text with an encoder-decoder (roberta/seq2seq.py), by beam search."""

    model_class = EncoderDecoder

    def translate(
        self,
        texts: Texts,
        num_beams: int = 4,
        max_new_tokens: int | None = None,
        length_penalty: float = 1.0,
        batch_size: int = 32,
    ) -> str | list[str]:
        """The translation of each text (see EncoderDecoder.generate for the search's arguments)."""
        texts, single = as_text_list(texts)
        batch = self.encode(texts)

        def generate(ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
            out = self.model.generate(ids, mask, num_beams, max_new_tokens, length_penalty)
            return [self.tokenizer.decode(row, skip_special_tokens=True).strip() for row in out]

        results = self.run(batch["input_ids"], batch_size, generate)
        return results[0] if single else results


# ---- the task --------------------------------------------------------------------------------------


class TranslateTask(Task):
    name = "translate"
    predictor = Translator
    architectures = ("EncoderDecoderModel",)
    head_required = True
    finetune_help = "translation: line-aligned source and target text files"
    evaluate_help = "BLEU and chrF on line-aligned source and target files"

    def add_arguments(self, p) -> None:
        super().add_arguments(p)
        p.add_argument("--num-beams", type=int, default=4, help="beam width (default 4; 1: greedy)")

    def options(self, args) -> dict[str, Any]:
        return {"num_beams": args.num_beams}

    def predict(self, predictor: Translator, items: list, options: dict, batch_size: int) -> list:
        return predictor.translate(items, batch_size=batch_size, **options)

    def json_line(self, item: str, result: str) -> dict:
        return {"text": item, "translation": result}

    def show(self, items: list, results: list, options: dict) -> None:
        for text, translation in zip(items, results):
            print(f"{short(text)}\n  -> {translation}")

    def request_fields(self) -> dict:
        return {
            **super().request_fields(),
            "num_beams": (int, dict(default=4, ge=1, le=32, description="beam width (1: greedy)")),
        }

    def add_finetune_arguments(self, p) -> None:
        add_data_files(p, nargs=2, metavar=("SOURCE", "TARGET"))
        p.add_argument(
            "--num-beams", type=int, default=1, help="beams for the dev translations (default 1: greedy)"
        )

    def finetune(self, args, cfg: TrainConfig) -> TrainResult:
        return finetune_translation(
            args.train, args.dev, args.model, cfg, max_length=args.max_length, num_beams=args.num_beams,
            resume=args.resume,
        )  # fmt: skip

    def add_evaluate_arguments(self, p) -> None:
        p.add_argument("--data", required=True, nargs=2, metavar=("SOURCE", "TARGET"), help="files to score")
        p.add_argument("--num-beams", type=int, default=4, help="default 4")
        p.add_argument("--output", metavar="FILE", help="also write the translations here, one per line")

    def evaluate(self, args, dtype) -> dict[str, float]:
        return evaluate_translation(
            args.model, *args.data, num_beams=args.num_beams, batch_size=args.batch_size, dtype=dtype,
            output_file=args.output,
        )  # fmt: skip


TASK = TranslateTask()
