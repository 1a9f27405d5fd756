"""Packing modes (lmrepro.data.packing): the token stream of three tiny documents in each mode, the same as
Hugging Face's group_texts for `concat`, recorded in index.json and refused at parse time when invalid."""

from __future__ import annotations

import copy
import json
import shutil
from itertools import chain
from pathlib import Path

import pytest
import yaml

from lmrepro.data import encode
from lmrepro.data.encode import tokenize_to_shards
from lmrepro.data.packing import Packing
from lmrepro.data.readers import plan_pieces
from lmrepro.data.shards import INDEX_FILE, TokenStream, read_index
from lmrepro.workflow import check_config

REPO = Path(__file__).resolve().parents[2]
DOCS = ["a b", "c", "b c a"]  # word ids: a 2, b 3, c 4
VOCAB = {"<|begin_of_text|>": 0, "<|end_of_text|>": 1, "a": 2, "b": 3, "c": 4, "<unk>": 5}


@pytest.fixture(scope="module")
def word_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A word-level tokenizer.json without a post-processor (nothing added by `tokenizer(texts)`)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = tmp_path_factory.mktemp("words")
    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>"])
    tok.save(str(folder / "tokenizer.json"))
    config = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def stream_of(tokenizer: Path, tmp_path: Path, packing: Packing) -> tuple[list[int], dict]:
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    out = tmp_path / f"shards-{packing.mode}"
    tokenize_to_shards([src], tokenizer, out, packing=packing)
    stream = TokenStream(out, verify_checksums=True)
    return stream.window(0, len(stream)).tolist(), read_index(out / INDEX_FILE)


@pytest.mark.parametrize(
    ("packing", "expected"),
    [
        (Packing(), [0, 2, 3, 1, 0, 4, 1, 0, 3, 4, 2, 1]),
        (Packing("separator", "<|end_of_text|>"), [1, 2, 3, 1, 4, 1, 3, 4, 2]),
        (Packing("concat"), [2, 3, 4, 3, 4, 2]),
    ],
    ids=["bos_eos", "separator", "concat"],
)
def test_each_mode_gives_the_hand_computed_stream(
    word_tokenizer: Path, tmp_path: Path, packing: Packing, expected: list[int]
) -> None:
    tokens, index = stream_of(word_tokenizer, tmp_path, packing)
    assert tokens == expected
    assert index["packing"]["mode"] == packing.mode
    assert index["packing"]["separator_token"] == packing.separator_token
    assert index["num_documents"] == 3


def test_concat_equals_hf_group_texts(word_tokenizer: Path, tmp_path: Path) -> None:
    """run_clm.py's group_texts on `tokenizer(texts)` of the same tokenizer: the blocks our stream cuts."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_file=str(word_tokenizer / "tokenizer.json"))
    examples = {"input_ids": hf(DOCS)["input_ids"]}
    block_size = 4

    def group_texts(examples: dict) -> dict:  # transformers/examples/pytorch/language-modeling/run_clm.py
        concatenated = {k: list(chain(*examples[k])) for k in examples}
        total_length = len(concatenated[list(examples.keys())[0]])
        total_length = (total_length // block_size) * block_size
        return {
            k: [t[i : i + block_size] for i in range(0, total_length, block_size)]
            for k, t in concatenated.items()
        }

    tokens, _ = stream_of(word_tokenizer, tmp_path, Packing("concat"))
    ours = [tokens[i : i + block_size] for i in range(0, len(tokens) // block_size * block_size, block_size)]
    assert ours == group_texts(examples)["input_ids"] == [[2, 3, 4, 3]]


def test_the_mode_is_part_of_every_shards_key(word_tokenizer: Path, tmp_path: Path) -> None:
    """A shard kept from an attempt with another packing is never reused (its key differs)."""
    src = tmp_path / "docs.jsonl"
    src.write_text(json.dumps({"text": "a"}) + "\n")
    pieces = plan_pieces([src], 1 << 20)
    keys = {
        mode: encode._piece_keys(pieces, encode.make_encoder(str(word_tokenizer), "text", None, 8, packing))
        for mode, packing in [("bos_eos", Packing()), ("concat", Packing("concat"))]
    }
    assert keys["bos_eos"] != keys["concat"]


def test_a_separator_the_tokenizer_lacks_is_refused_when_encoding(word_tokenizer: Path) -> None:
    with pytest.raises(ValueError, match="separator_token = '<sep>' is not a token of the tokenizer"):
        encode.make_encoder(str(word_tokenizer), "text", None, 8, Packing("separator", "<sep>"))


# ------------------------------------------------------------------------------------- parse time


@pytest.fixture
def root(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "config", tmp_path / "config")
    return tmp_path


def default_with(root: Path, **dataset_keys) -> dict:
    cfg = copy.deepcopy(yaml.safe_load((root / "config" / "config.yaml").read_text()))
    cfg["datasets"]["synthetic"].update(dataset_keys)
    return cfg


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"packing": "glue"}, "datasets.synthetic.packing = 'glue' is not a packing mode; valid: bos_eos, "),
        ({"packing": "separator"}, "datasets.synthetic.separator_token: set it exactly when packing = sep"),
        ({"packing": "concat", "separator_token": "x"}, "datasets.synthetic.separator_token: set it exactly"),
        (
            {"packing": "separator", "separator_token": "<|eot_id|>"},
            "datasets.synthetic.separator_token = '<|eot_id|>' is not a token of tokenizer 'synthetic-bpe'",
        ),
    ],
)
def test_bad_packing_stops_at_parse_time(root: Path, keys: dict, message: str) -> None:
    with pytest.raises(ValueError) as e:
        check_config(default_with(root, **keys), root)
    assert str(e.value).startswith(message)


def test_a_good_separator_passes_the_parse_time_check(root: Path, word_tokenizer: Path) -> None:
    check_config(default_with(root, packing="separator", separator_token="<|end_of_text|>"), root)
    cfg = default_with(root, packing="separator", separator_token="c")  # a word of an hf tokenizer
    cfg["tokenizers"]["synthetic-bpe"] = {"kind": "hf", "path": str(word_tokenizer)}
    check_config(cfg, root)
    cfg["datasets"]["synthetic"]["separator_token"] = "d"
    with pytest.raises(ValueError, match="separator_token = 'd' is not a token of tokenizer"):
        check_config(cfg, root)


def test_streaming_runs_refuse_another_packing(root: Path) -> None:
    cfg = default_with(root, packing="concat")
    cfg["runs"]["tiny"]["overrides"]["data"] = {"mode": "streaming", "streaming": {"streams": 1}}
    with pytest.raises(ValueError, match="^datasets.synthetic.packing = 'concat': runs.tiny reads it in str"):
        check_config(cfg, root)
