"""Tokenizers: train the embedded default's byte-level BPE, and load a tokenizer folder.

Every tokenizer is saved as a Hugging Face folder (tokenizer.json + tokenizer_config.json) so the HF
export can copy it verbatim and `transformers.AutoTokenizer` loads what we trained on. BOS/EOS handling
is explicit: `encode_batch` never adds special tokens; the tokenize step adds BOS and EOS itself.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"
PAD_TOKEN = "<|pad|>"


def iter_jsonl_texts(paths: Iterable[str | Path], text_key: str = "text") -> Iterator[str]:
    for path in paths:
        path = Path(path)
        with path.open() as f:
            for line_number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                if text_key not in row:
                    raise ValueError(
                        f"{path}:{line_number}: row has no {text_key!r} field (keys: {sorted(row)})"
                    )
                yield row[text_key]


def train_bpe(train_files: list[str | Path], vocab_size: int, out_dir: str | Path) -> Path:
    """Train a byte-level BPE on the `text` field of JSONL files and save it as an HF tokenizer folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [BOS_TOKEN, EOS_TOKEN, PAD_TOKEN]
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
    tok.train_from_iterator(iter_jsonl_texts(train_files), trainer)
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
    hf_tok.save_pretrained(out_dir)
    return out_dir


@dataclass
class TextTokenizer:
    """A loaded tokenizer with explicit special-token ids."""

    path: Path
    vocab_size: int
    bos_id: int | None
    eos_id: int
    sha256: str
    _tok: object

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without any special tokens."""
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)


def load_tokenizer(path: str | Path) -> TextTokenizer:
    """Load a Hugging Face tokenizer folder (or a tokenizer.json file)."""
    from tokenizers import Tokenizer

    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"tokenizer file {file} does not exist")
    tok = Tokenizer.from_file(str(file))
    config_file = file.parent / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    bos_token = config.get("bos_token", BOS_TOKEN)
    eos_token = config.get("eos_token", EOS_TOKEN)
    eos_id = tok.token_to_id(eos_token) if isinstance(eos_token, str) else None
    if eos_id is None:
        raise ValueError(
            f"{file}: EOS token {eos_token!r} is not in the vocabulary; documents need a separator"
        )
    bos_id = tok.token_to_id(bos_token) if isinstance(bos_token, str) else None
    return TextTokenizer(
        path=file.parent,
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        bos_id=bos_id,
        eos_id=eos_id,
        sha256=hashlib.sha256(file.read_bytes()).hexdigest(),
        _tok=tok,
    )
