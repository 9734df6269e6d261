"""The `roberta` command line: parses arguments and calls the Python API, nothing more.

Each command has an `add_<name>` function that declares its arguments and points at a `run_<name>`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from roberta.hub import DEFAULT_MODEL


def _model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"a checkpoint folder, a built-in model name or a Hub id (default: {DEFAULT_MODEL}, built in)",
    )


def _load_model(name: str, cls=None):
    from roberta.model import RobertaModel
    from roberta.tokenizer import Tokenizer

    return Tokenizer.from_pretrained(name), (cls or RobertaModel).from_pretrained(name)


# ---- encode ------------------------------------------------------------------------------------


def add_encode(sub) -> None:
    p = sub.add_parser("encode", help="tokenize a text and run the encoder over it")
    p.add_argument("text")
    _model_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--values", type=int, default=8, help="how many hidden values to print")
    p.set_defaults(func=run_encode)


def run_encode(args) -> None:
    import torch

    tok, model = _load_model(args.model)
    batch = tok(args.text, truncation=True, max_length=model.config.max_length, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    ids = batch["input_ids"][0].tolist()
    hidden = out.last_hidden_state
    result = {
        "tokens": tok.convert_ids_to_tokens(ids),
        "input_ids": ids,
        "last_hidden_state_shape": list(hidden.shape),
        "first_values": [round(v, 6) for v in hidden[0, 0, : args.values].tolist()],
    }
    if args.json:
        print(json.dumps(result))
        return
    print("tokens:   ", " ".join(result["tokens"]))
    print("input_ids:", " ".join(map(str, ids)))
    print("last_hidden_state:", "x".join(map(str, result["last_hidden_state_shape"])))
    print("first values (token 0):", " ".join(f"{v:+.4f}" for v in result["first_values"]))


# ---- main --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="roberta", description="RoBERTa from scratch: encode, tasks, training."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_encode(sub)
    # (other commands are added here, one add_<name>(sub) call each)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, TypeError, OSError) as e:  # the user's input was wrong: one clear line
        if os.environ.get("ROBERTA_DEBUG"):
            raise
        print(f"roberta {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
