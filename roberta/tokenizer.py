"""Tokenizer: RoBERTa's byte-level BPE, the SentencePiece vocabularies of XLM-R and CamemBERT, and
BERT's (and MiniLM's) WordPiece, built on the `tokenizers` library.

The pipeline is roberta-base's own `tokenizer.json`: a BPE model over GPT-2's byte alphabet, the
ByteLevel pre-tokenizer (spaces belong to the next word: `" Hello"` -> `ĠHello`), the ByteLevel
decoder, and RobertaProcessing, which writes `<s> A </s>` / `<s> A </s></s> B </s>` and trims the
character offsets so that they never cover a word's leading space (`trim_offsets=True`, the
ByteLevel offset rule). `<mask>` strips the space before it, so `"is <mask>."` gives `is`,
`<mask>`, `.` exactly as in pretraining.

Calling the tokenizer follows `transformers.RobertaTokenizerFast` (same ids, masks, offsets,
truncation and overflow windows); the tests hold it to that reference on the real vocabulary.

The families on RoBERTa's encoder (`FAMILIES` in roberta/config.py) bring their own tokenizers: a
`tokenizer.json` that is not byte-level BPE (XLM-R's and CamemBERT's Unigram, with their Precompiled
normalizer and Metaspace pre-tokenizer) is used as the file says, and a `sentencepiece.bpe.model`
loads with fairseq's ids (`from_sentencepiece`); both then equal transformers' tokenizer of the family.
BERT's `vocab.txt` loads with transformers' BertTokenizer pipeline (`from_wordpiece`: BertNormalizer
with the folder's lower-casing and accent stripping, BertPreTokenizer, `[CLS] A [SEP] B [SEP]`), as
does a WordPiece `tokenizer.json`; a family with token types (BERT) also returns `token_type_ids`,
0 on the first text and its specials, 1 on the second: what BertTokenizer returns. RoBERTa's
tokenizers return none, as RobertaTokenizerFast.

    tok = Tokenizer.from_pretrained("path/to/roberta-base")
    batch = tok(["Hello world", "Hi"], padding=True, return_tensors="pt")
    batch["input_ids"]       # (B, T) torch.long; pads are 1 (return_tensors="np": numpy int64)
    batch.attention_mask     # (B, T); 1 = real token, 0 = padding
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers
import torch
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors, trainers

from roberta import hub
from roberta.atomic import write_text_atomic
from roberta.config import FAMILIES, NOT_YET_SUPPORTED, family

BOS, PAD, EOS, UNK, MASK = "<s>", "<pad>", "</s>", "<unk>", "<mask>"
# RoBERTa's ids: <s>=0 <pad>=1 </s>=2 <unk>=3 (fairseq's dictionary order); <mask> is the last id.
SPECIAL_TOKENS = (BOS, PAD, EOS, UNK, MASK)
SENTENCEPIECE_FILE = "sentencepiece.bpe.model"  # XLM-R's and CamemBERT's vocabulary
WORDPIECE_FILE = "vocab.txt"  # BERT's vocabulary: one token a line, the line number its id
DEFAULT_MODEL_MAX_LENGTH = 512  # roberta-base: 514 positions = 512 tokens + the pad offset
RETURN_TENSORS = (None, "pt", "np")  # lists, torch.long tensors, numpy int64 arrays (ONNX runtimes)

logger = logging.getLogger(__name__)

_PADDING = {
    False: None,
    "do_not_pad": None,
    True: "longest",
    "longest": "longest",
    "max_length": "max_length",
}
_TRUNCATION = {
    False: None,
    "do_not_truncate": None,
    True: "longest_first",
    "longest_first": "longest_first",
    "only_first": "only_first",
    "only_second": "only_second",
}
_SPECIAL_TOKENS_MAP = {  # RoBERTa's; BERT's: _special_tokens_map
    "bos_token": BOS,
    "eos_token": EOS,
    "sep_token": EOS,
    "cls_token": BOS,
    "unk_token": UNK,
    "pad_token": PAD,
    "mask_token": {
        "content": MASK,
        "lstrip": True,
        "rstrip": False,
        "normalized": False,
        "single_word": False,
    },
}

TextInput = str | Sequence[str]  # a text, or a list of words when is_split_into_words=True


class Encoding(dict):
    """The tokenizer's output: a dict of model inputs, so that `model(**batch)` works.

    Keys: `input_ids`, `attention_mask` (1 = real token, 0 = padding), `token_type_ids` for a family
    that has them (BERT: 0 = first text and its specials, 1 = second text; pads 0), and on request
    `offset_mapping` ((start, end) character offsets into the text; (0, 0) for special tokens and
    pads), `special_tokens_mask` (1 = `<s>`, `</s>` or pad) and `overflow_to_sample_mapping` (for
    each row, the index of the input it came from). Values are lists, or torch.long tensors of
    shape (B, T) (offsets: (B, T, 2)) with `return_tensors="pt"`, or numpy int64 arrays of the
    same shapes with `return_tensors="np"` (what onnxruntime takes). Keys also read as attributes.
    """

    def __init__(self, data: dict[str, Any], encodings: list[tokenizers.Encoding]):
        super().__init__(data)
        self.encodings = encodings  # one `tokenizers.Encoding` per row

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def word_ids(self, batch_index: int = 0) -> list[int | None]:
        """Row `batch_index`'s word index for each token (None for special tokens and pads).

        With `is_split_into_words=True` this is the index into the given list of words, which is
        what token classification uses to put one label on the first token of each word.
        """
        return self.encodings[batch_index].word_ids

    def tokens(self, batch_index: int = 0) -> list[str]:
        """Row `batch_index`'s token strings as matched in the text (`<mask>` with the space it took)."""
        return self.encodings[batch_index].tokens

    def sequence_ids(self, batch_index: int = 0) -> list[int | None]:
        """Row `batch_index`'s sequence for each token: 0 = text, 1 = text_pair, None = special."""
        return self.encodings[batch_index].sequence_ids


class Tokenizer:
    """A RoBERTa-family tokenizer: text -> ids, ids -> text.

    Args:
        backend: a `tokenizers.Tokenizer` that knows its family's five special tokens (`<s> <pad>
            </s> <unk> <mask>`; BERT's `[CLS] [PAD] [SEP] [UNK] [MASK]`). A byte-level BPE one
            (RoBERTa's) gets RoBERTa's pre-tokenizer, decoder and post-processor; any other (XLM-R's
            and CamemBERT's Unigram, BERT's WordPiece) is used as it is.
        add_prefix_space: byte-level BPE only: treat the text as if it began with a space, so its
            first word gets the same ids as it would mid-sentence. roberta-base was trained without
            it (False). A SentencePiece pipeline keeps its own Metaspace setting.
        model_max_length: the longest input the model takes, in tokens (512 for roberta-base); the
            default `max_length` of truncation and of `padding="max_length"`.
        model_type: the family (`FAMILIES` in roberta/config.py), which names the tokenizer class
            that `save_pretrained` writes, its special tokens and whether it has token types; None:
            "roberta" for byte-level BPE, "bert" for WordPiece, else "camembert" when the vocabulary
            has CamemBERT's `<s>NOTUSED`, else "xlm-roberta".
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        add_prefix_space: bool = False,
        model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
        model_type: str | None = None,
    ):
        self._byte_level = _is_byte_level(backend)
        if model_type is None:
            model_type = _backend_family(backend, self._byte_level)
        self.family = family(model_type)
        self.model_type = self.family.model_type
        missing = [t for t in self.family.special_tokens if backend.token_to_id(t) is None]
        if missing:
            raise ValueError(
                f"the tokenizer lacks {self.family.name}'s special tokens {missing}; supported: the "
                f"tokenizers of {', '.join(f.name for f in FAMILIES.values())}. {NOT_YET_SUPPORTED}"
            )
        if self._byte_level:
            _set_roberta_pipeline(backend, add_prefix_space)
        backend.no_truncation()  # set per call instead (a tokenizer.json may carry its own)
        backend.no_padding()
        self._backend = backend
        self._add_prefix_space = add_prefix_space
        # Each call sets truncation and padding on the shared backend, so calls from several
        # threads (a server) must not interleave.
        self._lock = threading.Lock()
        self.model_max_length = model_max_length

    def __getstate__(self) -> dict[str, Any]:  # picklable for DataLoader workers: drop the lock
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # ---- loading ---------------------------------------------------------------------------

    @classmethod
    def from_files(cls, vocab: str | os.PathLike, merges: str | os.PathLike, **kwargs: Any) -> Tokenizer:
        """Load RoBERTa's `vocab.json` (token -> id) and `merges.txt` (BPE merges, in rank order).

        Keyword arguments (`add_prefix_space`, `model_max_length`) go to the constructor.
        """
        token_ids = json.loads(Path(vocab).read_text(encoding="utf-8"))
        return cls(_bpe_backend(token_ids, _read_merges(merges)), **kwargs)

    @classmethod
    def from_file(cls, tokenizer_json: str | os.PathLike, **kwargs: Any) -> Tokenizer:
        """Load a `tokenizers` serialization (`tokenizer.json`, as in the Hugging Face Hub's roberta-base).

        `add_prefix_space` defaults to the file's pre-tokenizer setting; other keyword arguments go
        to the constructor.
        """
        backend = tokenizers.Tokenizer.from_file(str(tokenizer_json))
        kwargs.setdefault("add_prefix_space", getattr(backend.pre_tokenizer, "add_prefix_space", False))
        return cls(backend, **kwargs)

    @classmethod
    def from_sentencepiece(
        cls, model_file: str | os.PathLike, model_type: str = "xlm-roberta", **kwargs: Any
    ) -> Tokenizer:
        """Load XLM-R's or CamemBERT's `sentencepiece.bpe.model` with fairseq's ids.

        XLM-R: `<s> <pad> </s> <unk>` are 0..3 and SentencePiece id i (from 3 on) is i + 1;
        CamemBERT: `<s>NOTUSED <pad> </s>NOTUSED <unk> <unk>NOTUSED` first and SentencePiece id i
        (from 1 on) is i + 4; `<mask>` is the last id (see `FAMILIES`). The pipeline is transformers':
        the model's Precompiled normalizer, whitespace split, Metaspace (a `▁` before every word),
        `<s> A </s>` / `<s> A </s></s> B </s>`. Needs the `sentencepiece` and `protobuf` packages
        (`pip install 'roberta[sentencepiece]'`). Keyword arguments go to the constructor.
        """
        layout = family(model_type).sentencepiece
        if layout is None:
            raise ValueError(f"model_type {model_type!r} has no SentencePiece vocabulary")
        proto = _read_sentencepiece(Path(model_file))
        return cls(_sentencepiece_backend(proto, layout), model_type=model_type, **kwargs)

    @classmethod
    def from_wordpiece(
        cls,
        vocab_file: str | os.PathLike,
        *,
        do_lower_case: bool = True,
        strip_accents: bool | None = None,
        tokenize_chinese_chars: bool = True,
        **kwargs: Any,
    ) -> Tokenizer:
        """Load BERT's (or MiniLM's) `vocab.txt`, built as transformers' BertTokenizer builds it.

        The pipeline is `tokenizers`' own BERT pieces: BertNormalizer (control characters removed,
        spaces around CJK characters when `tokenize_chinese_chars`, lower-casing when `do_lower_case`,
        accents stripped when `strip_accents`, which None makes follow `do_lower_case`, as in
        the original BERT), BertPreTokenizer (split on spaces and punctuation), WordPiece (`##`
        continuations, `[UNK]` for a word it cannot spell), and `[CLS] A [SEP]` / `[CLS] A [SEP] B
        [SEP]` with token types 0 and 1. Keyword arguments go to the constructor.
        """
        backend = _wordpiece_backend(
            _read_wordpiece_vocab(Path(vocab_file)), do_lower_case, strip_accents, tokenize_chinese_chars
        )
        return cls(backend, model_type="bert", **kwargs)

    @classmethod
    def from_fairseq(
        cls,
        encoder: str | os.PathLike,
        bpe: str | os.PathLike,
        dictionary: str | os.PathLike,
        **kwargs: Any,
    ) -> Tokenizer:
        """Load fairseq's files: GPT-2's `encoder.json` and `vocab.bpe`, and roberta's `dict.txt`.

        fairseq numbers tokens by `dict.txt`: `<s> <pad> </s> <unk>` are 0..3, line i (0-based)
        names a GPT-2 id (or, like `madeupword0000`, a literal token) that gets id i + 4, and
        `<mask>` comes last. That is exactly roberta's `vocab.json`, so both give the same ids.
        """
        token_ids = _fairseq_vocab(encoder, dictionary)
        return cls(_bpe_backend(token_ids, _read_merges(bpe)), **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        add_prefix_space: bool | None = None,
        model_max_length: int | None = None,
    ) -> Tokenizer:
        """Load from a folder, a built-in model or a Hub id (see `roberta.hub.resolve`).

        The folder may hold `tokenizer.json`, else `vocab.json` + `merges.txt`, else BERT's
        `vocab.txt` (lower-casing, accent stripping and CJK splitting from tokenizer_config.json's
        `do_lower_case`, `strip_accents`, `tokenize_chinese_chars`, as transformers reads them),
        else XLM-R's or CamemBERT's `sentencepiece.bpe.model` (the family from
        tokenizer_config.json's `tokenizer_class`, else config.json's `model_type`), else fairseq's
        `encoder.json` + `vocab.bpe` + `dict.txt` (first found wins). `tokenizer_config.json`, if
        present, gives `model_max_length` and `add_prefix_space`; arguments that are not None
        override it. When the folder also holds a model whose `config.json` has room for fewer
        tokens than that `model_max_length` (max_position_embeddings - pad_token_id - 1), the
        model's limit is used: truncation and `padding="max_length"` then fit the model.
        """
        folder = hub.resolve(name_or_path, hub.TOKENIZER_FILES)
        config_file = folder / "tokenizer_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
        if add_prefix_space is None:
            add_prefix_space = config.get("add_prefix_space")
        if model_max_length is None:
            model_max_length = config.get("model_max_length", DEFAULT_MODEL_MAX_LENGTH)
            if model_max_length > 1_000_000:  # HF writes ~1e30 for "no limit known"
                model_max_length = DEFAULT_MODEL_MAX_LENGTH
            positions = _model_max_length(folder)
            if positions is not None and positions < model_max_length:
                logger.debug(
                    "%s: the tokenizer says model_max_length %d but the model's config.json holds "
                    "positions for %d tokens; using %d",
                    folder,
                    model_max_length,
                    positions,
                    positions,
                )
                model_max_length = positions
        kwargs: dict[str, Any] = {"model_max_length": model_max_length}
        if add_prefix_space is not None:  # else tokenizer.json's own setting, or False
            kwargs["add_prefix_space"] = add_prefix_space
        if (folder / "tokenizer.json").is_file():
            return cls.from_file(folder / "tokenizer.json", **kwargs)
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            return cls.from_files(folder / "vocab.json", folder / "merges.txt", **kwargs)
        if (folder / WORDPIECE_FILE).is_file():
            kwargs.pop("add_prefix_space", None)  # a byte-level BPE setting
            bert = {
                k: config[k]
                for k in ("do_lower_case", "strip_accents", "tokenize_chinese_chars")
                if k in config
            }
            return cls.from_wordpiece(folder / WORDPIECE_FILE, **bert, **kwargs)
        if (folder / SENTENCEPIECE_FILE).is_file():
            model_type = _folder_family(folder, config)
            return cls.from_sentencepiece(folder / SENTENCEPIECE_FILE, model_type, **kwargs)
        fairseq = [folder / name for name in ("encoder.json", "vocab.bpe", "dict.txt")]
        if all(f.is_file() for f in fairseq):
            return cls.from_fairseq(*fairseq, **kwargs)
        found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise FileNotFoundError(
            f"no tokenizer in {folder} (found: {found}); supported: tokenizer.json, vocab.json + "
            f"merges.txt (RoBERTa), {WORDPIECE_FILE} (BERT, MiniLM), {SENTENCEPIECE_FILE} (XLM-R, "
            f"CamemBERT), or fairseq's encoder.json + vocab.bpe + dict.txt. {NOT_YET_SUPPORTED}"
        )

    @classmethod
    def train(
        cls,
        files: Iterable[str | os.PathLike],
        vocab_size: int,
        min_frequency: int = 2,
        **kwargs: Any,
    ) -> Tokenizer:
        """Train a new byte-level BPE on text files, with RoBERTa's special tokens and pipeline.

        Args:
            files: UTF-8 text files to learn merges from (ValueError naming the file and line of
                the first one that is not UTF-8).
            vocab_size: size of the vocabulary including the five special tokens. `<s> <pad> </s>
                <unk>` get ids 0..3 and `<mask>` the last id (vocab_size - 1, or lower if the text
                is too small to learn that many merges).
            min_frequency: a pair must occur this often to be merged.
            **kwargs: `add_prefix_space`, `model_max_length` for the constructor.
        """
        backend = tokenizers.Tokenizer(models.BPE())
        add_prefix_space = kwargs.get("add_prefix_space", False)
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size - 1,  # leave the last id for <mask>
            min_frequency=min_frequency,
            special_tokens=[BOS, PAD, EOS, UNK],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        paths = [str(f) for f in files]
        try:
            backend.train(paths, trainer)
        except Exception:  # tokenizers says only "stream did not contain valid UTF-8": find where
            for path in paths:
                _check_utf8(path)
            raise
        _add_special_tokens(backend)
        return cls(backend, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write the tokenizer so that both `from_pretrained` and transformers' AutoTokenizer load it.

        Writes `tokenizer.json`, `tokenizer_config.json` (the family's tokenizer class) and
        `special_tokens_map.json`, for byte-level BPE also `vocab.json` and `merges.txt`, and for
        WordPiece `vocab.txt` and the normalizer's settings (`do_lower_case`, ...), each atomically
        (a temp file in the folder, then a rename). Returns the folder.
        """
        folder = Path(save_directory)
        tokenizer_json = self._backend.to_str(pretty=True)
        special_map = _special_tokens_map(self.family.special_tokens)
        config = {
            "tokenizer_class": self.family.tokenizer_class,
            "model_max_length": self.model_max_length,
            **{k: v for k, v in special_map.items() if k != "mask_token"},
            "mask_token": self.mask_token,
        }
        files = {"tokenizer.json": tokenizer_json}
        if isinstance(self._backend.model, models.WordPiece):
            config.update(_wordpiece_settings(self._backend))
            token_ids = sorted(self.get_vocab().items(), key=lambda item: item[1])
            files[WORDPIECE_FILE] = "".join(f"{token}\n" for token, _ in token_ids)
        if self._byte_level:
            config.update(add_prefix_space=self.add_prefix_space, trim_offsets=True, errors="replace")
            token_ids = sorted(self.get_vocab().items(), key=lambda item: item[1])
            merges = "".join(f"{a} {b}\n" for a, b in _merges_of(tokenizer_json))
            files.update({"vocab.json": json.dumps(dict(token_ids), ensure_ascii=False)})
            files["merges.txt"] = "#version: 0.2\n" + merges
        files["tokenizer_config.json"] = json.dumps(config, indent=2) + "\n"
        files["special_tokens_map.json"] = json.dumps(special_map, indent=2) + "\n"
        for name, text in files.items():
            write_text_atomic(folder / name, text)
        return folder

    # ---- encoding --------------------------------------------------------------------------

    def __call__(
        self,
        text: TextInput | Sequence[TextInput],
        text_pair: TextInput | Sequence[TextInput] | None = None,
        *,
        padding: bool | str = False,
        truncation: bool | str = False,
        max_length: int | None = None,
        stride: int = 0,
        return_tensors: str | None = None,
        return_offsets_mapping: bool = False,
        return_special_tokens_mask: bool = False,
        return_overflowing_tokens: bool = False,
        is_split_into_words: bool = False,
        add_special_tokens: bool = True,
    ) -> Encoding:
        """Encode a text (or pair) or a batch of them, like `transformers.RobertaTokenizerFast`.

        Args:
            text: a string, or a list of strings (a batch). With `is_split_into_words=True`: a list
                of words, or a list of such lists (a batch).
            text_pair: the second sequence (e.g. the context after a question), shaped like `text`;
                encoded as `<s> A </s></s> B </s>` (BERT: `[CLS] A [SEP] B [SEP]`, token types 0/1).
            padding: False (none); True or "longest" (to the longest row); "max_length" (to
                `max_length`, default `model_max_length`). Pads are id 1 on the right, with
                attention_mask 0 and offsets (0, 0).
            truncation: False; True or "longest_first" (trim the longer sequence, token by token);
                "only_first" / "only_second" (trim only that one of a pair) — to `max_length`,
                default `model_max_length`. `max_length` without truncation does not truncate.
            max_length: length in tokens, special tokens included.
            stride: with truncation, how many tokens consecutive overflow windows share.
            return_tensors: None (lists), "pt" (torch.long tensors) or "np" (numpy int64 arrays,
                the same shapes); with either, rows must be equally long.
            return_offsets_mapping: add `offset_mapping`, (start, end) character offsets.
            return_special_tokens_mask: add `special_tokens_mask` (1 = special token or pad).
            return_overflowing_tokens: with truncation, also return the truncated-away tokens as
                extra rows (windows of the truncated sequence overlapping by `stride`) and add
                `overflow_to_sample_mapping`; the output is then always batched.
            is_split_into_words: the input is already split into words; each word is encoded as
                if preceded by a space (RoBERTa's `add_prefix_space=True` behaviour; SentencePiece's
                Metaspace puts `▁` before each word), and `word_ids()` indexes the given words.
            add_special_tokens: add `<s>`/`</s>` around the sequence(s).

        Returns:
            An `Encoding`. A single (unbatched) input without overflow gives flat lists (a row);
            a batch gives one row per input; `return_tensors="pt"` or `"np"` always gives (B, T).
        """
        if return_tensors not in RETURN_TENSORS:
            raise ValueError(
                f"return_tensors must be None (lists), 'pt' (torch) or 'np' (numpy), got {return_tensors!r}"
            )
        inputs, batched = _as_batch(text, text_pair, is_split_into_words)
        encodings = self._encode_batch(
            inputs, is_split_into_words, add_special_tokens, padding, truncation, max_length, stride
        )
        data, rows = _collect(
            encodings,
            return_overflowing_tokens,
            return_special_tokens_mask,
            return_offsets_mapping,
            self.family.token_types,
        )
        if return_tensors is not None:
            return Encoding(_to_tensors(data, return_tensors), rows)
        if not batched and not return_overflowing_tokens:
            data = {key: value[0] for key, value in data.items()}
        return Encoding(data, rows)

    def _encode_batch(
        self,
        inputs: list[Any],
        is_split_into_words: bool,
        add_special_tokens: bool,
        padding: bool | str,
        truncation: bool | str,
        max_length: int | None,
        stride: int,
    ) -> list[tokenizers.Encoding]:
        """Run the backend with this call's settings, then restore its defaults.

        Pre-split words are encoded with a space before every word (add_prefix_space=True), as
        roberta-base saw words mid-sentence in pretraining.
        """
        pad_to = _lookup(_PADDING, padding, "padding")
        strategy = _lookup(_TRUNCATION, truncation, "truncation")
        length = max_length if max_length is not None else self.model_max_length
        backend = self._backend
        with self._lock:
            try:
                if self._byte_level and is_split_into_words and not self._add_prefix_space:
                    _set_roberta_pipeline(backend, add_prefix_space=True)
                if strategy is not None:
                    backend.enable_truncation(length, stride=stride, strategy=strategy)
                if pad_to is not None:
                    pad_length = length if pad_to == "max_length" else None
                    backend.enable_padding(
                        pad_id=self.pad_token_id, pad_token=self.family.special_tokens[1], length=pad_length
                    )
                return backend.encode_batch(
                    inputs, is_pretokenized=is_split_into_words, add_special_tokens=add_special_tokens
                )
            finally:
                if self._byte_level:
                    _set_roberta_pipeline(backend, self._add_prefix_space)
                backend.no_truncation()
                backend.no_padding()

    def tokenize(self, text: str) -> list[str]:
        """The token strings of `text`, without special tokens (`"Hello world"` -> `["Hello", "Ġworld"]`)."""
        return self._backend.encode(text, add_special_tokens=False).tokens

    # ---- decoding and the vocabulary -------------------------------------------------------

    def decode(
        self, ids: Sequence[int] | torch.Tensor | np.ndarray, skip_special_tokens: bool = False
    ) -> str:
        """Turn one row of ids (a list, a 1-D tensor or numpy array) back into text.

        `skip_special_tokens=True` drops `<s> </s> <pad> <unk> <mask>`; then
        `decode(tok(x)["input_ids"], skip_special_tokens=True) == x` for any text x.
        """
        if isinstance(ids, (torch.Tensor, np.ndarray)):
            ids = ids.tolist()
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def batch_decode(
        self,
        batch_ids: Sequence[Sequence[int]] | torch.Tensor | np.ndarray,
        skip_special_tokens: bool = False,
    ) -> list[str]:
        """Decode each row of a batch (a list of lists, a (B, T) tensor or array); see `decode`."""
        if isinstance(batch_ids, (torch.Tensor, np.ndarray)):
            batch_ids = batch_ids.tolist()
        rows = [list(ids) for ids in batch_ids]
        return self._backend.decode_batch(rows, skip_special_tokens=skip_special_tokens)

    def token_text(self, token_id: int) -> str:
        """The text a token stands for inside running text: with the space before it when it begins
        a word (RoBERTa's `Ġcapital`, XLM-R's `▁capital`, BERT's `capital` -> " capital"), without
        when it continues one (`ital`, BERT's `##ital` -> "ital"). What fill-mask writes at a mask."""
        if self._byte_level:
            return self.decode([token_id])
        token = self._backend.id_to_token(token_id)
        model = self._backend.model
        if isinstance(model, models.WordPiece):
            prefix = model.continuing_subword_prefix
            return token[len(prefix) :] if token.startswith(prefix) else " " + token
        return " " + token[1:] if token.startswith("▁") else token  # SentencePiece's Metaspace

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> str | list[str]:
        """Token string(s) of an id or a list of ids (`31414` -> `"Hello"`)."""
        if isinstance(ids, int):
            return self._backend.id_to_token(ids)
        return [self._backend.id_to_token(i) for i in ids]

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        """Id(s) of a token string or a list of them; unknown tokens give `unk_token_id`."""
        if isinstance(tokens, str):
            token_id = self._backend.token_to_id(tokens)
            return self.unk_token_id if token_id is None else token_id
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def get_vocab(self) -> dict[str, int]:
        """Token string -> id, special tokens included."""
        return self._backend.get_vocab(with_added_tokens=True)

    def __len__(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (50265 for roberta-base)."""
        return len(self)

    @property
    def add_prefix_space(self) -> bool:
        return self._add_prefix_space

    @property
    def backend(self) -> tokenizers.Tokenizer:
        """The underlying `tokenizers.Tokenizer` (read it; changing it changes this tokenizer)."""
        return self._backend

    @property
    def bos_token_id(self) -> int:
        """The first token's id: `<s>` (BERT: `[CLS]`)."""
        return self._backend.token_to_id(self.family.special_tokens[0])

    cls_token_id = bos_token_id

    @property
    def pad_token_id(self) -> int:
        return self._backend.token_to_id(self.family.special_tokens[1])

    @property
    def eos_token_id(self) -> int:
        """The separator's id: `</s>` (BERT: `[SEP]`)."""
        return self._backend.token_to_id(self.family.special_tokens[2])

    sep_token_id = eos_token_id

    @property
    def unk_token_id(self) -> int:
        return self._backend.token_to_id(self.family.special_tokens[3])

    @property
    def mask_token_id(self) -> int:
        return self._backend.token_to_id(self.family.special_tokens[4])

    @property
    def mask_token(self) -> str:
        """`<mask>` (BERT: `[MASK]`): what a fill-mask text writes where the word goes."""
        return self.family.special_tokens[4]

    @property
    def special_tokens(self) -> tuple[str, ...]:
        """The family's five special token strings: first, pad, separator, unknown, mask."""
        return self.family.special_tokens

    @property
    def token_types(self) -> bool:
        """Whether encodings carry `token_type_ids` (the family's models take them: BERT)."""
        return self.family.token_types

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, model_max_length={self.model_max_length}, "
            f"add_prefix_space={self.add_prefix_space}, model_type={self.model_type!r})"
        )


# ---- building the backend ----------------------------------------------------------------------


def _bpe_backend(token_ids: dict[str, int], merges: list[tuple[str, str]]) -> tokenizers.Tokenizer:
    """A `tokenizers.Tokenizer` with a byte-level BPE model and RoBERTa's special tokens."""
    backend = tokenizers.Tokenizer(models.BPE(vocab=token_ids, merges=merges))
    _add_special_tokens(backend)
    return backend


def _add_special_tokens(backend: tokenizers.Tokenizer) -> None:
    # lstrip: "is <mask>" -> "is", "<mask>": the mask takes the place of a word *with* its space.
    special = [AddedToken(t, lstrip=t == MASK, normalized=False, special=True) for t in SPECIAL_TOKENS]
    backend.add_special_tokens(special)


def _set_roberta_pipeline(backend: tokenizers.Tokenizer, add_prefix_space: bool) -> None:
    """Set roberta-base's pre-tokenizer, decoder and post-processor on `backend`, in place."""
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    backend.decoder = decoders.ByteLevel()
    # RobertaProcessing adds <s>/</s> and does the ByteLevel offset trimming (trim_offsets=True).
    backend.post_processor = processors.RobertaProcessing(
        (EOS, backend.token_to_id(EOS)),
        (BOS, backend.token_to_id(BOS)),
        trim_offsets=True,
        add_prefix_space=add_prefix_space,
    )


def _backend_family(backend: tokenizers.Tokenizer, byte_level: bool) -> str:
    """The family a backend's vocabulary belongs to: byte-level BPE is RoBERTa's, WordPiece BERT's,
    a SentencePiece Unigram XLM-R's or CamemBERT's."""
    if byte_level:
        return "roberta"
    if isinstance(backend.model, models.WordPiece):
        return "bert"
    return _sentencepiece_family(backend)


def _special_tokens_map(special_tokens: tuple[str, ...]) -> dict[str, Any]:
    """special_tokens_map.json of a family: RoBERTa's (with its `<mask>` that takes the space
    before it), or BERT's `[CLS] [PAD] [SEP] [UNK] [MASK]` (no bos/eos)."""
    if special_tokens == SPECIAL_TOKENS:
        return _SPECIAL_TOKENS_MAP
    names = ("cls_token", "pad_token", "sep_token", "unk_token", "mask_token")
    return dict(zip(names, special_tokens))


def _read_wordpiece_vocab(path: Path) -> dict[str, int]:
    """vocab.txt: token -> its line number (0-based), as transformers' load_vocab reads it."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e}); is it BERT's vocab.txt?") from None
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    vocab: dict[str, int] = {}
    for i, token in enumerate(lines):
        vocab[token.removesuffix("\r")] = i  # a later duplicate wins, as in transformers
    return vocab


def _wordpiece_backend(
    vocab: dict[str, int], lowercase: bool, strip_accents: bool | None, chinese_chars: bool
) -> tokenizers.Tokenizer:
    """transformers' BertTokenizer pipeline on a WordPiece vocabulary (see `from_wordpiece`)."""
    cls_, pad, sep, unk, mask = FAMILIES["bert"].special_tokens
    backend = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token=unk))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=chinese_chars, strip_accents=strip_accents, lowercase=lowercase
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    specials = [t for t in (pad, unk, cls_, sep, mask) if t in vocab]  # a missing one: the constructor says
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
    if cls_ in vocab and sep in vocab:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{cls_}:0 $A:0 {sep}:0",
            pair=f"{cls_}:0 $A:0 {sep}:0 $B:1 {sep}:1",
            special_tokens=[(cls_, vocab[cls_]), (sep, vocab[sep])],
        )
    return backend


def _wordpiece_settings(backend: tokenizers.Tokenizer) -> dict[str, Any]:
    """tokenizer_config.json's BertTokenizer settings, read from the backend's BertNormalizer."""
    norm = backend.normalizer
    if not isinstance(norm, normalizers.BertNormalizer):
        return {}
    return {
        "do_lower_case": norm.lowercase,
        "strip_accents": norm.strip_accents,
        "tokenize_chinese_chars": norm.handle_chinese_chars,
    }


def _is_byte_level(backend: tokenizers.Tokenizer) -> bool:
    """Whether `backend` is RoBERTa's kind: a BPE model with the ByteLevel pre-tokenizer (or none
    yet, as built from vocab.json + merges.txt)."""
    pre = backend.pre_tokenizer
    return isinstance(backend.model, models.BPE) and (
        pre is None or isinstance(pre, pre_tokenizers.ByteLevel)
    )


def _sentencepiece_family(backend: tokenizers.Tokenizer) -> str:
    """CamemBERT's vocabulary starts with `<s>NOTUSED`; XLM-R's with `<s>`."""
    return "camembert" if backend.token_to_id("<s>NOTUSED") is not None else "xlm-roberta"


def _folder_family(folder: Path, tokenizer_config: dict[str, Any]) -> str:
    """The family of a folder's `sentencepiece.bpe.model`: tokenizer_config.json's tokenizer_class,
    else config.json's model_type; ValueError when neither names XLM-R or CamemBERT."""
    by_class = {f.tokenizer_class: f.model_type for f in FAMILIES.values() if f.sentencepiece}
    name = str(tokenizer_config.get("tokenizer_class", "")).removesuffix("Fast")
    if name in by_class:
        return by_class[name]
    try:
        model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        model_type = None
    if model_type in FAMILIES and FAMILIES[model_type].sentencepiece:
        return model_type
    raise ValueError(
        f"{folder / SENTENCEPIECE_FILE}: cannot tell whose SentencePiece vocabulary it is (tokenizer_config.json's "
        f"tokenizer_class {name or None!r}, config.json's model_type {model_type!r}); supported: "
        f"{', '.join(f'{f.model_type} ({f.tokenizer_class})' for f in FAMILIES.values() if f.sentencepiece)}"
    )


def _read_sentencepiece(path: Path) -> Any:
    """A SentencePiece `ModelProto` (its pieces, scores, normalizer spec), read with the protobuf
    classes that the `sentencepiece` package ships."""
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as e:
        raise ImportError(
            f"reading {path.name} needs the sentencepiece and protobuf packages ({e}): "
            "pip install 'roberta[sentencepiece]'"
        ) from None
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as e:  # protobuf's DecodeError, or an OSError
        raise ValueError(
            f"{path} could not be read as a SentencePiece model ({type(e).__name__}: {e})"
        ) from None
    if proto.trainer_spec.model_type != 1:  # UNIGRAM (XLM-R's and CamemBERT's, despite the .bpe name)
        raise ValueError(f"{path} is not a Unigram SentencePiece model (XLM-R's and CamemBERT's kind)")
    return proto


def _sentencepiece_backend(proto: Any, layout: tuple[tuple[str, ...], int]) -> tokenizers.Tokenizer:
    """A Unigram `tokenizers.Tokenizer` in fairseq's order, set up as transformers builds XLM-R's
    and CamemBERT's tokenizers from the same file (so the two give the same ids and offsets)."""
    leading, first = layout
    # CamemBERT's unused copy of <unk> is scored down so that it is never chosen over the real one
    vocab = [(t, -100.0 if t == "<unk>NOTUSED" else 0.0) for t in leading]
    vocab += [(p.piece, p.score) for p in proto.pieces[first:]]
    vocab.append((MASK, 0.0))
    backend = tokenizers.Tokenizer(models.Unigram(vocab, unk_id=leading.index(UNK), byte_fallback=False))
    if proto.normalizer_spec.precompiled_charsmap:
        backend.normalizer = normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap)
    metaspace = dict(replacement="▁", prepend_scheme="always", split=True)
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(**metaspace)]
    )
    backend.decoder = decoders.Metaspace(**metaspace)
    _add_special_tokens(backend)
    bos, eos = (BOS, backend.token_to_id(BOS)), (EOS, backend.token_to_id(EOS))
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", pair=f"{BOS} $A {EOS} {EOS} $B {EOS}", special_tokens=[bos, eos]
    )
    return backend


def _read_merges(path: str | os.PathLike) -> list[tuple[str, str]]:
    """BPE merges from `merges.txt` / `vocab.bpe`: one `left right` pair a line after `#version`."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    pairs = [line.split(" ") for line in lines if line and not line.startswith("#version")]
    return [(left, right) for left, right in pairs]


def _fairseq_vocab(encoder: str | os.PathLike, dictionary: str | os.PathLike) -> dict[str, int]:
    """Token -> RoBERTa id from GPT-2's `encoder.json` and fairseq's `dict.txt` (see `from_fairseq`)."""
    gpt2_tokens = {i: token for token, i in json.loads(Path(encoder).read_text(encoding="utf-8")).items()}
    token_ids = {BOS: 0, PAD: 1, EOS: 2, UNK: 3}
    for line in Path(dictionary).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        symbol = line.split(" ")[0]
        token = gpt2_tokens[int(symbol)] if symbol.isdigit() else symbol
        token_ids[token] = len(token_ids)
    token_ids[MASK] = len(token_ids)
    return token_ids


def _model_max_length(folder: Path) -> int | None:
    """The most tokens the position tables of the model in `folder` hold (config.json's
    max_position_embeddings - pad_token_id - 1, or all of them by BERT's rule: positions from 0;
    the smaller stack's for an encoder-decoder), or None without a readable config.json that says
    (loading the model reports a broken one)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    limits = []
    for stack in (config, config.get("encoder"), config.get("decoder")):
        if isinstance(stack, dict) and isinstance(stack.get("max_position_embeddings"), int):
            pad = stack.get("pad_token_id", 1)
            offset = (pad if isinstance(pad, int) else 1) + 1
            known = (
                FAMILIES.get(stack.get("model_type")) if isinstance(stack.get("model_type"), str) else None
            )
            if known is not None and not known.positions_after_pad:
                offset = 0
            limit = stack["max_position_embeddings"] - offset
            if limit >= 1:
                limits.append(limit)
    return min(limits, default=None)


def _check_utf8(path: str) -> None:
    """Raise ValueError naming `path`, the line and the byte, unless the file is UTF-8 text."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):  # b"\n" is never inside a UTF-8 character
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"{path} is not UTF-8 text: line {number}, byte {e.start + 1} "
                    f"({line[e.start : e.start + 1]!r}) is not valid UTF-8; convert the file to UTF-8 "
                    "first (e.g. iconv -f latin1 -t utf-8, with the file's own encoding)"
                ) from None


def _merges_of(tokenizer_json: str) -> list[tuple[str, str]]:
    """The BPE merges in a `tokenizer.json`, in rank order (tokenizers >= 0.20 stores pairs, older "a b")."""
    merges = json.loads(tokenizer_json)["model"]["merges"]
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]


# ---- call helpers ------------------------------------------------------------------------------


def _lookup(table: dict[Any, str | None], value: bool | str, name: str) -> str | None:
    """Map a padding/truncation argument to the backend's name for it (None = off)."""
    try:
        return table[value]
    except (KeyError, TypeError):
        allowed = ", ".join(repr(k) for k in table)
        raise ValueError(f"{name} must be one of {allowed}; got {value!r}") from None


def _is_batch(text: Any, is_split_into_words: bool) -> bool:
    if not isinstance(text, (list, tuple)):
        return False
    # Split words: a list of str is one input; a list of lists (or of anything else) is a batch.
    return not is_split_into_words or not text or not isinstance(text[0], str)


def _check_input(value: Any, where: str, is_split_into_words: bool) -> None:
    """Raise TypeError naming `where` unless `value` is a str (or a list of str words)."""
    if not is_split_into_words:
        if not isinstance(value, str):
            raise TypeError(f"{where} must be a str, got {type(value).__name__}")
        return
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{where} must be a list of words (str), got {type(value).__name__}")
    for j, word in enumerate(value):
        if not isinstance(word, str):
            raise TypeError(f"{where}[{j}] must be a str (a word), got {type(word).__name__}")


def _as_batch(text: Any, text_pair: Any, is_split_into_words: bool) -> tuple[list[Any], bool]:
    """Check the inputs and return (a list for `encode_batch`, whether the input was a batch)."""
    batched = _is_batch(text, is_split_into_words)
    texts = list(text) if batched else [text]
    if not texts:
        raise ValueError("got an empty batch; pass at least one text")
    pairs = None
    if text_pair is not None:
        if _is_batch(text_pair, is_split_into_words) != batched:
            raise ValueError("text_pair must be a batch (list) exactly when text is one")
        pairs = list(text_pair) if batched else [text_pair]
        if len(pairs) != len(texts):
            raise ValueError(f"text has {len(texts)} items but text_pair has {len(pairs)}")
    for name, values in (("text", texts), ("text_pair", pairs or [])):
        for i, value in enumerate(values):
            _check_input(value, f"{name}[{i}]" if batched else name, is_split_into_words)
    if is_split_into_words:  # tokenizers wants pre-split inputs as lists
        texts = [list(t) for t in texts]
        pairs = None if pairs is None else [list(p) for p in pairs]
    return (texts if pairs is None else list(zip(texts, pairs))), batched


def _collect(
    encodings: list[tokenizers.Encoding],
    overflow: bool,
    special_tokens_mask: bool,
    offsets: bool,
    token_types: bool = False,
) -> tuple[dict[str, list[Any]], list[tokenizers.Encoding]]:
    """The output columns, one row per encoding (and per overflow window when `overflow`)."""
    rows: list[tokenizers.Encoding] = []
    sample: list[int] = []
    for i, encoding in enumerate(encodings):
        group = [encoding, *encoding.overflowing] if overflow else [encoding]
        rows += group
        sample += [i] * len(group)
    data: dict[str, list[Any]] = {"input_ids": [e.ids for e in rows]}
    if token_types:
        data["token_type_ids"] = [e.type_ids for e in rows]
    data["attention_mask"] = [e.attention_mask for e in rows]
    if special_tokens_mask:
        data["special_tokens_mask"] = [e.special_tokens_mask for e in rows]
    if offsets:
        data["offset_mapping"] = [e.offsets for e in rows]
    if overflow:
        data["overflow_to_sample_mapping"] = sample
    return data, rows


def _to_tensors(data: dict[str, list[Any]], kind: str) -> dict[str, torch.Tensor | np.ndarray]:
    """Lists of rows -> torch.long tensors ("pt") or numpy int64 arrays ("np"): (B, T), offsets
    (B, T, 2), sample mapping (B,)."""
    lengths = {len(row) for row in data["input_ids"]}
    if len(lengths) > 1:
        raise ValueError(
            f"cannot make a tensor from rows of different lengths {sorted(lengths)}; "
            "pass padding=True (or truncation=True with padding='max_length')"
        )
    if kind == "np":
        return {key: np.array(value, dtype=np.int64) for key, value in data.items()}
    return {key: torch.tensor(value, dtype=torch.long) for key, value in data.items()}
