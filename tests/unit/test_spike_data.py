"""The spike dataset kind through the data route: prepare (synthetic stand-in, lab counts, lab filter check),
spike tokenizer folders, tokenize (byte and patch shards, skipped rows counted, n_fixed crop keyed by the
row's index in its split), and the parse-time checks that pair tokenizers with datasets."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import yaml

from lmrepro.data import synthetic_spikes
from lmrepro.data.encode import check_shards_match_tokenizer, tokenize_to_shards
from lmrepro.data.patch_tokenizer import PatchTokenizer
from lmrepro.data.shards import TokenStream
from lmrepro.data.sources import prepare_dataset, spike_rows_of, split_files
from lmrepro.data.spike_tokenizer import load_any_tokenizer, load_spike_tokenizer, write_spike_tokenizer
from lmrepro.data.spikes import BYTE_SEP, ByteTokenizer, SpikeRows, encode_bytes, fix_neurons
from lmrepro.workflow import check_config

REPO = Path(__file__).resolve().parents[2]
SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
STANDIN = {"source": "synthetic", "kind": "spikes", "seed": 5, "num_train_rows": 24, "num_test_rows": 6}


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    spec = {**STANDIN, "num_bad_rows": 2, "source_dataset": ["willett", "xiao"], "n_fixed": 6}
    out = tmp_path_factory.mktemp("pile") / "raw"
    prepare_dataset(spec, out, name="pile")
    return out


@pytest.fixture(scope="module")
def byte_tok(tmp_path_factory) -> Path:
    return write_spike_tokenizer(tmp_path_factory.mktemp("tok") / "bytes")


def expected_byte_tokens(raw: Path, split: str) -> tuple[np.ndarray, int]:
    """The split's shards by hand: rows of willett/xiao that are 2-D, cropped/tiled to 6, byte layout."""
    cols = synthetic_spikes.make_rows(24 if split == "train" else 6, seed=5, split=split, bad_rows=2)
    parts, kept = [], 0
    for i, (counts, lab) in enumerate(zip(cols["spike_counts"], cols["source_dataset"], strict=True)):
        a = np.asarray(counts, dtype=np.uint8)
        if lab not in ("willett", "xiao") or a.ndim != 2:
            continue
        parts.append(encode_bytes(fix_neurons(a, 6, seed=0, sample_id=i))[0])
        kept += 1
    return np.concatenate(parts), kept


def test_prepare_records_rows_per_lab_and_the_row_spec(raw: Path) -> None:
    manifest = json.loads((raw / "manifest.json").read_text())
    assert manifest["kind"] == "spikes" and set(manifest["splits"]) == {"train", "test"}
    spikes = manifest["spikes"]
    assert spikes["source_dataset"] == ["willett", "xiao"] and spikes["n_fixed"] == 6
    assert spikes["rows_per_lab"]["train"] == {"churchland": 6, "perich": 6, "willett": 7, "xiao": 7}
    assert spike_rows_of(raw) == SpikeRows(("willett", "xiao"), 6, 0)


def test_unknown_lab_is_refused_naming_it_and_the_labs_present(tmp_path: Path) -> None:
    spec = {**STANDIN, "source_dataset": ["willett", "steinmetz"]}
    with pytest.raises(ValueError, match=r"datasets.pile.source_dataset: lab 'steinmetz' is not in the data; "
                       r"labs present: churchland, perich, willett, xiao"):  # fmt: skip
        prepare_dataset(spec, tmp_path / "raw", name="pile")
    assert not (tmp_path / "raw").exists()


def test_byte_shards_equal_the_hand_computed_layout_and_count_skips(raw: Path, byte_tok: Path, tmp_path):
    files, _ = split_files(raw, "train")
    out = tmp_path / "train"
    tokenize_to_shards(files, byte_tok, out, spike_rows=spike_rows_of(raw))
    tokens, kept = expected_byte_tokens(raw, "train")
    stream = TokenStream(out)
    assert np.array_equal(stream.window(0, len(stream)), tokens)
    index = json.loads((out / "index.json").read_text())
    assert (index["vocab_size"], index["dtype"], index["bos_id"], index["eos_id"]) == (
        256,
        "uint16",
        None,
        None,
    )
    spikes = index["spikes"]
    assert spikes["rows_read"] == 26 and spikes["rows_kept"] == kept == index["num_documents"]
    assert spikes["rows_other_labs"] == 12 and spikes["rows_not_2d"] == 2
    assert spikes["not_2d_examples"] == [f"{files[0]}:24", f"{files[0]}:25"]
    assert index["source"]["rows"] == {"source_dataset": ["willett", "xiao"], "n_fixed": 6, "n_fixed_seed": 0}
    check_shards_match_tokenizer(out / "index.json", byte_tok)


def test_n_fixed_crop_does_not_depend_on_how_the_split_is_cut(raw: Path, byte_tok: Path, tmp_path):
    """The crop is keyed by (n_fixed_seed, index of the row in its split): cutting the files into several
    pieces encoded by 2 processes gives the same shards as one piece."""
    import pyarrow.parquet as pq

    table = pq.read_table(raw / "train.parquet")
    for i, at in enumerate((0, 10, 17)):  # three files of one split, each of several row groups
        pq.write_table(table.slice(at, (10, 7, 9)[i]), tmp_path / f"part{i}.parquet", row_group_size=3)
    files = [tmp_path / f"part{i}.parquet" for i in range(3)]
    spec = spike_rows_of(raw)
    tokenize_to_shards(files, byte_tok, tmp_path / "many", spike_rows=spec, piece_bytes=1, num_proc=2)
    assert len(json.loads((tmp_path / "many" / "index.json").read_text())["shards"]) > 3
    a = TokenStream(tmp_path / "many")
    assert np.array_equal(a.window(0, len(a)), expected_byte_tokens(raw, "train")[0])


def test_patch_tokenizer_built_from_the_train_split_counts_unk_per_split(raw: Path, tmp_path: Path) -> None:
    tok_dir = write_spike_tokenizer(tmp_path / "patch", raw=raw, patch=(1, 5), vocab_size=40)
    tok = load_spike_tokenizer(tok_dir, patch=(1, 5), vocab_size=40)
    assert isinstance(tok, PatchTokenizer) and tok.vocab_size == 40 and tok.built_from["rows"] == 12
    again = write_spike_tokenizer(tmp_path / "again", raw=raw, patch=(1, 5), vocab_size=40)
    assert (again / "spike_tokenizer.json").read_bytes() == (tok_dir / "spike_tokenizer.json").read_bytes()
    counts = {}
    for split in ("train", "test"):
        files, _ = split_files(raw, split)
        tokenize_to_shards(files, tok_dir, tmp_path / split, spike_rows=spike_rows_of(raw))
        index = json.loads((tmp_path / split / "index.json").read_text())
        assert index["dtype"] == "uint16" and index["vocab_size"] == 40
        counts[split] = index["spikes"]
        stream = TokenStream(tmp_path / split)
        ids = stream.window(0, len(stream))
        assert np.count_nonzero(ids == tok.unk_id) == counts[split]["unk_patches"]
        assert np.count_nonzero(ids == tok.sep_id) == len(ids) - counts[split]["patches"]
    assert counts["train"]["unk_patches"] > 0  # 38 patches cannot cover the train split


def test_a_tokenizer_built_for_another_patch_or_vocabulary_is_refused(raw: Path, tmp_path: Path) -> None:
    built = write_spike_tokenizer(tmp_path / "patch", raw=raw, patch=(1, 5), vocab_size=40)
    file = built / "spike_tokenizer.json"
    with pytest.raises(ValueError, match=f"{file}: built for patch 1x5, run asks for 1x15"):
        write_spike_tokenizer(tmp_path / "a", folder=built, patch=(1, 15), vocab_size=40)
    with pytest.raises(ValueError, match=f"{file}: built for vocab_size 40, run asks for 32000"):
        write_spike_tokenizer(tmp_path / "b", folder=built, patch=(1, 5), vocab_size=32000)
    write_spike_tokenizer(tmp_path / "c", folder=built, patch=(1, 5), vocab_size=40)
    assert load_any_tokenizer(tmp_path / "c").sha256 == load_any_tokenizer(built).sha256


def test_a_text_tokenizer_on_spike_rows_is_refused(raw: Path, tmp_path: Path) -> None:
    from lmrepro.data.tokenizer import train_bpe

    text = tmp_path / "t.jsonl"
    text.write_text(json.dumps({"text": "a b c"}) + "\n")
    tok = train_bpe([text], 300, tmp_path / "bpe")
    files, _ = split_files(raw, "train")
    with pytest.raises(ValueError, match="is a text tokenizer, but the dataset holds spike-count rows"):
        tokenize_to_shards(files, tok, tmp_path / "out", spike_rows=spike_rows_of(raw))


def test_byte_sep_is_the_last_id() -> None:
    assert BYTE_SEP == 255 == ByteTokenizer.vocab_size - 1


# ------------------------------------------------------------------------------- parse-time checks


@pytest.fixture
def neuro_config() -> dict:
    cfg = yaml.safe_load((REPO / "config" / "experiments" / "neuro-tiny-byte.yaml").read_text())
    jsonschema.validate(cfg, SCHEMA)
    return cfg


def test_the_byte_experiment_passes_the_checks(neuro_config: dict) -> None:
    check_config(neuro_config, REPO)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["tokenizers"].update({"spike-bytes": {"kind": "bpe", "dataset": "pile-standin",
                                                           "vocab_size": 300}}),
         "tokenizers.spike-bytes.dataset: 'pile-standin' holds spikes rows, but a bpe tokenizer learns "
         "from text"),
        (lambda c: (c["datasets"]["pile-standin"].pop("kind"), c.pop("evals"),
                    c["runs"]["neuro-tiny-byte"].pop("evals")),
         "runs.neuro-tiny-byte.dataset 'pile-standin': dataset 'pile-standin' holds text rows, but tokenizer "
         "'spike-bytes' \\(spike_bytes\\) encodes spikes"),
        (lambda c: c["evals"]["test"].update({"split": "heldout"}),
         "evals.test: synthetic spike datasets have train and test, not 'heldout'"),
        (lambda c: c["runs"]["neuro-tiny-byte"]["overrides"].update({"data": {"mode": "streaming"}}),
         "spike datasets train from shards"),
    ],
)  # fmt: skip
def test_kinds_must_pair(neuro_config: dict, edit, message: str) -> None:
    cfg = copy.deepcopy(neuro_config)
    edit(cfg)
    with pytest.raises(ValueError, match=message):
        check_config(cfg, REPO)


def test_the_schema_refuses_spike_keys_on_a_text_dataset(neuro_config: dict) -> None:
    cfg = copy.deepcopy(neuro_config)
    cfg["datasets"]["pile-standin"]["kind"] = "text"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cfg, SCHEMA)


def test_a_bad_file_stops_the_split_naming_it_and_completed_shards_are_kept(raw: Path, byte_tok, tmp_path):
    """A lab filter over a file without `source_dataset`: the error names the file; the shard of the good
    file waits in the work folder and a rerun (file fixed) encodes only the other one."""
    import pyarrow.parquet as pq

    good, bad = tmp_path / "a.parquet", tmp_path / "b.parquet"
    table = pq.read_table(raw / "train.parquet")
    pq.write_table(table.slice(0, 10), good)
    pq.write_table(table.slice(10, 10).drop_columns(["source_dataset"]), bad)
    spec = spike_rows_of(raw)
    with pytest.raises(ValueError, match=f"{bad}: no column 'source_dataset'"):
        tokenize_to_shards([good, bad], byte_tok, tmp_path / "out", spike_rows=spec)
    assert (tmp_path / ".work-out" / "piece-00000.json").is_file() and not (tmp_path / "out").exists()
    pq.write_table(table.slice(10, 10), bad)
    tokenize_to_shards([good, bad], byte_tok, tmp_path / "out", spike_rows=spec)
    stream = TokenStream(tmp_path / "out")
    assert json.loads((tmp_path / "out" / "index.json").read_text())["spikes"]["rows_read"] == 20
    assert len(stream) > 0


def test_a_local_folder_of_spike_parquet_files_is_a_spike_dataset(tmp_path: Path) -> None:
    """The local route reads spike rows in place: a folder per split, the row spec in the manifest."""
    for split in ("train", "test"):
        (tmp_path / "pile" / split).mkdir(parents=True)
    paths = synthetic_spikes.write(tmp_path / "gen", seed=3, n_train=8, n_test=4)
    for split, path in paths.items():
        Path(path).rename(tmp_path / "pile" / split / "part-0.parquet")
    folders = {split: str(tmp_path / "pile" / split) for split in ("train", "test")}
    spec = {"source": "local", "kind": "spikes", "source_dataset": ["perich"], "files": folders}
    manifest = prepare_dataset(spec, tmp_path / "raw", name="local-pile")
    assert manifest["kind"] == "spikes" and manifest["spikes"]["rows_per_lab"]["test"]["perich"] == 1
    files, _ = split_files(tmp_path / "raw", "train")
    out = tmp_path / "shards"
    tokenize_to_shards(
        files, write_spike_tokenizer(tmp_path / "tok"), out, spike_rows=spike_rows_of(tmp_path / "raw")
    )
    assert json.loads((out / "index.json").read_text())["spikes"]["rows_kept"] == 2
