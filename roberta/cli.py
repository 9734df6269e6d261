"""The `roberta` command line: parses arguments and calls the Python API, nothing more.

Each command has an `add_<name>` function that declares its arguments and points at a `run_<name>`.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys

from roberta.hub import DEFAULT_MODEL


def positive_int(value: str) -> int:
    """argparse type: an integer of at least 1 (a batch size of 0 is refused here, by name)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"a checkpoint folder, a built-in model name or a Hub id (default: {DEFAULT_MODEL}, built in)",
    )


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _load_model(name: str, cls=None):
    from roberta.model import RobertaModel
    from roberta.tokenizer import Tokenizer

    return Tokenizer.from_pretrained(name), (cls or RobertaModel).from_pretrained(name)


# ---- encode ------------------------------------------------------------------------------------


def add_encode(p: argparse.ArgumentParser) -> None:
    p.add_argument("text")
    _model_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--values", type=positive_int, default=8, help="how many hidden values to print")
    p.set_defaults(func=run_encode)


def run_encode(args) -> None:
    import torch

    tok, model = _load_model(args.model)
    limit = min(model.config.max_length, tok.model_max_length)
    batch = tok(args.text, truncation=True, max_length=limit, return_tensors="pt")
    if batch.encodings[0].overflowing:
        _warn(f"the text is longer than the model's {limit} tokens; only the first {limit} were encoded")
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


# ---- tokenizer train ---------------------------------------------------------------------------


def add_tokenizer(p: argparse.ArgumentParser) -> None:
    tsub = p.add_subparsers(dest="tokenizer_command", required=True, metavar="ACTION")
    t = tsub.add_parser("train", help="train a byte-level BPE with RoBERTa's special tokens")
    t.add_argument("--corpus", nargs="+", required=True, metavar="FILE", help="UTF-8 text files")
    t.add_argument("--vocab-size", type=int, required=True, help="vocabulary size, specials included")
    t.add_argument("--min-frequency", type=int, default=2, help="fewest occurrences for a merge")
    t.add_argument("--out", required=True, help="folder to write vocab.json, merges.txt, tokenizer.json")
    t.add_argument("--overwrite", action="store_true", help="replace a tokenizer or model already in --out")
    t.set_defaults(func=run_tokenizer_train)


def run_tokenizer_train(args) -> None:
    from pathlib import Path

    from roberta.hub import TOKENIZER_FILES
    from roberta.pretrain import corpus_files
    from roberta.tokenizer import Tokenizer

    out = Path(args.out)
    present = sorted(f for f in ["config.json", *TOKENIZER_FILES] if (out / f).exists())
    if present and not args.overwrite:
        raise ValueError(
            f"{out} already holds {', '.join(present)}: a new tokenizer would replace the one "
            "those files belong to; choose another --out, or pass --overwrite"
        )
    tok = Tokenizer.train(corpus_files(args.corpus), args.vocab_size, min_frequency=args.min_frequency)
    folder = tok.save_pretrained(args.out)
    print(f"tokenizer with {len(tok)} tokens written to {folder}")


# ---- pretrain ----------------------------------------------------------------------------------


def add_pretrain(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", nargs="+", required=True, metavar="FILE", help="UTF-8 text files to train on")
    p.add_argument("--heldout", nargs="*", default=[], metavar="FILE", help="text files for evaluation")
    p.add_argument("--config", help="small | base | a config.json (default: small; not with --init-from)")
    p.add_argument(
        "--init-from",
        metavar="MODEL",
        help="continue pretraining this model (name or folder: its weights and config) on the corpus",
    )
    p.add_argument(
        "--tokenizer",
        help="tokenizer folder (see `roberta tokenizer train`); default with --init-from: the model's",
    )
    p.add_argument(
        "--init",
        default="roberta",
        choices=["roberta", "neighbour-heads"],
        help="start from RoBERTa's random init, or with two layer-0 heads attending to the previous "
        "and next token (gets small models past the bag-of-words plateau sooner)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="run folder: last/, best/ (lowest --heldout loss), metrics.jsonl, metrics.png",
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        help="stop after this much wall-clock time (the whole run: resumes included; the final evaluation fits in it)",
    )
    p.add_argument("--max-steps", type=positive_int, help="optimizer steps (the schedule's length)")
    p.add_argument("--epochs", type=float, help="passes over the corpus, if --max-steps is not given")
    p.add_argument("--batch-size", type=positive_int, default=64, help="blocks per micro-batch per process")
    p.add_argument("--grad-accum", type=positive_int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--lr", type=float, default=6e-4, help="peak learning rate")
    p.add_argument("--warmup-ratio", type=float, default=0.06, help="share of steps spent warming up")
    p.add_argument("--max-length", type=int, help="tokens per block (default: what the config holds)")
    p.add_argument("--eval-every", type=positive_int, default=500, help="evaluate on --heldout every N steps")
    p.add_argument("--save-every-minutes", type=float, default=10.0, help="checkpoint interval")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--cache-dir", help="where tokenized corpora are cached (default ~/.cache/roberta/tokens)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="processes building batches ahead (default 0)")
    _run_folder_args(p)
    p.add_argument("--compile", action="store_true", help="torch.compile the model (slow start; for GPUs)")
    p.set_defaults(func=run_pretrain)


def _run_folder_args(p: argparse.ArgumentParser) -> None:
    """--resume and --overwrite: what to do with a run folder that already holds a run."""
    p.add_argument("--resume", action="store_true", help="continue the run in OUT from OUT/last")
    p.add_argument("--overwrite", action="store_true", help="delete the run already in OUT and start again")


def _check_out_apart_from(out: str, *inputs: str | None) -> None:
    """ValueError if a run folder `out` holds one of the command's inputs: deleting or rewriting
    its checkpoints would destroy what the run reads."""
    from pathlib import Path

    run = Path(out).expanduser().resolve()
    for name in inputs:
        if name is None or not Path(name).expanduser().exists():
            continue  # a built-in name or Hub id is not inside a run folder
        source = Path(name).expanduser().resolve()
        if source == run or run in source.parents:
            raise ValueError(
                f"--out {out} holds the input {name}: the run would write over what it reads; "
                "choose another --out (or copy the input elsewhere first)"
            )


def _config_arg(value: str):
    from roberta.config import RobertaConfig

    if value in ("small", "base"):
        return getattr(RobertaConfig, value)()
    return RobertaConfig.from_json_file(value)


def run_pretrain(args) -> None:
    from roberta.pretrain import default_cache_dir, pretrain
    from roberta.tokenizer import Tokenizer
    from roberta.train import TrainConfig

    if args.max_steps is None and args.epochs is None:
        raise ValueError("give --max-steps or --epochs: the learning-rate schedule needs a length")
    cfg = TrainConfig(
        out_dir=args.out,
        lr=args.lr,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        max_steps=args.max_steps,
        max_epochs=args.epochs,
        max_minutes=args.max_minutes,
        warmup_ratio=args.warmup_ratio,
        eval_every=args.eval_every,
        save_every_minutes=args.save_every_minutes,
        precision=args.precision,
        seed=args.seed,
        num_workers=args.workers,
        compile=args.compile,
        overwrite=args.overwrite,
    )
    _check_out_apart_from(args.out, args.init_from, args.tokenizer, *args.corpus, *args.heldout)
    if args.init_from and (args.config or args.init != "roberta"):
        raise ValueError(
            "--init-from starts from a pretrained model's config and weights: drop --config/--init"
        )
    if not (args.tokenizer or args.init_from):
        raise ValueError("give --tokenizer DIR (see `roberta tokenizer train`)")
    tok = Tokenizer.from_pretrained(args.tokenizer or args.init_from)
    result = pretrain(
        args.corpus,
        tok,
        None if args.init_from else _config_arg(args.config or "small"),
        cfg,
        heldout=args.heldout,
        max_length=args.max_length,
        cache_dir=args.cache_dir or default_cache_dir(),
        resume=args.resume,
        init_from=args.init_from,
        init=args.init,
    )
    if os.environ.get("RANK", "0") == "0":  # once under torchrun
        print(json.dumps({"out": f"{args.out}/last", **vars(result)}))


# ---- evaluate ----------------------------------------------------------------------------------


def add_evaluate(p: argparse.ArgumentParser) -> None:
    esub = p.add_subparsers(dest="evaluate_command", required=True, metavar="TASK")
    add_evaluate_mlm(esub)
    add_evaluate_tasks(esub)


def add_evaluate_mlm(esub) -> None:
    p = esub.add_parser("mlm", help="masked-token loss, accuracy and perplexity on text files")
    _model_arg(p)
    p.add_argument("--corpus", nargs="+", required=True, metavar="FILE", help="held-out UTF-8 text files")
    p.add_argument("--max-length", type=int, help="tokens per block (default: what the model holds)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--seed", type=int, default=1234, help="seed of the (fixed) masks")
    _evaluate_dtype_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run_evaluate_mlm)


def _evaluate_dtype_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dtype",
        choices=["fp32", "int8"],
        default="fp32",
        help="int8: score the opt-in int8 CPU inference, to see what it costs (default: fp32)",
    )


def run_evaluate_mlm(args) -> None:
    from roberta.heads import RobertaForMaskedLM
    from roberta.pretrain import Blocks, Masker, evaluate_mlm, tokenize_corpus
    from roberta.quantize import set_dtype

    tok, model = _load_model(args.model, RobertaForMaskedLM)
    model = set_dtype(model, _dtype(args.dtype))
    max_length = args.max_length or model.config.max_length
    blocks = Blocks(tokenize_corpus(args.corpus, tok), max_length, tok.bos_token_id)
    masker = Masker.for_tokenizer(tok)
    metrics = evaluate_mlm(model, blocks, masker, tok.pad_token_id, args.batch_size, args.seed)
    if args.json:
        print(json.dumps(metrics))
        return
    print(f"masked tokens: {metrics['masked_tokens']}")
    print(f"loss:       {metrics['loss']:.4f}")
    print(f"accuracy:   {metrics['accuracy']:.4f}")
    print(f"perplexity: {metrics['perplexity']:.2f}")


# ---- finetune, evaluate <task> -------------------------------------------------------------------


def add_finetune(p: argparse.ArgumentParser) -> None:
    from roberta.tasks import TASKS

    tuned = [t for t in TASKS.values() if t.finetune_help]
    fsub = p.add_subparsers(dest="finetune_command", required=True, metavar="TASK")
    for task in tuned:
        t = fsub.add_parser(task.name, help=task.finetune_help)
        task.add_finetune_arguments(t)
        _model_arg(t)
        t.add_argument("--out", required=True, help="run folder: best/, last/, metrics.jsonl, metrics.png")
        _finetune_train_args(t)
        t.set_defaults(func=run_finetune, task=task.name)
    for task in tuned:
        task.add_finetune_tools(fsub)


def _finetune_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=float, default=3.0, help="passes over the training data (default 3)")
    p.add_argument("--max-steps", type=positive_int, help="optimizer steps instead of --epochs")
    p.add_argument(
        "--max-minutes",
        type=float,
        help="stop after this much wall-clock time (the whole run: resumes included; the final evaluation fits in it)",
    )
    p.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (default 5e-5)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="examples per micro-batch per process")
    p.add_argument("--grad-accum", type=positive_int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--max-length", type=int, help="tokens per input (default: what the model holds)")
    p.add_argument("--eval-every", type=positive_int, help="evaluate every N steps (default: each epoch)")
    p.add_argument("--patience", type=int, help="stop after N evaluations without a better dev score")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="processes building batches ahead (default 0)")
    p.add_argument(
        "--save-every-minutes", type=float, default=10.0, help="write OUT/last this often (default 10)"
    )
    _run_folder_args(p)
    p.add_argument("--compile", action="store_true", help="torch.compile the model (slow start; for GPUs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_finetune(args) -> None:
    from roberta.tasks import get_task
    from roberta.train import TrainConfig

    cfg = TrainConfig(
        out_dir=args.out,
        lr=args.lr,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        max_steps=args.max_steps,
        max_epochs=None if args.max_steps else args.epochs,
        max_minutes=args.max_minutes,
        eval_every=args.eval_every,
        patience=args.patience,
        seed=args.seed,
        num_workers=args.workers,
        compile=args.compile,
        progress=not args.no_progress,
        save_every_minutes=args.save_every_minutes,
        overwrite=args.overwrite,
    )
    data = [f for files in (args.train, args.dev) for f in ([files] if isinstance(files, str) else files)]
    _check_out_apart_from(args.out, args.model, *data)
    result = get_task(args.task).finetune(args, cfg)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary
        print(json.dumps({"best": f"{args.out}/best", "last": f"{args.out}/last", **vars(result)}))


def add_evaluate_tasks(esub) -> None:
    from roberta.tasks import TASKS

    for task in TASKS.values():
        if not task.evaluate_help:
            continue
        p = esub.add_parser(task.name, help=task.evaluate_help)
        p.add_argument("--model", required=True, help="a fine-tuned checkpoint folder (e.g. OUT/best)")
        task.add_evaluate_arguments(p)
        p.add_argument("--batch-size", type=positive_int, default=32)
        _evaluate_dtype_arg(p)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=run_evaluate_task, task=task.name)


def run_evaluate_task(args) -> None:
    from roberta.tasks import get_task

    metrics = get_task(args.task).evaluate(args, _dtype(args.dtype))
    if args.json:
        print(json.dumps(metrics))
        return
    for key, value in metrics.items():
        print(f"{key + ':':<12}{value:.4f}")


# ---- attention, explain ------------------------------------------------------------------------


def add_attention(p: argparse.ArgumentParser) -> None:
    p.add_argument("text")
    p.add_argument("--pair", help="a second text, encoded as a pair: <s> text </s></s> pair </s>")
    _model_arg(p)
    p.add_argument("--out", required=True, help="FILE.html (interactive head view) or FILE.png (heatmaps)")
    p.add_argument(
        "--layer", type=int, help="0-based layer; PNG: default all layers, HTML: the one shown first"
    )
    p.add_argument("--head", type=int, help="0-based head; PNG: default all heads, HTML: the one shown first")
    p.set_defaults(func=run_attention)


def run_attention(args) -> None:
    from roberta.visualize import model_attentions, save_attention

    tok, model = _load_model(args.model)
    attentions, tokens = model_attentions(model, tok, args.text, args.pair)
    from roberta.tasks.common import short

    title = (
        short(args.text, 80) if args.pair is None else f"{short(args.text, 40)}  |  {short(args.pair, 40)}"
    )
    path = save_attention(args.out, attentions, tokens, layer=args.layer, head=args.head, title=title)
    L, nh = len(attentions), attentions[0].shape[1]
    print(f"attention of {len(tokens)} tokens ({L} layers x {nh} heads) written to {path}")


def add_explain(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", nargs="?", help="default: 'The quick brown fox jumps over the lazy dog'")
    p.add_argument("--seed", type=int, default=0, help="seed of the toy example's weights (default: 0)")
    p.add_argument("--weights", metavar="FILE", help="JSON weights for the toy example (see --save-weights)")
    p.add_argument("--save-weights", metavar="FILE", help="write the toy example's weights as JSON, to edit")
    p.add_argument("--model", help="explain a layer of this model instead of the toy example")
    p.add_argument("--layer", type=int, help="with --model: the 0-based layer (default: 0)")
    p.add_argument("--json", action="store_true", help="every step at full precision, as JSON")
    p.set_defaults(func=run_explain)


def run_explain(args) -> None:
    from roberta import explain

    text = explain.TOY_TEXT if args.text is None else args.text
    if args.model is None:
        if args.layer is not None:
            raise ValueError("--layer needs --model: the toy example has a single attention layer")
        given = explain.load_weights(args.weights) if args.weights else None
        expl = explain.toy_example(text, seed=args.seed, weights=given)
        if args.save_weights:
            weights = given or explain.toy_weights(explain.toy_words(text), args.seed)
            print(f"weights written to {explain.save_weights(args.save_weights, weights)}", file=sys.stderr)
    else:
        if args.weights or args.save_weights:
            raise ValueError("--weights and --save-weights are for the toy example; drop them or --model")
        tok, model = _load_model(args.model)
        expl = explain.layer_example(model, tok, text, args.layer or 0)
    if args.json:
        print(json.dumps(explain.explanation_json(expl)))
    else:
        print(explain.format_explanation(expl), end="")


# ---- the task commands: roberta fill-mask | classify | ner | qa | ... (one per registered task) ----


def add_task_command(p: argparse.ArgumentParser, name: str) -> None:
    """`roberta <task>`: the task's own inputs and options, then how its model is loaded and run."""
    from roberta.tasks import get_task

    task = get_task(name)
    task.add_arguments(p)
    _predictor_options(p)
    p.add_argument("--json", action="store_true", help="one JSON object per input, one per line")
    p.set_defaults(func=run_task, task=task.name)


def _predictor_options(p: argparse.ArgumentParser, model: bool = True) -> None:
    """--model, --device, --batch-size, --max-tokens, --dtype: how a task model is loaded and run."""
    if model:
        _model_arg(p)
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: the GPU if there is one)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="texts per forward pass (default: 32)")
    p.add_argument(
        "--max-tokens", type=positive_int, help="also at most this many tokens (padded) per forward pass"
    )
    p.add_argument(
        "--dtype",
        choices=["fp32", "bf16", "int8"],
        default="fp32",
        help="opt-in, results differ from fp32: bf16 is fast on GPUs and AMX CPUs; int8 (CPU only) "
        "on CPUs with AVX-512 VNNI or AMX",
    )


def _predictor_args(args) -> dict:
    """The keyword arguments of Predictor.from_pretrained that _predictor_options set."""
    return dict(device=args.device, max_tokens=args.max_tokens, dtype=_dtype(args.dtype))


def _dtype(name: str):
    """--dtype's torch dtype; None for fp32 (the default: the model as saved)."""
    import torch

    return {"fp32": None, "bf16": torch.bfloat16, "int8": torch.int8}[name]


def run_task(args) -> None:
    """Any task command: read the inputs, load the task's predictor, predict, print."""
    from roberta.tasks import get_task
    from roberta.tasks.common import jsonl_extras

    task = get_task(args.task)
    items = task.inputs(args)
    predictor = task.load(args.model, **_predictor_args(args))
    options = task.options(args)
    results = task.predict(predictor, items, options, args.batch_size)
    if args.json:  # --jsonl rows keep their other fields (an id, ...)
        extras = jsonl_extras(args, task.input_fields(args)) or [{}] * len(items)
        for item, result, extra in zip(items, results, extras):
            print(json.dumps({**extra, **task.json_line(item, result)}, ensure_ascii=False))
    else:
        task.show(items, results, options)


# ---- explain-prediction ------------------------------------------------------------------------

# the inputs of every task's command that explain-prediction takes (one item; no --file, --jsonl)
_EXPLAIN_INPUTS = {"text": "TEXT", "question": "--question", "context": "--context",
                   "context_file": "--context-file", "choice": "--choice"}  # fmt: skip


def add_explain_prediction(p: argparse.ArgumentParser) -> None:
    from roberta.interpret import BASELINES, METHODS, RULES

    p.add_argument("text", nargs="*", help="the text to explain (classify, ner, fill-mask)")
    p.add_argument("--question", help="qa: the question")
    p.add_argument("--context", help="qa: the text holding the answer; multiple-choice: the context")
    p.add_argument("--context-file", help="qa: read the context from this UTF-8 file instead")
    p.add_argument(
        "--choice", action="append", metavar="TEXT", help="multiple-choice: a choice; give two or more"
    )
    _model_arg(p)
    p.add_argument("--task", help="the model's task (default: what its checkpoint was saved for)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: the GPU if there is one)")
    p.add_argument(
        "--target",
        help="what to explain (default: the prediction): classify a label; ner a tag (at --token-index); "
        "qa span (start + end logit), start or end; fill-mask a token at the first <mask>; "
        "multiple-choice a choice's index or text",
    )
    p.add_argument(
        "--token-index",
        type=int,
        help="ner: the token whose tag is explained (0 is <s>; default: the first entity's)",
    )
    p.add_argument("--method", choices=METHODS, default="ig", help="default: ig (integrated gradients)")
    p.add_argument("--steps", type=positive_int, default=64, help="ig: points on the path (default: 64)")
    p.add_argument(
        "--rule", choices=RULES, default="gausslegendre", help="ig: the quadrature (default: gausslegendre)"
    )
    p.add_argument(
        "--baseline", choices=BASELINES, default="pad", help="ig: the token of the baseline (default: pad)"
    )
    p.add_argument(
        "--out", help="FILE.html (every method and target, to switch between), FILE.png (bars) or FILE.json"
    )
    p.add_argument("--json", action="store_true", help="print the explanation as one JSON object")
    p.set_defaults(func=run_explain_prediction, file=None, jsonl=None, field="text")


def _explain_inputs_fit(task, args) -> None:
    """A one-line error for an input flag that the task's own command does not take."""
    from roberta.tasks import TASKS

    def takes(t) -> set[str]:
        p = argparse.ArgumentParser(add_help=False)
        t.add_arguments(p)
        return {a.dest for a in p._actions} & set(_EXPLAIN_INPUTS)

    own = takes(task)
    for dest, flag in _EXPLAIN_INPUTS.items():
        if getattr(args, dest) and dest not in own:
            owners = [t.name for t in TASKS.values() if dest in takes(t) and t.name != task.name]
            reads = " and ".join(_EXPLAIN_INPUTS[d] for d in _EXPLAIN_INPUTS if d in own)
            raise ValueError(f"{flag} is for {', '.join(owners)}, not {task.name}: {task.name} reads {reads}")


def run_explain_prediction(args) -> None:
    from roberta import interpret
    from roberta.tasks import get_task, task_of

    task = get_task(args.task or task_of(args.model))
    interpret.check_task(task.name)
    _explain_inputs_fit(task, args)
    items = task.inputs(args)
    if len(items) != 1:
        raise ValueError(
            f"explain one input at a time, got {len(items)}; quote a text with spaces as one argument"
        )
    predictor = task.load(args.model, device=args.device)
    expl = interpret.explain(
        task.name, predictor, items[0], args.target, args.method, args.steps, rule=args.rule,
        baseline=args.baseline, token_index=args.token_index, views=args.out is not None,
    )  # fmt: skip
    path = interpret.save_explanation(args.out, expl) if args.out else None
    if args.json:
        print(json.dumps(interpret.explanation_json(expl), ensure_ascii=False))
        return
    view = expl.views[0]
    how = interpret.METHOD_NAMES[expl.method]
    if expl.delta is not None:
        how += f" ({expl.steps} {expl.rule} steps from <{expl.baseline}>; convergence delta {expl.delta:.1e} "
        how += f"of f(input) - f(baseline) = {view.f_input - view.f_baseline:.4g})"
    print(f"{task.name}: “{expl.prediction}” (score {expl.score:.4f}); {how} for “{expl.target}”")
    print(f"  {expl.note}")
    if expl.delta is not None and abs(expl.delta) > 1e-2 * abs(view.f_input - view.f_baseline):
        _warn(f"the convergence delta is over 1% of f(input) - f(baseline): raise --steps (now {expl.steps})")
    if path is not None:
        print(f"written to {path}")
        return
    for t, (token, value) in enumerate(zip(expl.tokens, expl.attributions)):
        print(f"  {t:4}  {token[:20]:20}  {value:+.4f}{'  <- f is read here' if t in expl.rows else ''}")


# ---- serve -------------------------------------------------------------------------------------


def add_serve(p: argparse.ArgumentParser) -> None:
    _predictor_options(p, model=False)
    p.add_argument(
        "--model",
        action="append",
        metavar="[NAME=]PATH",
        help=f"a checkpoint folder, built-in model or Hub id, optionally named (requests pick it by its "
        f"`model` field); repeat to serve several (default: {DEFAULT_MODEL})",
    )
    p.add_argument(
        "--task",
        action="append",
        help="the task to serve: once for every model or once per --model (default: what each checkpoint "
        "was saved for)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="default: 8000")
    p.add_argument(
        "--max-batch-tokens",
        type=positive_int,
        default=16384,
        help="tokens in one batch of requests; a larger request goes alone (default: 16384)",
    )
    p.add_argument(
        "--max-batch-requests", type=positive_int, help="requests in one batch (default: no limit)"
    )
    p.add_argument(
        "--max-client-batch-size", type=positive_int, default=32, help="inputs in one request (default: 32)"
    )
    p.add_argument(
        "--max-concurrent-requests",
        type=positive_int,
        default=512,
        help="requests in flight; past it a request gets 429 at once (default: 512)",
    )
    p.add_argument(
        "--payload-limit", type=positive_int, default=2_000_000, help="bytes of a body (default: 2000000)"
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="how long a request waits for others to share its batch (default: 5)",
    )
    p.add_argument(
        "--auto-truncate",
        action="store_true",
        help="cut inputs longer than the model reads unless a request says truncate: false "
        "(default: such inputs get 413)",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("ROBERTA_API_KEY"),
        help="require Authorization: Bearer KEY on every route but /health, /metrics and the docs "
        "(default: $ROBERTA_API_KEY, else none)",
    )
    p.set_defaults(func=run_serve)


def run_serve(args) -> None:
    from roberta.serve import Settings, serve

    settings = Settings(
        max_batch_tokens=args.max_batch_tokens,
        max_batch_requests=args.max_batch_requests,
        max_client_batch_size=args.max_client_batch_size,
        max_concurrent_requests=args.max_concurrent_requests,
        payload_limit=args.payload_limit,
        max_wait_ms=args.max_wait_ms,
        batch_size=args.batch_size,
        auto_truncate=args.auto_truncate,
        api_key=args.api_key or None,
    )
    serve(args.model or [DEFAULT_MODEL], args.task, args.host, args.port, settings, **_predictor_args(args))


# ---- export-onnx -------------------------------------------------------------------------------


def add_export_onnx(p: argparse.ArgumentParser) -> None:
    _model_arg(p)
    p.add_argument("--out", required=True, help="the folder to write")
    p.set_defaults(func=run_export_onnx)


def run_export_onnx(args) -> None:
    from roberta.export import export_checkpoint, onnxruntime_difference, spec_of

    path, model, tokenizer = export_checkpoint(args.model, args.out)
    spec = spec_of(model)
    print(f"wrote {path} ({path.stat().st_size / 2**20:,.1f} MiB), config.json and the tokenizer files")
    print(
        f"  {type(model).__name__}: inputs input_ids, attention_mask ({', '.join(spec.onnx_axes)}; "
        f"length <= {model.config.max_length}); outputs {', '.join(spec.onnx_outputs)}"
    )
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print("  not checked: onnxruntime is not installed (pip install onnxruntime)")
        return
    texts = ["The quick brown fox jumps over the lazy dog.", "Hello world"]
    diff = onnxruntime_difference(path, model, tokenizer, texts)
    print(f"  onnxruntime vs PyTorch on {len(texts)} texts (one padded): max |diff| {diff:.1e}")


# ---- main --------------------------------------------------------------------------------------


# The commands, in the order `roberta --help` lists them: name, one line of help, and the function
# that declares the command's arguments. The task commands come from roberta.tasks.REGISTRY.
COMMANDS = (
    ("encode", "tokenize a text and run the encoder over it", add_encode),
    ("tokenizer", "tokenizer tools", add_tokenizer),
    ("pretrain", "pretrain a masked language model from scratch (RoBERTa's recipe)", add_pretrain),
    ("evaluate", "evaluate a model on held-out data", add_evaluate),
    ("finetune", "fine-tune a model for a task (`roberta finetune -h` lists them)", add_finetune),
    ("attention", "draw a model's attention: an HTML head view or PNG heatmaps", add_attention),
    ("explain", "multi-head self-attention step by step, every number computed", add_explain),
    None,  # the task commands
    ("explain-prediction", "which tokens made a model predict what it did: integrated gradients, "
     "gradient x input, saliency, attention rollout", add_explain_prediction),
    ("serve", "serve models over HTTP, batching the requests that arrive together", add_serve),
    ("export-onnx", "export a model to ONNX (model.onnx + config + tokenizer files)", add_export_onnx),
)  # fmt: skip


class Parser(argparse.ArgumentParser):
    """An argparse parser whose arguments are declared when it is first used.

    `roberta --help` lists every command from its name and help line alone; a command's arguments
    (which may need its task's module, and so torch) are declared only when that command is parsed
    or prints its help. So `roberta --help`, `--version` and an unknown command import no torch.
    """

    def __init__(self, *args, declare=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._declare = declare

    def _declared(self) -> None:
        if self._declare is not None:
            declare, self._declare = self._declare, None
            declare(self)

    def parse_known_args(self, args=None, namespace=None):
        self._declared()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._declared()
        return super().format_help()

    def format_usage(self) -> str:
        self._declared()
        return super().format_usage()


def build_parser() -> argparse.ArgumentParser:
    from roberta import __version__
    from roberta.tasks import REGISTRY

    parser = Parser(prog="roberta", description="RoBERTa from scratch: encode, tasks, training.")
    parser.add_argument("--version", action="version", version=f"roberta {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        if command is None:
            for name, entry in REGISTRY.items():
                sub.add_parser(name, help=entry.help, declare=functools.partial(add_task_command, name=name))
            continue
        name, help, declare = command
        sub.add_parser(name, help=help, declare=declare)
    return parser


# Errors a user can cause (bad input, a missing file or extra, a device or memory this machine
# lacks): one line naming what to do. Anything else is our bug: one line, and the traceback
# with --debug (or ROBERTA_DEBUG=1).
USER_ERRORS = (ValueError, TypeError, KeyError, OSError, ImportError, MemoryError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = args.debug or bool(os.environ.get("ROBERTA_DEBUG"))
    where = f"roberta {args.command}"
    try:
        args.func(args)
    except KeyboardInterrupt:
        print(f"{where}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`roberta ... | head`): stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except USER_ERRORS as e:
        if debug:
            raise
        print(f"{where}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:
        if debug:
            raise
        if _out_of_memory(e):
            print(
                f"{where}: error: out of memory ({_one_line(e)}); lower --batch-size or --max-tokens",
                file=sys.stderr,
            )
            return 2
        print(
            f"{where}: internal error: {type(e).__name__}: {_one_line(e)}\n"
            "This is a bug in roberta: rerun with --debug for the traceback and report it.",
            file=sys.stderr,
        )
        return 1
    return 0


def _one_line(e: BaseException) -> str:
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return text or type(e).__name__


def _out_of_memory(e: BaseException) -> bool:
    return "out of memory" in str(e).lower() or type(e).__name__ == "OutOfMemoryError"


if __name__ == "__main__":
    sys.exit(main())
