"""BERT and MiniLM (model_type "bert") against transformers: checkpoints, tokenizer, token types.

Tiny random BERT checkpoints saved by transformers (the base model and every head) load here with
the same outputs within 1e-5 on a padded batch of text pairs with token types, and ours, saved, load
in transformers' Auto classes as the same Bert* class with the same outputs. The WordPiece tokenizer
(from vocab.txt and from tokenizer.json, cased and uncased, trained in the test) gives
transformers' BertTokenizer's ids, token types and offsets. Every task command runs on a BERT folder.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_heads import TOL, labels_for, outputs_agree
from test_tasks import INPUTS, OVERRIDES, TINY

from roberta import RobertaConfig, RobertaForMaskedLM, RobertaModel
from roberta.architectures import architecture_class
from roberta.checkpoint import read_weights
from roberta.seq2seq import EncoderDecoder

transformers = pytest.importorskip("transformers")

VOCAB = 103
CLS, PAD, SEP = 2, 0, 3
LENGTHS = (11, 4, 8, 1)  # B = 4, T = 11; the last row is a lone [CLS]


def bert_config(**kw):
    """Tiny, odd sizes (4 heads of 9); BERT's own defaults otherwise (eps 1e-12, 2 types, pad 0)."""
    base = dict(
        vocab_size=VOCAB,
        hidden_size=36,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=24,
        attn_implementation="eager",
    )
    return transformers.BertConfig(**{**base, **kw})


def pair_batch(lengths=LENGTHS, seed: int = 0):
    """(ids, mask, token types) (B, T): [CLS] A [SEP] B [SEP], right-padded with 0; types 1 on B."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), max(lengths)), PAD, dtype=torch.long)
    mask, types = torch.zeros_like(ids), torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(5, VOCAB, (n,), generator=g)
        ids[i, 0], ids[i, n - 1] = CLS, SEP
        mask[i, :n] = 1
        if n >= 4:  # a pair: the first text's [SEP] halfway
            ids[i, n // 2] = SEP
            types[i, n // 2 + 1 : n] = 1
    return ids, mask, types


HEADS = {
    "Model": (None, {}),
    "ForMaskedLM": ("masked_lm", {}),
    "ForSequenceClassification": ("single_label", dict(num_labels=3)),
    "ForTokenClassification": ("token", dict(num_labels=5)),
    "ForQuestionAnswering": ("qa", {}),
    "ForMultipleChoice": ("multiple_choice", {}),
}


def batch_for(head: str, seed: int = 0):
    """(inputs, mask, labels); multiple choice: 2 questions x 3 choices."""
    if head != "ForMultipleChoice":
        ids, mask, types = pair_batch(seed=seed)
        name = HEADS[head][0]
        labels = {} if name is None else labels_for(name, ids, mask)
        return dict(input_ids=ids, attention_mask=mask, token_type_ids=types), mask, labels
    ids, mask, types = pair_batch(lengths=(9, 3, 6, 5, 2, 7), seed=seed)
    inputs = dict(input_ids=ids.view(2, 3, -1), attention_mask=mask.view(2, 3, -1))
    inputs["token_type_ids"] = types.view(2, 3, -1)
    return inputs, inputs["attention_mask"], {"labels": torch.tensor([2, 0])}


def agree(head: str, ref, out, mask) -> None:
    if head == "Model":
        real = mask.bool()
        assert (ref.last_hidden_state[real] - out.last_hidden_state[real]).abs().max() < TOL
        assert (ref.pooler_output - out.pooler_output).abs().max() < TOL
    elif head == "ForQuestionAnswering" and not mask.bool().all():
        # The logits at real tokens agree. transformers' QA loss takes its softmax over padding too,
        # whose logits differ here: with BERT's positions (0, 1, 2, ... at padding as well) each
        # padding position has its own embedding, and the unpadded encoder (packing.py) gives every
        # padding position of a row the first one's state. The loss is checked on a full batch.
        for a, b in ((ref.start_logits, out.start_logits), (ref.end_logits, out.end_logits)):
            assert (a - b)[mask.bool()].abs().max() < TOL
    else:
        outputs_agree(ref, out, mask)


@pytest.mark.parametrize("head", list(HEADS))
@torch.no_grad()
def test_bert_checkpoints_load_both_ways(head, tmp_path):
    torch.manual_seed(0)
    hf = getattr(transformers, "Bert" + head)(bert_config(**HEADS[head][1])).eval()
    hf.save_pretrained(tmp_path / "hf")
    cls = architecture_class(tmp_path / "hf")
    assert cls.__name__ == "Roberta" + head
    ours = cls.from_pretrained(tmp_path / "hf")
    assert ours.config.model_type == "bert" and ours.config.layer_norm_eps == 1e-12
    inputs, mask, labels = batch_for(head)
    agree(head, hf(**inputs, **labels), ours(**inputs, **labels), mask)
    if head == "ForQuestionAnswering":  # the loss, on a batch without padding
        full = {k: v[:1] for k, v in inputs.items()}
        positions = {k: v[1:2] for k, v in labels.items()}
        outputs_agree(hf(**full, **positions), ours(**full, **positions), full["attention_mask"])
    # token types change the numbers: they are read, not dropped
    if head == "Model":
        zeros = {**inputs, "token_type_ids": torch.zeros_like(inputs["token_type_ids"])}
        assert (ours(**zeros).pooler_output - ours(**inputs).pooler_output).abs().max() > 1e-4
    ours.save_pretrained(tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["model_type"] == "bert" and config["architectures"] == ["Bert" + head]
    assert set(read_weights(tmp_path / "ours")) == set(read_weights(tmp_path / "hf"))
    auto = transformers.AutoModel if head == "Model" else getattr(transformers, "AutoModel" + head)
    ref, info = auto.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert type(ref) is type(hf) and not info["missing_keys"] and not info["unexpected_keys"], info
    inputs, mask, labels = batch_for(head, seed=2)
    agree(head, ref.eval()(**inputs, **labels), ours(**inputs, **labels), mask)


@torch.no_grad()
def test_bert_positions_start_at_zero_and_fill_the_table(tmp_path):
    """512 rows hold 512 tokens (RoBERTa's 514 hold 512); padding does not move the positions."""
    config = RobertaConfig.from_dict({**bert_config().to_dict(), "max_position_embeddings": 16})
    assert config.max_length == 16 and config.position_offset == 0
    assert RobertaConfig.from_dict({"model_type": "bert"}).max_length == 512
    model = RobertaModel(config).eval()
    ids = torch.randint(5, VOCAB, (1, 16))
    assert model(ids).last_hidden_state.shape == (1, 16, 36)
    with pytest.raises(ValueError, match="position table holds 16"):
        model(torch.randint(5, VOCAB, (1, 17)))


def test_bert_config_defaults_are_berts():
    """A config.json that says only model_type "bert" gets BertConfig's defaults, and keeps its
    null bos/eos through a save."""
    config = RobertaConfig.from_dict({"model_type": "bert"})
    assert (config.layer_norm_eps, config.type_vocab_size, config.max_position_embeddings) == (1e-12, 2, 512)
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (0, None, None)
    d = config.to_dict()
    assert d["model_type"] == "bert" and d["bos_token_id"] is None
    hf = transformers.BertConfig(**d)
    assert (hf.layer_norm_eps, hf.type_vocab_size, hf.pad_token_id) == (1e-12, 2, 0)
    with pytest.raises(ValueError, match="'bos_token_id' is None"):
        RobertaConfig.from_dict({"model_type": "roberta", "bos_token_id": None})


@torch.no_grad()
def test_old_gamma_beta_layer_norm_names_load(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    hf = transformers.BertForMaskedLM(bert_config()).eval()
    hf.save_pretrained(tmp_path)
    weights = read_weights(tmp_path)
    old = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
           for k, v in weights.items()}  # fmt: skip
    assert any(k.endswith("gamma") for k in old)
    save_file(old, tmp_path / "model.safetensors")
    ours = architecture_class(tmp_path).from_pretrained(tmp_path)
    inputs, mask, _ = batch_for("ForMaskedLM")
    a, b = hf(**inputs).logits, ours(**inputs).logits
    assert (a - b)[mask.bool()].abs().max() < TOL


# ---- the WordPiece tokenizer, against transformers' BertTokenizer ---------------------------------

TEXTS = [
    "The old man walked slowly to the [MASK].",
    "Zwei junge Männer spielen Fußball auf der Straße.",
    "Ça va? Größe, naïve café — ÉLAN",
    "Привет, мир! Как дела?",
    "日本語のテキストと中文字符",
    "مرحبا بالعالم",
    "combining: e\u0301te\u0301 and n\u0303, precomposed: été ñ",
    "emoji: I ❤️ 🍕 and 👩‍👩‍👧!",
    "[MASK] at the start, and[MASK]glued, [CLS] and [SEP] inside, two [MASK] [MASK]",
    "  spaces   between\twords\nand lines  ",
    "unbelievably antidisestablishmentarianism supercalifragilistic",
    "",
]
PAIRS = [(TEXTS[0], TEXTS[1]), ("Wer spielt?", TEXTS[2] * 3), (TEXTS[3], TEXTS[7])]
KEYS = ("input_ids", "token_type_ids", "attention_mask", "offset_mapping", "special_tokens_mask")


@pytest.fixture(scope="module")
def corpus(data_dir, tmp_path_factory):
    """English and German Multi30k lines, WikiText-2 and a few non-Latin lines: what the
    WordPiece vocabularies are trained on."""
    lines = []
    for name in ("train.en", "train.de"):
        lines += (data_dir / "multi30k" / name).read_text(encoding="utf-8").splitlines()[:3000]
    lines += (data_dir / "wikitext-2" / "wiki.valid.tokens").read_text(encoding="utf-8").splitlines()[:1500]
    lines += TEXTS[3:8] * 3
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module", params=["uncased", "cased"])
def bert_tokenizers(request, corpus, tmp_path_factory):
    """(cased?, transformers' BertTokenizer from vocab.txt, ours from vocab.txt, ours from the
    tokenizer.json transformers saved, the vocab.txt folder)."""
    from tokenizers import BertWordPieceTokenizer

    from roberta.tokenizer import Tokenizer

    lower = request.param == "uncased"
    trainer = BertWordPieceTokenizer(lowercase=lower, strip_accents=None)
    trainer.train([str(corpus)], vocab_size=800, min_frequency=2, show_progress=False)
    folder = tmp_path_factory.mktemp(f"bert-{request.param}")
    trainer.save_model(str(folder))  # vocab.txt: [PAD] [UNK] [CLS] [SEP] [MASK] first
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": lower}))
    ref = transformers.BertTokenizer.from_pretrained(folder)
    json_dir = tmp_path_factory.mktemp(f"bert-{request.param}-json")
    ref.save_pretrained(json_dir)
    assert (json_dir / "tokenizer.json").is_file() and not (json_dir / "vocab.txt").exists()
    return lower, ref, Tokenizer.from_pretrained(folder), Tokenizer.from_pretrained(json_dir), folder


def as_lists(encoding, key):
    rows = encoding[key]
    return [[tuple(x) for x in r] for r in rows] if key == "offset_mapping" else rows


def assert_same(ours, ref, *args, **kw) -> None:
    """ids, token types, masks, offsets (and the overflow mapping) of ours and transformers' agree."""
    kw.update(return_offsets_mapping=True, return_special_tokens_mask=True)
    a, b = ours(*args, **kw), ref(*args, **kw)
    keys = KEYS + (("overflow_to_sample_mapping",) if kw.get("return_overflowing_tokens") else ())
    for key in keys:
        assert as_lists(a, key) == as_lists(b, key), (key, args, kw)


def test_wordpiece_tokenizer_equals_transformers(bert_tokenizers):
    lower, ref, from_vocab, from_json, _ = bert_tokenizers
    for ours in (from_vocab, from_json):
        assert ours.model_type == "bert" and ours.token_types and len(ours) == len(ref)
        ids = [ours.cls_token_id, ours.pad_token_id, ours.sep_token_id, ours.unk_token_id, ours.mask_token_id]
        assert ids == [
            ref.cls_token_id,
            ref.pad_token_id,
            ref.sep_token_id,
            ref.unk_token_id,
            ref.mask_token_id,
        ]
        assert ours.mask_token == "[MASK]"
        assert_same(ours, ref, TEXTS, padding=True)
        assert_same(ours, ref, [p[0] for p in PAIRS], [p[1] for p in PAIRS], padding=True)
        assert_same(ours, ref, TEXTS, truncation=True, max_length=7)
        assert_same(ours, ref, [p[0] for p in PAIRS], [p[1] for p in PAIRS], truncation=True, max_length=12)
        questions, contexts = ["Wer spielt?", "Что это?"], [TEXTS[1] + " " + TEXTS[2], TEXTS[3] + TEXTS[7]]
        window = dict(truncation="only_second", max_length=16, stride=3, return_overflowing_tokens=True)
        assert_same(ours, ref, questions, contexts, padding="max_length", **window)
        words = [t.split() for t in TEXTS if t.strip()]
        assert_same(ours, ref, words, is_split_into_words=True, padding=True)
        assert ours(words, is_split_into_words=True).word_ids(1) == ref(
            words, is_split_into_words=True
        ).word_ids(1)
        assert_same(ours, ref, words[:3], words[3:6], is_split_into_words=True, padding=True)
        one = ours(TEXTS[0], TEXTS[1])
        assert (
            set(one) == {"input_ids", "token_type_ids", "attention_mask"} and one["token_type_ids"][-1] == 1
        )
        ids = ref(TEXTS)["input_ids"]
        assert ours.batch_decode(ids, skip_special_tokens=True) == ref.batch_decode(
            ids, skip_special_tokens=True
        )
    # the cased vocabulary keeps case and accents; the uncased one folds both
    tokens = from_vocab.tokenize("Größe ÉLAN")
    assert (tokens == [t.lower() for t in tokens]) == lower
    assert any("é" in t or "ö" in t for t in tokens) != lower


def test_tokenizer_config_settings_are_read(bert_tokenizers, tmp_path):
    """do_lower_case, strip_accents and tokenize_chinese_chars as tokenizer_config.json says."""
    from roberta.tokenizer import Tokenizer

    _, _, _, _, folder = bert_tokenizers
    (tmp_path / "vocab.txt").write_bytes((folder / "vocab.txt").read_bytes())
    for settings in (
        dict(do_lower_case=True, strip_accents=False),
        dict(do_lower_case=False, strip_accents=True),
        dict(do_lower_case=True, tokenize_chinese_chars=False),
    ):
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(settings))
        ours, ref = Tokenizer.from_pretrained(tmp_path), transformers.BertTokenizer.from_pretrained(tmp_path)
        assert_same(ours, ref, TEXTS, padding=True)


def test_our_saved_bert_tokenizer_loads_in_transformers(bert_tokenizers, tmp_path):
    from roberta.tokenizer import Tokenizer

    lower, ref, ours, _, _ = bert_tokenizers
    ours.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "BertTokenizer" and config["do_lower_case"] == lower
    assert config["mask_token"] == "[MASK]" and "bos_token" not in config
    again = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert type(again) is type(ref)
    assert again(TEXTS, TEXTS[::-1])["input_ids"] == ref(TEXTS, TEXTS[::-1])["input_ids"]
    assert again(TEXTS, TEXTS[::-1])["token_type_ids"] == ref(TEXTS, TEXTS[::-1])["token_type_ids"]
    (tmp_path / "tokenizer.json").unlink()  # vocab.txt alone, as older BERT folders have it
    assert_same(Tokenizer.from_pretrained(tmp_path), ref, TEXTS, padding=True)


def test_roberta_tokenizer_returns_no_token_types(tiny_model_dir):
    """RoBERTa's outputs are what RobertaTokenizerFast returns: no token_type_ids."""
    from roberta.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(tiny_model_dir)
    assert not tok.token_types and set(tok("a", "b")) == {"input_ids", "attention_mask"}
    assert transformers.AutoTokenizer.from_pretrained(tiny_model_dir).model_input_names == [
        "input_ids",
        "attention_mask",
    ]


def test_bert_tokenizer_max_length_is_every_position(bert_tokenizers, tmp_path):
    """A BERT folder whose config.json holds 24 positions takes 24 tokens (RoBERTa's: 24 - pad - 1)."""
    from roberta.tokenizer import Tokenizer

    _, _, _, _, folder = bert_tokenizers
    (tmp_path / "vocab.txt").write_bytes((folder / "vocab.txt").read_bytes())
    (tmp_path / "config.json").write_text(json.dumps(bert_config().to_dict()))
    assert Tokenizer.from_pretrained(tmp_path).model_max_length == 24


def test_bad_folders_are_one_clear_error(tmp_path):
    from roberta.tokenizer import Tokenizer

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(
        FileNotFoundError, match=r"found: config.json, notes.txt\); supported: .*vocab.txt \(BERT"
    ):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    with pytest.raises(ValueError, match=r"lacks BERT's special tokens \['\[CLS\]', '\[SEP\]', '\[MASK\]'\]"):
        Tokenizer.from_pretrained(tmp_path)
    with pytest.raises(
        ValueError, match=r"'model_type' is 'funnel' \(str\); supported model types: roberta, .*bert"
    ):
        RobertaConfig.from_dict({"model_type": "funnel"})


# ---- every command on a BERT folder, token types end to end -----------------------------------------

# test_tasks' tiny sizes, head configs and one input per command; BERT writes its mask [MASK]
TASK_CONFIG = OVERRIDES
TASK_INPUTS = {**INPUTS, "fill-mask": ["Paris is the [MASK] of France."]}


@pytest.fixture(scope="module")
def bert_folders(corpus, tmp_path_factory):
    """task -> a folder with a tiny random BERT checkpoint of that task's model (our classes, a
    `model_type: bert` config) and an uncased WordPiece tokenizer (vocab.txt + tokenizer_config.json)."""
    from tokenizers import BertWordPieceTokenizer

    from roberta.tasks import TASKS

    root = tmp_path_factory.mktemp("bert-tasks")
    trainer = BertWordPieceTokenizer(lowercase=True)
    trainer.train([str(corpus)], vocab_size=600, min_frequency=2, show_progress=False)
    trainer.save_model(str(root))
    (root / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 64}))
    vocab = (root / "vocab.txt").read_text(encoding="utf-8").count("\n")
    values = {"model_type": "bert", "vocab_size": vocab, "max_position_embeddings": 64, **TINY}
    RobertaForMaskedLM(RobertaConfig.from_dict(values)).save_pretrained(root / "mlm")
    for file in ("vocab.txt", "tokenizer_config.json"):
        (root / "mlm" / file).write_bytes((root / file).read_bytes())
    folders = {}
    for name, task in TASKS.items():
        torch.manual_seed(0)
        if task.model_class is EncoderDecoder:  # bert2bert: both stacks from the masked LM
            model = EncoderDecoder.from_encoder_pretrained(root / "mlm")
        else:
            model = task.model_class(RobertaConfig.from_dict({**values, **TASK_CONFIG.get(name, {})}))
        model.save_pretrained(root / name)
        for file in ("vocab.txt", "tokenizer_config.json"):
            (root / name / file).write_bytes((root / file).read_bytes())
        folders[name] = root / name
    return folders


def test_the_registry_reads_bert_folders(bert_folders):
    from roberta.tasks import TASKS, task_of

    assert set(bert_folders) == set(TASKS) == set(TASK_INPUTS)
    for name, folder in bert_folders.items():
        if TASKS[name].architectures:
            assert task_of(folder) == name
        config = json.loads((folder / "config.json").read_text())
        if name == "translate":  # an EncoderDecoderModel of two BERT stacks
            assert config["encoder"]["model_type"] == config["decoder"]["model_type"] == "bert"
        else:
            assert config["architectures"][0].startswith("Bert")


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
@pytest.mark.parametrize("name", list(TASK_INPUTS))
def test_every_task_command_runs_on_a_bert_folder(name, dtype, bert_folders, capsys):
    from roberta.cli import main
    from roberta.tasks import TASKS

    argv = [name, *TASK_INPUTS[name], "--model", str(bert_folders[name]), "--device", "cpu", "--json"]
    assert main([*argv, "--dtype", dtype]) == 0, capsys.readouterr().err
    (line,) = capsys.readouterr().out.splitlines()
    result = json.loads(line)
    if name == "fill-mask":  # the mask's word is written where [MASK] was, with the space before it
        best = result["masks"][0][0]
        assert best["sequence"].startswith("Paris is the") and "[MASK]" not in best["sequence"]
    assert name in TASKS


@torch.no_grad()
def test_pair_predictors_pass_token_types_as_transformers(bert_folders):
    """QA windows, multiple-choice scores, pair features and the server's cross-encoder scores
    equal transformers' Bert models given BertTokenizer's token types (and differ without them)."""
    from roberta.serve import pair_scores
    from roberta.tasks import Classifier, MultipleChoice, QuestionAnswerer
    from roberta.tasks.classify import TextExample, classification_features
    from roberta.tasks.common import outputs

    ref_tok = transformers.BertTokenizer.from_pretrained(bert_folders["qa"])
    questions = ["who visited paris?", "what is blue?"]
    contexts = ["angela merkel visited paris.", "the sky."]
    qa = QuestionAnswerer.from_pretrained(bert_folders["qa"], device="cpu")
    enc = qa.tokenizer(questions, contexts)
    assert [max(t) for t in enc["token_type_ids"]] == [1, 1]
    windows = qa.run(enc["input_ids"], 8, qa._span_logits, enc["token_type_ids"])
    hf = transformers.BertForQuestionAnswering.from_pretrained(bert_folders["qa"]).eval()
    for i, (start, end) in enumerate(windows):
        ref = hf(**ref_tok(questions[i], contexts[i], return_tensors="pt"))
        assert (ref.start_logits[0] - start).abs().max() < TOL and (ref.end_logits[0] - end).abs().max() < TOL
    untyped = qa.run(enc["input_ids"], 8, qa._span_logits)
    assert (untyped[0][0] - windows[0][0]).abs().max() > 1e-4

    chooser = MultipleChoice.from_pretrained(bert_folders["multiple-choice"], device="cpu")
    choices = ["blue.", "green.", "a very long choice of many words."]
    got = chooser.choose("the sky is", choices)["scores"]
    hf = transformers.BertForMultipleChoice.from_pretrained(bert_folders["multiple-choice"]).eval()
    batch = ref_tok(["the sky is"] * 3, choices, padding=True, return_tensors="pt")
    want = hf(**{k: v[None] for k, v in batch.items()}).logits[0].softmax(-1)
    assert (torch.tensor(got) - want).abs().max() < TOL

    classifier = Classifier.from_pretrained(bert_folders["classify"], device="cpu")
    hf = transformers.BertForSequenceClassification.from_pretrained(bert_folders["classify"]).eval()
    want = hf(**ref_tok(questions, contexts, padding=True, return_tensors="pt")).logits
    examples = [TextExample(q, c, "pos", i) for i, (q, c) in enumerate(zip(questions, contexts))]
    features = classification_features(classifier.tokenizer, examples, {"neg": 0, "pos": 1}, 64)
    assert "token_type_ids" in features[0]
    (out,) = outputs(classifier.model, features, 8, classifier.tokenizer.pad_token_id)
    assert (out.logits - want).abs().max() < TOL
    scores = pair_scores(classifier, list(zip(questions, contexts)), 8)
    assert (torch.tensor(scores) - want.softmax(-1)[:, -1]).abs().max() < TOL


def test_finetune_and_evaluate_a_bert_pair_classifier(bert_folders, tmp_path, capsys):
    """`roberta finetune classify` with a text-pair column on a BERT folder: features carry token
    types through the batch builder into training, evaluation reads them back, the run's folders
    are BERT checkpoints that transformers loads."""
    from roberta.cli import main

    texts = ("a dog", "a cat", "the sky")
    rows = ["text\tpair\tlabel"] + [f"{a}\t{b}\t{int(a == b)}" for a in texts for b in texts]
    data = tmp_path / "pairs.tsv"
    data.write_text("\n".join(rows * 3) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    argv = f"finetune classify --train {data} --dev {data} --model {bert_folders['fill-mask']} --out {out}".split()
    argv += "--text-pair-column pair --epochs 1 --batch-size 8 --no-progress".split()
    assert main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    evaluate = f"evaluate classify --model {out / 'last'} --data {data} --text-pair-column pair".split()
    assert main([*evaluate, "--json"]) == 0, capsys.readouterr().err
    assert set(json.loads(capsys.readouterr().out)) == {"accuracy", "macro_f1"}
    config = json.loads((out / "last" / "config.json").read_text())
    assert config["model_type"] == "bert" and config["architectures"] == ["BertForSequenceClassification"]
    transformers.AutoModelForSequenceClassification.from_pretrained(out / "last")
    types = transformers.AutoTokenizer.from_pretrained(out / "last")("a", "b")["token_type_ids"]
    assert types == [0, 0, 0, 1, 1]


def test_a_bert_folder_is_served_as_the_python_api(bert_folders):
    import asyncio

    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from roberta.serve import build_app
    from roberta.tasks import QuestionAnswerer

    predictor = QuestionAnswerer.from_pretrained(bert_folders["qa"], device="cpu")
    body = {"question": ["Who visited Paris?"], "context": ["Angela Merkel visited Paris."]}

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=build_app(predictor, "qa", "bert-qa"))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/qa", json=body)

    reply = asyncio.run(post())
    assert reply.status_code == 200, reply.text
    want = predictor.answer(body["question"], body["context"])
    assert reply.json()["outputs"][0]["answer"] == want[0]["answer"]
    assert reply.json()["outputs"][0]["score"] == pytest.approx(want[0]["score"], abs=1e-6)


@pytest.mark.parametrize("name", ["classify", "multiple-choice"])
def test_a_bert_onnx_graph_takes_token_types(name, bert_folders, tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    from roberta.export import export_checkpoint, max_difference, onnxruntime_difference

    path, model, tokenizer = export_checkpoint(bert_folders[name], tmp_path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    texts = ["a gripping film", "dull", "the sky is blue"]
    assert onnxruntime_difference(path, model, tokenizer, texts) < 1e-5
    enc = tokenizer(texts[2:] * 2, ["blue.", "a long green choice"], padding=True, return_tensors="pt")
    inputs = [enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]]
    if name == "multiple-choice":
        inputs = [x[None] for x in inputs]  # (1, choices, T)
    assert max_difference(path, model, *inputs) < 1e-5
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "bert"


def test_attention_of_a_bert_pair(bert_folders, tmp_path, capsys):
    from roberta.cli import main
    from roberta.visualize import SPECIAL_TOKENS

    out = tmp_path / "attention.html"
    argv = [
        "attention",
        "the sky is blue",
        "--pair",
        "what colour?",
        "--model",
        str(bert_folders["fill-mask"]),
    ]
    assert main([*argv, "--out", str(out)]) == 0, capsys.readouterr().err  # fmt: skip
    assert out.is_file() and "[CLS]" in out.read_text(encoding="utf-8")
    assert {"[CLS]", "[SEP]"} <= SPECIAL_TOKENS


def test_explain_prediction_reads_a_bert_pair_with_its_token_types(bert_folders):
    """The score that qa's and multiple-choice's attributions explain is transformers' Bert logit
    of the pair with BertTokenizer's token types."""
    from roberta.interpret import explain
    from roberta.tasks import MultipleChoice, QuestionAnswerer

    ref_tok = transformers.BertTokenizer.from_pretrained(bert_folders["qa"])
    question, context = "who visited paris?", "angela merkel visited paris."
    qa = QuestionAnswerer.from_pretrained(bert_folders["qa"], device="cpu")
    found = explain("qa", qa, (question, context), steps=8, views=False)
    hf = transformers.BertForQuestionAnswering.from_pretrained(bert_folders["qa"]).eval()
    with torch.no_grad():
        ref = hf(**ref_tok(question, context, return_tensors="pt"))
    first, last = found.rows
    want = float(ref.start_logits[0, first] + ref.end_logits[0, last])
    assert found.views[0].f_input == pytest.approx(want, abs=1e-4)

    chooser = MultipleChoice.from_pretrained(bert_folders["multiple-choice"], device="cpu")
    choices = ["blue.", "green."]
    found = explain("multiple-choice", chooser, ("the sky is", choices), target="1", steps=8, views=False)
    hf = transformers.BertForMultipleChoice.from_pretrained(bert_folders["multiple-choice"]).eval()
    with torch.no_grad():
        batch = ref_tok(["the sky is"], [choices[1]], return_tensors="pt")
        want = float(hf(**{k: v[None] for k, v in batch.items()}).logits[0, 0])
    assert found.views[0].f_input == pytest.approx(want, abs=1e-4)
