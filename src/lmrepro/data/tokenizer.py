"""Tokenizers behind one interface: train the embedded default's byte-level BPE, and load a tokenizer folder.

A tokenizer folder (``results/tokenizers/<name>/``) always holds a Hugging Face ``tokenizer.json`` +
``tokenizer_config.json``, so the HF export copies it verbatim and ``transformers.AutoTokenizer`` loads
what we trained on. Tokenizers imported from a tiktoken or SentencePiece ``tokenizer.model`` keep that file
too, plus ``lmrepro_tokenizer.json`` naming the kind: our tokenize step then encodes with the original
engine (tiktoken, sentencepiece), and ``tokenizer.json`` is its conversion for the export
(``data/tokenizer_import.py`` checks that the two agree).

BOS/EOS handling is explicit: ``encode_batch`` never adds special tokens, and text that happens to spell a
special token (``"<|end_of_text|>"`` in a web page) is encoded as plain text, by every engine alike; the
tokenize step adds BOS and EOS itself.
"""

from __future__ import annotations

import base64
import binascii
import json
from abc import ABC, abstractmethod
from pathlib import Path

from lmrepro.io import atomic_folder, file_sha256

BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"
PAD_TOKEN = "<|pad|>"
# The byte-level BPE's special tokens, in id order (the trainer gives them the first ids).
BPE_SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)
META_FILE = "lmrepro_tokenizer.json"
MODEL_FILE = "tokenizer.model"

# Llama-3 (meta-llama/llama3 tokenizer.py): 256 special tokens after the BPE ranks, and its split regex.
LLAMA3_SPECIAL_TOKENS = [
    BOS_TOKEN,
    EOS_TOKEN,
    *[f"<|reserved_special_token_{i}|>" for i in range(4)],
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|reserved_special_token_4|>",
    "<|eot_id|>",
    *[f"<|reserved_special_token_{i}|>" for i in range(5, 256 - 5)],
]
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


class TextTokenizer(ABC):
    """A loaded tokenizer with explicit special-token ids.

    ``sha256`` identifies the vocabulary: of tokenizer.json (kinds bpe, hf) or of tokenizer.model
    (tiktoken, sentencepiece). The shards' index file records it, so shards are never read with another
    tokenizer.
    """

    kind: str

    def __init__(
        self,
        path: Path,
        vocab_size: int,
        bos_id: int | None,
        eos_id: int,
        sha256: str,
        pad_id: int | None = None,
    ):
        self.path = path
        self.vocab_size = vocab_size
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.pad_id = pad_id
        self.sha256 = sha256

    @abstractmethod
    def token_to_id(self, token: str) -> int | None:
        """The id of one token string (a special token too), None if the vocabulary lacks it."""

    @abstractmethod
    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without any special tokens."""

    @abstractmethod
    def decode(self, ids: list[int]) -> str: ...

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.path}, vocab_size={self.vocab_size}, bos_id={self.bos_id}, "
            f"eos_id={self.eos_id})"
        )


class HFTokenizer(TextTokenizer):
    """A Hugging Face `tokenizers` tokenizer.json (kinds bpe and hf)."""

    kind = "hf"

    def __init__(self, file: Path):
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(file))
        tok.encode_special_tokens = True  # "<|end_of_text|>" inside a document is text, not EOS
        config_file = file.parent / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        eos_token = _token_content(config.get("eos_token", EOS_TOKEN))
        bos_token = _token_content(config.get("bos_token", BOS_TOKEN))
        eos_id = tok.token_to_id(eos_token) if eos_token else None
        if eos_id is None:
            raise ValueError(
                f"{file}: EOS token {eos_token!r} is not in the vocabulary; documents need a separator "
                "(set eos_token in tokenizer_config.json or the tokenizer's eos_token in config.yaml)"
            )
        bos_id = tok.token_to_id(bos_token) if bos_token else None
        if bos_id == eos_id:  # GPT-2 style (<|endoftext|> for both): one separator between documents
            bos_id = None
        vocab_size = tok.get_vocab_size(with_added_tokens=True)
        pad_token = _token_content(config.get("pad_token"))
        pad_id = tok.token_to_id(pad_token) if pad_token else None
        super().__init__(file.parent, vocab_size, bos_id, eos_id, file_sha256(file), pad_id)
        self._tok = tok

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)


def _token_content(token: object) -> str | None:
    """tokenizer_config.json stores a special token as a string or as an AddedToken dict."""
    if isinstance(token, dict):
        return token.get("content")
    return token if isinstance(token, str) else None


class TiktokenTokenizer(TextTokenizer):
    """Llama-3's tokenizer.model: base64 BPE ranks, Llama-3's regex, 256 special tokens after the ranks."""

    kind = "tiktoken"

    def __init__(self, file: Path):
        enc = load_llama3_tiktoken(file)
        bos_id, eos_id = enc.encode_single_token(BOS_TOKEN), enc.encode_single_token(EOS_TOKEN)
        super().__init__(file.parent, enc.n_vocab, bos_id, eos_id, file_sha256(file))
        self._enc = enc

    def token_to_id(self, token: str) -> int | None:
        try:
            return self._enc.encode_single_token(token)
        except KeyError:
            return None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # encode_ordinary: special-token text is plain text; a loop beats encode_ordinary_batch's threads here
        return [self._enc.encode_ordinary(t) for t in texts]

    def decode(self, ids: list[int]) -> str:
        return self._enc.decode(ids)


def read_tiktoken_ranks(file: Path) -> dict[bytes, int]:
    """BPE ranks of a tiktoken file. Not tiktoken's loader: it caches files by path in a temp folder, so a
    changed file at the same path would silently load the old ranks."""
    ranks: dict[bytes, int] = {}
    for line_number, line in enumerate(file.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error) as e:  # a foreign file: field count, base64 or rank
            raise ValueError(
                f"{file}: not a tiktoken BPE ranks file (`base64-token rank` lines): line {line_number}: {e}"
            ) from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{file}: BPE ranks are not 0..{len(ranks) - 1} without gaps or repeats")
    return ranks


def load_llama3_tiktoken(file: Path):
    """A tiktoken Encoding from a Llama-3 style ranks file (one `base64(token) rank` per line)."""
    import tiktoken

    ranks = read_tiktoken_ranks(file)
    specials = {token: len(ranks) + i for i, token in enumerate(LLAMA3_SPECIAL_TOKENS)}
    return tiktoken.Encoding(
        name=f"lmrepro-{file.parent.name}",
        pat_str=LLAMA3_PATTERN,
        mergeable_ranks=ranks,
        special_tokens=specials,
    )


class SentencePieceTokenizer(TextTokenizer):
    """A SentencePiece tokenizer.model (Llama-2, Code Llama, Llemma: BOS 1, EOS 2)."""

    kind = "sentencepiece"

    def __init__(self, file: Path):
        sp = load_sentencepiece(file)
        if sp.eos_id() < 0:
            raise ValueError(f"{file}: the SentencePiece model has no EOS piece; documents need a separator")
        bos_id = sp.bos_id() if sp.bos_id() >= 0 else None
        pad_id = sp.pad_id() if sp.pad_id() >= 0 else None
        super().__init__(file.parent, sp.get_piece_size(), bos_id, sp.eos_id(), file_sha256(file), pad_id)
        self._sp = sp

    def token_to_id(self, token: str) -> int | None:
        i = self._sp.piece_to_id(token)  # unknown pieces map to the unk id
        return i if self._sp.id_to_piece(i) == token else None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._sp.encode(texts, out_type=int, num_threads=1)

    def decode(self, ids: list[int]) -> str:
        return self._sp.decode(ids)


def load_sentencepiece(file: Path):
    import sentencepiece as spm

    try:
        return spm.SentencePieceProcessor(model_file=str(file))
    except (RuntimeError, OSError) as e:
        raise ValueError(f"{file}: not a SentencePiece model ({e})") from None


_ENGINES = {"tiktoken": TiktokenTokenizer, "sentencepiece": SentencePieceTokenizer}


def load_tokenizer(path: str | Path) -> TextTokenizer:
    """Load a tokenizer folder (or its tokenizer.json): the original engine where the folder names one."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    meta_file = folder / META_FILE
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        engine = _ENGINES.get(meta.get("engine", "hf"))
        if engine is not None:
            model = folder / meta.get("model_file", MODEL_FILE)
            if not model.is_file():
                raise FileNotFoundError(f"tokenizer model {model} (named by {meta_file}) does not exist")
            return engine(model)
    file = folder / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"tokenizer file {file} does not exist")
    return HFTokenizer(file)


def train_bpe(
    train_files: list[str | Path], vocab_size: int, out_dir: str | Path, text_field: str = "text"
) -> Path:
    """Train a byte-level BPE on the documents of data files and save it as an HF tokenizer folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from lmrepro.data.readers import iter_texts

    specials = list(BPE_SPECIAL_TOKENS)
    if vocab_size < 256 + len(specials):
        raise ValueError(
            f"vocab_size must be >= {256 + len(specials)} for a byte-level BPE, got {vocab_size}"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(iter_texts(train_files, text_field), trainer)
    # Llama-3 convention: the tokenizer prepends BOS when asked for special tokens, as lm-eval and
    # transformers users expect; our own tokenize step calls encode without special tokens.
    bos_id = tok.token_to_id(BOS_TOKEN)
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{BOS_TOKEN} $A", special_tokens=[(BOS_TOKEN, bos_id)]),
        ]
    )
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN
    )
    out_dir = Path(out_dir)
    # a whole new folder in place of out_dir, so no file of an earlier tokenizer kind survives
    with atomic_folder(out_dir) as tmp:
        hf_tok.save_pretrained(tmp)
    return out_dir
