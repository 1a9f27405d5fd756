"""The n-gram baseline (Laplace-smoothed counts, vectorised) against hand-computed and plain-loop values,
and the inverse-frequency token weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmrepro.data.shards import write_index, write_shard
from lmrepro.data.token_weights import inverse_frequency_weights, write_inverse_frequency_weights
from lmrepro.eval.ngram import fit_ngram, fit_ngram_loop, ngram_loss


def test_bigram_by_hand() -> None:
    train = np.array([0, 1, 0, 1, 0, 2])  # bigrams 01 ×2, 10 ×2, 02 ×1; contexts 0 ×3, 1 ×2
    model = fit_ngram(train, 2, vocab_size=3)
    test = np.array([0, 1, 2])  # P(1|0) = (2+1)/(3+3), P(2|1) = (0+1)/(2+3)
    result = ngram_loss(model, test, slice(1, None))
    expected = -(math.log(3 / 6) + math.log(1 / 5)) / 2
    assert result["num_tokens"] == 2 and result["loss"] == pytest.approx(expected)


def test_unigram_by_hand_and_an_unseen_context() -> None:
    model = fit_ngram(np.array([0, 0, 1]), 1, vocab_size=4)
    assert ngram_loss(model, np.array([3, 0]), slice(0, None))["loss"] == pytest.approx(
        -(math.log(1 / 7) + math.log(3 / 7)) / 2
    )
    tri = fit_ngram(np.array([0, 1, 2, 0, 1, 2]), 3, vocab_size=3)
    assert ngram_loss(tri, np.array([2, 2, 2]), slice(2, 3))["loss"] == pytest.approx(math.log(3))


def test_vectorised_counts_equal_the_plain_loop() -> None:
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 7, 2000)
    model = fit_ngram(tokens, 3, vocab_size=7)
    loop = fit_ngram_loop(tokens, 3, vocab_size=7)
    keys = {tuple(int(d) for d in np.unravel_index(k, (7, 7, 7))): c for k, c in zip(
        model.gram_keys.tolist(), model.gram_counts.tolist(), strict=True)}  # fmt: skip
    assert keys == loop["grams"]
    assert sum(model.context_counts) == sum(loop["contexts"].values())


def test_streams_are_pooled_without_crossing_and_keys_that_overflow_are_refused() -> None:
    a, b = np.array([0, 1]), np.array([1, 0])
    model = fit_ngram([a, b], 2, vocab_size=2)
    assert model.gram_counts.tolist() == [1, 1] and model.num_tokens == 4  # 01 and 10, no "11" across
    with pytest.raises(ValueError, match="overflow int64"):
        fit_ngram(a, 5, vocab_size=32000)


def _shards(folder, tokens, vocab):
    folder.mkdir()
    digest = write_shard(folder / "shard-00000.bin", np.asarray(tokens), vocab_size=vocab, num_documents=1)
    entry = {"file": "shard-00000.bin", "num_tokens": len(tokens), "num_documents": 1, "sha256": digest}
    write_index(folder, [entry], vocab_size=vocab, bos_id=None, eos_id=None, tokenizer_sha256="0", source={})
    return folder


def test_inverse_frequency_weights_cap_and_sep(tmp_path) -> None:
    folder = _shards(tmp_path / "a", [0, 0, 0, 1, 3, 3, 0, 0], vocab=5)  # shares 5/8, 1/8, 0, 2/8, 0
    weights, record = inverse_frequency_weights([(folder, 1.0)], 5, cap=6.0, sep_id=3)
    assert weights.tolist() == pytest.approx([8 / 5, 6.0, 6.0, 4.0, 6.0])
    assert record["ids_never_seen"] == 2 and record["sep_weight"] == 4.0
    weights, _ = inverse_frequency_weights([(folder, 1.0)], 5, cap=6.0, sep_id=3, sep_weight=0.0)
    assert weights[3] == 0.0
    other = _shards(tmp_path / "b", [2, 2], vocab=5)  # a mixture: shares weighted by token fraction
    weights, _ = inverse_frequency_weights([(folder, 3.0), (other, 1.0)], 5, cap=100.0)
    assert weights[2] == pytest.approx(1 / 0.25) and weights[0] == pytest.approx(1 / (0.75 * 5 / 8))
    out = tmp_path / "w.pt"
    write_inverse_frequency_weights(out, [(folder, 1.0)], 5, cap=6.0)
    loaded = torch.load(out, weights_only=True)
    assert loaded.dtype == torch.float32 and loaded.shape == (5,)
    assert (tmp_path / "w.json").is_file()
