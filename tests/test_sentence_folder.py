"""sentence-transformers folders: `Embedder`, `roberta embed` and `/embed` give sentence-transformers'
vectors.

Each folder is written by `sentence_transformers` itself (a random XLM-R saved by transformers,
with its tokenizer.json from a SentencePiece model trained in the test, then a Pooling and
optionally a Normalize module), and `SentenceTransformer(folder).encode` is the reference: within
1e-5 for each pooling mode, with and without Normalize, with a short max_seq_length (long texts
cut as theirs are), and in the older layout (the model in 0_Transformer/, `pooling_mode_*` flags,
sentence_bert_config.json's max_seq_length and do_lower_case). The folder's settings are the
defaults; options given to the call override them.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from test_bert import bert_config, bert_tokenizers, corpus  # noqa: F401 (fixtures)
from test_families import TEXTS, family_config, sentencepiece_model  # noqa: F401 (a fixture)

from roberta.tasks import Embedder, task_of
from roberta.tasks.embed import read_sentence_folder

transformers = pytest.importorskip("transformers")
st = pytest.importorskip("sentence_transformers")
from sentence_transformers.base.modules import Normalize, Transformer  # noqa: E402
from sentence_transformers.sentence_transformer.modules import Pooling  # noqa: E402

TOL = 1e-5
LONG = "Zwei junge Männer spielen Fußball auf der Straße, und ein Hund sieht ihnen lange zu. " * 2


@pytest.fixture(scope="module")
def xlmr_dir(sentencepiece_model, tmp_path_factory) -> Path:  # noqa: F811 (the fixture, by name)
    """A tiny random XLMRobertaModel and its tokenizer, as transformers saves them."""
    folder = tmp_path_factory.mktemp("xlmr")
    (folder / "sentencepiece.bpe.model").write_bytes(sentencepiece_model.read_bytes())
    tokenizer = transformers.XLMRobertaTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    transformers.XLMRobertaModel(family_config("xlm-roberta", vocab_size=len(tokenizer))).save_pretrained(
        folder
    )
    tokenizer.save_pretrained(folder)
    (folder / "sentencepiece.bpe.model").unlink()  # the folder's tokenizer is its tokenizer.json
    return folder


def save_st(model_dir: Path, out: Path, pooling: str = "mean", normalize: bool = True, **kw) -> Path:
    """sentence-transformers' folder of `model_dir`: Transformer, Pooling(pooling), Normalize."""
    transformer = Transformer(str(model_dir), **kw)
    modules = [transformer, Pooling(transformer.get_embedding_dimension(), pooling)]
    modules += [Normalize()] if normalize else []
    st.SentenceTransformer(modules=modules, device="cpu").save(str(out))
    return out


def reference(folder: Path, texts: list[str]) -> torch.Tensor:
    return st.SentenceTransformer(str(folder), device="cpu").encode(texts, convert_to_tensor=True)


def ours(folder: Path, texts: list[str], **options) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*were truncated")
        return Embedder.from_pretrained(folder, device="cpu").embed(texts, **options)


def assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    difference = float((a - b).abs().max())
    assert difference < TOL, f"max difference {difference:.3g}"


CASES = [("mean", True), ("mean", False), ("cls", True), ("max", True), ("mean_sqrt_len_tokens", False)]


@pytest.mark.parametrize("pooling,normalize", CASES, ids=[f"{p}-{'unit' if n else 'raw'}" for p, n in CASES])
def test_vectors_equal_sentence_transformers(xlmr_dir, tmp_path, pooling, normalize):
    folder = save_st(xlmr_dir, tmp_path / "st", pooling, normalize)
    settings = read_sentence_folder(folder)
    assert settings.pooling == pooling.removesuffix("_tokens") and settings.normalize == normalize
    assert_close(ours(folder, TEXTS), reference(folder, TEXTS))
    assert_close(ours(folder, TEXTS[1]), reference(folder, TEXTS[1:2])[0])  # one text: one vector


def test_options_given_override_the_folder(xlmr_dir, tmp_path):
    folder = save_st(xlmr_dir, tmp_path / "mean", "mean", normalize=True)
    other = save_st(xlmr_dir, tmp_path / "cls", "cls", normalize=False)
    assert_close(ours(folder, TEXTS, pooling="cls", normalize=False), reference(other, TEXTS))


def test_max_seq_length_cuts_long_texts_as_sentence_transformers_does(xlmr_dir, tmp_path):
    folder = save_st(xlmr_dir, tmp_path / "st", max_seq_length=12)
    embedder = Embedder.from_pretrained(folder, device="cpu")
    assert embedder.max_length == 12 < len(embedder.tokenizer(LONG)["input_ids"])
    with pytest.warns(UserWarning, match="longer than the model's 12 tokens were truncated"):
        got = embedder.embed([LONG, TEXTS[0]])
    assert_close(got, reference(folder, [LONG, TEXTS[0]]))


def older_layout(folder: Path, out: Path, pooling: str, max_seq_length: int, lower: bool) -> Path:
    """`folder` rewritten as releases before 5 wrote it: the model in 0_Transformer/, their module
    names, the `pooling_mode_*` flags, max_seq_length and do_lower_case in sentence_bert_config.json."""
    model = out / "0_Transformer"
    shutil.copytree(folder, model, ignore=shutil.ignore_patterns("[12]_*", "modules.json", "*sentence*"))
    (model / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": lower})
    )
    tokenizer_config = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**tokenizer_config, "model_max_length": 512}))
    width = json.loads((folder / "1_Pooling" / "config.json").read_text())["embedding_dimension"]
    (out / "1_Pooling").mkdir()
    flags = {
        "cls": "pooling_mode_cls_token",
        "mean": "pooling_mode_mean_tokens",
        "max": "pooling_mode_max_tokens",
    }
    config = {"word_embedding_dimension": width, **{flag: mode == pooling for mode, flag in flags.items()}}
    (out / "1_Pooling" / "config.json").write_text(json.dumps(config))
    names = [("0_Transformer", "Transformer"), ("1_Pooling", "Pooling"), ("2_Normalize", "Normalize")]
    (out / "2_Normalize").mkdir()
    modules = [
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (path, kind) in enumerate(names)
    ]
    (out / "modules.json").write_text(json.dumps(modules))
    return out


@pytest.mark.parametrize("pooling,lower", [("cls", True), ("max", False)])
def test_the_older_layout_and_its_settings(xlmr_dir, tmp_path, pooling, lower):
    folder = older_layout(save_st(xlmr_dir, tmp_path / "st"), tmp_path / "old", pooling, 10, lower)
    settings = read_sentence_folder(folder)
    assert (settings.model.name, settings.pooling, settings.max_seq_length) == ("0_Transformer", pooling, 10)
    assert settings.do_lower_case is lower
    texts = [*TEXTS, LONG, "ZWEI MÄNNER, Größe"]
    assert_close(ours(folder, texts), reference(folder, texts))
    assert task_of(folder) == "embed"  # `roberta serve --model FOLDER` serves /embed, no --task needed


def test_cli_and_server_give_the_folders_vectors(xlmr_dir, tmp_path, capsys):
    """The folder's cls pooling without Normalize is what `roberta embed` and `/embed` give unless
    told otherwise."""
    from fastapi.testclient import TestClient

    from roberta.cli import main
    from roberta.serve import build_app

    folder = save_st(xlmr_dir, tmp_path / "st", "cls", normalize=False)
    assert task_of(folder) == "embed"  # not fill-mask, although its config.json names a base model
    expected = reference(folder, TEXTS)
    assert main(["embed", *TEXTS, "--model", str(folder), "--json", "--device", "cpu"]) == 0
    got = [json.loads(line)["embedding"] for line in capsys.readouterr().out.splitlines()]
    assert_close(torch.tensor(got), expected)
    assert main(["embed", TEXTS[0], "--model", str(folder), "--json", "--normalize"]) == 0
    unit = torch.tensor(json.loads(capsys.readouterr().out)["embedding"])
    assert_close(unit, torch.nn.functional.normalize(expected[0], dim=0))

    with TestClient(build_app(Embedder.from_pretrained(folder, device="cpu"), "embed")) as client:
        reply = client.post("/embed", json={"inputs": TEXTS})
        assert reply.status_code == 200, reply.text
        assert_close(torch.tensor(reply.json()["outputs"]), expected)
        reply = client.post("/embed", json={"inputs": TEXTS[0], "pooling": "mean", "normalize": True})
        mean = save_st(xlmr_dir, tmp_path / "mean", "mean", normalize=True)
        assert_close(torch.tensor(reply.json()["outputs"]), reference(mean, TEXTS[:1])[0])


def test_what_cannot_be_reproduced_is_one_clear_error(xlmr_dir, tmp_path):
    folder = save_st(xlmr_dir, tmp_path / "st", "weightedmean")
    with pytest.raises(ValueError, match=r"1_Pooling/config.json: pooling weightedmean is not supported"):
        Embedder.from_pretrained(folder, device="cpu")
    config = folder / "1_Pooling" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "pooling_mode": ["mean", "max"]}))
    with pytest.raises(ValueError, match=r"pooling mean \+ max is not supported here; supported: one of"):
        read_sentence_folder(folder)
    modules = json.loads((folder / "modules.json").read_text())
    modules.insert(2, {"idx": 2, "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(
        ValueError, match=r"lists the modules Transformer, Pooling, Dense, Normalize; supported: Transformer"
    ):
        read_sentence_folder(folder)


def test_a_default_prompt_is_named_in_a_warning(xlmr_dir, tmp_path):
    """sentence-transformers puts a folder's default prompt before each text; this does not."""
    folder = save_st(xlmr_dir, tmp_path / "st")
    extras = folder / "config_sentence_transformers.json"
    config = json.loads(extras.read_text())
    extras.write_text(json.dumps({**config, "prompts": {"query": "query: "}, "default_prompt_name": "query"}))
    with pytest.warns(UserWarning, match="names a default prompt \\('query'\\) .* not added here"):
        read_sentence_folder(folder)


def test_a_plain_checkpoint_keeps_mean_pooling_and_unit_vectors(xlmr_dir):
    assert read_sentence_folder(xlmr_dir) is None
    embedder = Embedder.from_pretrained(xlmr_dir, device="cpu")
    assert (embedder.pooling, embedder.normalize) == ("mean", True)


@pytest.fixture(scope="module")
def bert_dir(bert_tokenizers, tmp_path_factory) -> Path:  # noqa: F811 (the fixture, by name)
    """A tiny random BertModel (MiniLM's kind: a BERT) with a WordPiece vocab.txt trained in the
    test, cased and uncased (tests/test_bert.py's), as transformers saves them."""
    lower, ref, _, _, vocab_dir = bert_tokenizers
    folder = tmp_path_factory.mktemp("bert-uncased" if lower else "bert-cased")
    shutil.copytree(vocab_dir, folder, dirs_exist_ok=True)
    torch.manual_seed(0)
    transformers.BertModel(bert_config(vocab_size=len(ref), max_position_embeddings=64)).save_pretrained(
        folder
    )
    return folder


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_a_bert_folder_equals_sentence_transformers(bert_dir, tmp_path, pooling):
    folder = save_st(bert_dir, tmp_path / "st", pooling, max_seq_length=16)
    texts = [*TEXTS, LONG]
    assert_close(ours(folder, texts), reference(folder, texts))


def test_a_hub_id_fetches_what_the_folder_needs(xlmr_dir, tmp_path, monkeypatch):
    """The files asked of the Hub for a name (fnmatch patterns, as huggingface_hub reads them) are
    all that the older layout needs: the model in 0_Transformer/, the modules' settings."""
    from fnmatch import fnmatch

    from roberta import hub

    repo = older_layout(save_st(xlmr_dir, tmp_path / "st"), tmp_path / "repo", "mean", 10, True)

    def download(repo_id: str, patterns: list[str]) -> Path:
        snapshot = tmp_path / "snapshot"
        for path in repo.rglob("*"):
            name = path.relative_to(repo).as_posix()
            if path.is_file() and any(fnmatch(name, pattern) for pattern in patterns):
                (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, snapshot / name)
        return snapshot

    monkeypatch.setattr(hub, "_download", download)
    assert_close(ours("someone/st-model", TEXTS), reference(repo, TEXTS))
