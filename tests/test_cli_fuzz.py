"""A fuzz of the command line's inputs (hypothesis): whatever a user types, a task command either
answers (exit 0) or says in one line what was wrong (exit 2) — never an internal error (exit 1) or
an exception, so the list of first-hour failures stays closed. (Run once at 300 examples each
while writing it: no failure.)

The model is the tiny random masked LM of conftest.py (fill-mask, embed); the task commands that
need a fine-tuned head are exercised on their refusal path and on argument errors.
"""

from __future__ import annotations

import pytest

from roberta.cli import main

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# Texts: any Unicode a shell can pass (no NUL, no lone surrogates: argv cannot carry them), with
# <mask> and whitespace mixed in, up to a length past the model's limit now and then.
text = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40),
    st.sampled_from(["<mask>", " <mask> ", "<mask><mask>", "", " ", "\n", "word " * 600 + "<mask>"]),
).map(lambda s: s.replace("\x00", ""))
texts = st.lists(text, min_size=0, max_size=3)
number = st.one_of(st.integers(-3, 70000), st.sampled_from(["x", "1.5", "", "-0", "1e3"]))
options = st.lists(
    st.tuples(st.sampled_from(["--top-k", "--batch-size", "--max-tokens", "--pooling", "--dtype"]), number),
    max_size=2,
)


def run(argv: list[str], capsys) -> int:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse: a bad option value, exit 2 with its usage line
        code = e.code
    err = capsys.readouterr().err
    assert code in (0, 2), f"{argv!r} -> exit {code}:\n{err}"
    assert "Traceback" not in err and "internal error" not in err, err
    return code


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(["fill-mask", "embed"]), args=texts, opts=options, as_json=st.booleans())
def test_task_commands_answer_or_say_what_was_wrong(tiny_model_dir, capsys, command, args, opts, as_json):
    argv = [command, *args, "--model", str(tiny_model_dir), "--device", "cpu"]
    for flag, value in opts:
        argv += [flag, str(value)]
    run(argv + (["--json"] if as_json else []), capsys)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    command=st.sampled_from(["classify", "ner", "qa", "multiple-choice", "translate", "encode", "attention"]),
    args=texts,
    flags=st.lists(
        st.sampled_from(["--question", "--context", "--choice", "--file", "--jsonl", "--out"]), max_size=3
    ),
)
def test_other_commands_never_fail_inside(tiny_model_dir, tmp_path, capsys, command, args, flags):
    argv = [command]
    for flag, value in zip(flags, args):
        argv += [
            flag,
            value if flag not in ("--file", "--jsonl", "--out") else str(tmp_path / (value or "x")),
        ]
    run(argv + args[len(flags) :] + ["--model", str(tiny_model_dir)], capsys)
