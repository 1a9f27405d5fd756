"""Pretrained tokenizers into ``results/tokenizers/<name>/``: a Hugging Face folder (kind ``hf``), Llama-3's
tiktoken ``tokenizer.model`` (``tiktoken``) or a SentencePiece ``tokenizer.model`` (``sentencepiece``).

A tiktoken or SentencePiece model is kept as it is — the tokenize step encodes with the original engine —
and also converted to ``tokenizer.json`` (with ``transformers``' converters and the Llama conventions), so
the HF export loads with ``AutoTokenizer``. The conversion is checked against the original engine on probe
texts, and a disagreement stops the import: otherwise evaluation of the exported model would tokenize
differently from training, silently.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from lmrepro.data.tokenizer import (
    BOS_TOKEN,
    EOS_TOKEN,
    LLAMA3_PATTERN,
    LLAMA3_SPECIAL_TOKENS,
    META_FILE,
    MODEL_FILE,
    TextTokenizer,
    load_llama3_tiktoken,
    load_sentencepiece,
    load_tokenizer,
    read_tiktoken_ranks,
)
from lmrepro.io import atomic_folder, write_json

log = logging.getLogger(__name__)

# Files of a Hugging Face tokenizer folder that the hf kind copies (never weights or model configs).
HF_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
)

PROBE_TEXTS = [
    "",
    " ",
    "The quick brown fox jumps over the lazy dog.",
    " leading space",
    "trailing spaces  ",
    "two  spaces and   three",
    "line\nbreak\n\nparagraph\r\nwindows",
    "\ttab\tseparated\tvalues",
    "It's they'll WE'RE I'd you've",
    "1234567890 3.14159 -42 1e-8 2,048",
    "naïve café – ünïcode € £ ß Ω",
    "emoji 🙂🚀 中文 日本語 한국어 العربية",
    "def f(x):\n    return x ** 2  # square\n",
    r"\begin{theorem} Let $f \colon \mathbb{R} \to \mathbb{R}$ with $\int_0^1 f(x)\,dx = 0$. \end{theorem}",
    "<|begin_of_text|> <s> </s> <|end_of_text|> look like special tokens but are text",
]


def import_tokenizer(spec: dict, out_dir: str | Path, name: str = "tokenizer") -> TextTokenizer:
    """Write the tokenizer folder of a `tokenizers.<name>` entry of kind hf, tiktoken or sentencepiece."""
    kind, source = spec["kind"], Path(spec["path"])
    where = f"tokenizers.{name}"
    if not source.exists():
        raise FileNotFoundError(f"{where}.path: {source} does not exist")
    out_dir = Path(out_dir)
    with atomic_folder(out_dir) as tmp:  # replaces out_dir whole: no file of an earlier tokenizer survives
        tok = _build(kind, source, tmp, spec, where)
        expected = spec.get("vocab_size")
        if expected is not None and expected != tok.vocab_size:
            raise ValueError(f"{where}.vocab_size = {expected}, but {source} has {tok.vocab_size} tokens")
    tok = load_tokenizer(out_dir)
    log.info("imported %s tokenizer %s from %s: %r", kind, name, source, tok)
    return tok


def _build(kind: str, source: Path, tmp: Path, spec: dict, where: str) -> TextTokenizer:
    if kind == "hf":
        _copy_hf_folder(source, tmp, spec, where)
        return load_tokenizer(tmp)
    if kind not in ("tiktoken", "sentencepiece"):
        raise ValueError(f"{where}.kind = {kind!r} cannot be imported; valid: hf, tiktoken, sentencepiece")
    model = source / MODEL_FILE if source.is_dir() else source
    if not model.is_file():
        raise FileNotFoundError(f"{where}.path: {model} does not exist")
    try:  # a foreign or corrupted file fails here, named by its own path
        load_llama3_tiktoken(model) if kind == "tiktoken" else load_sentencepiece(model)
    except ValueError as e:
        raise ValueError(f"{where}.path (kind {kind}): {e}") from None
    shutil.copyfile(model, tmp / MODEL_FILE)
    (_tiktoken_to_hf if kind == "tiktoken" else _sentencepiece_to_hf)(tmp / MODEL_FILE, tmp)
    meta = {"kind": kind, "engine": kind, "model_file": MODEL_FILE, "source": str(model.resolve())}
    write_json(tmp / META_FILE, meta)
    tok = load_tokenizer(tmp)
    check_hf_conversion(tok, tmp / "tokenizer.json", model)
    return tok


def _copy_hf_folder(source: Path, tmp: Path, spec: dict, where: str) -> None:
    folder = source if source.is_dir() else source.parent
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{where}.path: {folder} has no tokenizer.json")
    for file_name in HF_TOKENIZER_FILES:
        if (folder / file_name).is_file():
            shutil.copyfile(folder / file_name, tmp / file_name)
    config_file = tmp / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
    from tokenizers import Tokenizer

    backend = Tokenizer.from_file(str(tmp / "tokenizer.json"))
    for key in ("bos_token", "eos_token"):
        if key in spec:
            if backend.token_to_id(spec[key]) is None:
                raise ValueError(f"{where}.{key} = {spec[key]!r} is not in the vocabulary of {folder}")
            config[key] = spec[key]
    write_json(config_file, config)


def _bos_template(backend, bos_token: str) -> None:
    """Llama convention: the exported tokenizer prepends BOS when asked for special tokens (lm-eval)."""
    from tokenizers import processors

    template = processors.TemplateProcessing(
        single=f"{bos_token} $A", special_tokens=[(bos_token, backend.token_to_id(bos_token))]
    )
    current = backend.post_processor
    backend.post_processor = processors.Sequence([current, template]) if current else template


def _tiktoken_to_hf(model: Path, out: Path) -> None:
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    def read_ranks(path: str) -> dict[bytes, int]:
        return read_tiktoken_ranks(Path(path))

    class Converter(TikTokenConverter):
        load_tiktoken_bpe = staticmethod(read_ranks)  # not tiktoken's loader, which caches files by path

    enc = load_llama3_tiktoken(model)
    backend = Converter(vocab_file=str(model), pattern=LLAMA3_PATTERN).converted()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LLAMA3_SPECIAL_TOKENS])
    for token in LLAMA3_SPECIAL_TOKENS:
        assert backend.token_to_id(token) == enc.encode_single_token(token), token
    _bos_template(backend, BOS_TOKEN)
    PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN
    ).save_pretrained(out)


def _sentencepiece_to_hf(model: Path, out: Path) -> None:
    from tokenizers import decoders, normalizers
    from transformers import LlamaTokenizerFast, PreTrainedTokenizerFast

    sp = load_sentencepiece(model)
    backend = LlamaTokenizerFast.from_pretrained(str(out), local_files_only=True).backend_tokenizer
    # The original Llama-2/Code Llama tokenizer.json: sp's dummy prefix as a Prepend normalizer, spaces
    # as "▁", no pre-tokenizer; this matches sentencepiece also on leading and repeated spaces.
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = None
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    backend.post_processor = None
    bos, eos, unk = (sp.id_to_piece(i) if i >= 0 else None for i in (sp.bos_id(), sp.eos_id(), sp.unk_id()))
    if bos is not None:
        _bos_template(backend, bos)
    PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=eos, unk_token=unk
    ).save_pretrained(out)


def check_hf_conversion(tok: TextTokenizer, tokenizer_json: Path, source: Path) -> None:
    """The converted tokenizer.json must encode and decode the probe texts exactly like the engine."""
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(tokenizer_json))
    hf.encode_special_tokens = True
    problems = []
    if hf.get_vocab_size(with_added_tokens=True) != tok.vocab_size:
        problems.append(f"vocab size {hf.get_vocab_size(with_added_tokens=True)} vs {tok.vocab_size}")
    for text in PROBE_TEXTS:
        ours = tok.encode_batch([text])[0]
        theirs = hf.encode(text, add_special_tokens=False).ids
        if ours != theirs:
            problems.append(f"{text!r} encodes to {ours[:12]} but to {theirs[:12]} in tokenizer.json")
        elif hf.decode(ours, skip_special_tokens=False) != tok.decode(ours):
            problems.append(f"{text!r} decodes differently")
    if problems:
        raise ValueError(
            f"{source}: the converted tokenizer.json disagrees with {tok.kind} ({len(problems)} problems; "
            f"first: {problems[0]}); the HF export would be evaluated with another tokenization than training"
            " used"
        )
