import numpy as np
import pytest

from lmrepro.data import patch_tokenizer as pt
from lmrepro.data import spikes


def test_byte_layout_3x4():
    a = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]], np.uint8)
    tok, clipped = spikes.encode_bytes(a)
    assert tok.tolist() == [255, 1, 5, 9, 255, 2, 6, 10, 255, 3, 7, 11, 255, 4, 8, 12]
    assert clipped == 0
    assert np.array_equal(spikes.decode_bytes(tok, 3), a)


def test_clip_255():
    tok, clipped = spikes.encode_bytes(np.array([[255, 0], [254, 255]], np.uint8))
    assert tok.tolist() == [255, 254, 254, 255, 0, 254]
    assert clipped == 2


def test_non_2d_skipped():
    assert spikes.validate_row([1, 2, 3]) is None
    assert spikes.validate_row([[1, 2]]).shape == (1, 2)


def test_n_fixed_tile_and_crop():
    a = np.arange(6, dtype=np.uint8).reshape(3, 2)
    assert spikes.fix_neurons(a, 7, seed=0, sample_id=0)[:, 0].tolist() == [0, 2, 4, 0, 2, 4, 0]
    big = np.arange(20, dtype=np.uint8).reshape(10, 2)
    ids = list(range(8))
    fwd = {i: spikes.fix_neurons(big, 4, seed=3, sample_id=i) for i in ids}
    rev = {i: spikes.fix_neurons(big, 4, seed=3, sample_id=i) for i in reversed(ids)}
    for i in ids:
        assert np.array_equal(fwd[i], rev[i])
        s = fwd[i][0, 0] // 2
        assert np.array_equal(fwd[i], big[s : s + 4])
    assert len({int(fwd[i][0, 0]) for i in ids}) > 1


def test_patch_layout_1x3_on_2x7():
    a = np.array([[1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 11, 12, 13, 14]], np.uint8)
    rows, n_np, n_tp = pt.to_patches(a, 1, 3)
    assert (n_np, n_tp) == (2, 3)
    assert rows.tolist() == [[1, 2, 3], [8, 9, 10], [4, 5, 6], [11, 12, 13], [7, 0, 0], [14, 0, 0]]
    tok = pt.build([a], p0=1, p1=3, vocab_size=8)  # 6 patches + SEP + UNK
    ids, unk = tok.encode(a)
    assert unk == 0 and tok.sep_id == 6 and tok.unk_id == 7
    assert ids.tolist()[::3] == [6, 6, 6]  # SEP at positions 0, 3, 6
    assert ids.size == 9
    dec = tok.decode(ids, 2)
    assert np.array_equal(dec[:, :7], a) and not dec[:, 7:].any()


def test_unk_counting_and_ties():
    a = np.array([[1, 1, 1, 2, 2, 2, 3, 3, 3]], np.uint8)
    tok = pt.build([a], p0=1, p1=3, vocab_size=4)  # 2 patches; ties broken by bytes -> [1,1,1],[2,2,2]
    assert tok.patches.tolist() == [[1, 1, 1], [2, 2, 2]]
    ids, unk = tok.encode(a)
    assert ids.tolist() == [2, 0, 2, 1, 2, 3] and unk == 1
    assert tok.decode(ids, 1).tolist() == [[1, 1, 1, 2, 2, 2, 0, 0, 0]]


def test_save_load_and_refusal(tmp_path):
    rng = np.random.default_rng(0)
    rows = [rng.poisson(0.3, (3, 30)).astype(np.uint8) for _ in range(5)]
    t1, t2 = pt.build(rows, p0=1, p1=3, vocab_size=20), pt.build(rows, p0=1, p1=3, vocab_size=20)
    t1.save(tmp_path / "a")
    t2.save(tmp_path / "b")
    for f in ("spike_tokenizer.json", "patches.npy"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    t3 = pt.PatchTokenizer.load(tmp_path / "a", p0=1, p1=3, vocab_size=20)
    assert np.array_equal(t3.encode(rows[0])[0], t1.encode(rows[0])[0])
    with pytest.raises(ValueError, match="patch 1x3.*1x15"):
        pt.PatchTokenizer.load(tmp_path / "a", p0=1, p1=15, vocab_size=20)
    with pytest.raises(ValueError, match="vocab_size 20.*32000"):
        pt.PatchTokenizer.load(tmp_path / "a", p0=1, p1=3, vocab_size=32000)


def test_standin_schema(tmp_path):
    import datasets

    from lmrepro.data import synthetic_spikes as ss

    paths = ss.write(tmp_path, seed=1, n_train=8, n_test=4, bad_rows=2)
    ds = datasets.load_dataset("parquet", data_files=paths)
    assert set(ds) == {"train", "test"}
    cols = {"spike_counts", "source_dataset", "subject_id", "session_id", "segment_id"}
    assert set(ds["train"].column_names) == cols
    assert len(set(ds["train"]["source_dataset"])) >= 3
    ok = [spikes.validate_row(r) for r in ds["train"]["spike_counts"]]
    assert sum(r is None for r in ok) == 2
    shapes = {r.shape for r in ok if r is not None}
    assert len(shapes) > 1
    again = ss.make_rows(8, seed=1, split="train")
    assert again["spike_counts"][0] == ds["train"]["spike_counts"][0]
