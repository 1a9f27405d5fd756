"""Loss evals cover their split evenly: windows spread from its first token to its last (all of it when
max_tokens is absent or at least the split), the eval says how many targets, windows and documents it
scored, and the n-gram baseline scores exactly those targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_model import build, tiny_args

from lmrepro.data.shards import TokenStream, write_index, write_shard
from lmrepro.eval.loss import heldout_loss, scored_documents, spread_window_starts
from lmrepro.eval.ngram import fit_ngram, ngram_loss, ngram_windows_loss

SEQ = 16
BOS = 1


@pytest.fixture
def stream(tmp_path) -> TokenStream:
    """1000 tokens in two shards, a document (BOS first) every 50 tokens: 20 documents."""
    tokens = np.random.default_rng(0).integers(3, 40, size=1000)
    tokens[::50] = BOS
    entries = []
    for i, part in enumerate(np.split(tokens, [437])):
        digest = write_shard(tmp_path / f"shard-{i}.bin", part, vocab_size=64, num_documents=10)
        entry = {"file": f"shard-{i}.bin", "num_tokens": len(part), "num_documents": 10}
        entries.append({**entry, "sha256": digest})
    write_index(tmp_path, entries, vocab_size=64, bos_id=BOS, eos_id=2, tokenizer_sha256="0" * 64, source={})
    return TokenStream(tmp_path)


def test_windows_spread_from_first_to_last_token() -> None:
    starts = spread_window_starts(1001, 10, 40)
    assert starts == [0, 330, 660, 990]  # the last window ends at the split's end
    assert spread_window_starts(101, 10, None) == list(range(0, 100, 10))  # all of it, consecutive
    assert spread_window_starts(101, 10, 10_000) == spread_window_starts(101, 10, None)
    assert spread_window_starts(100, 10, None, context=0) == list(range(0, 100, 10))  # masked: no +1
    with pytest.raises(ValueError, match="too few for 1 window"):
        spread_window_starts(10, 10, None)


def test_heldout_loss_scores_spread_windows_and_counts_documents(stream: TokenStream) -> None:
    model = build(tiny_args())
    got = heldout_loss(model, stream, seq_len=SEQ, max_tokens=4 * SEQ, batch_sequences=3)
    starts = [0, 328, 655, 983]  # 1000 - 17 = 983: the split's last target is scored
    assert spread_window_starts(len(stream), SEQ, 4 * SEQ) == starts
    windows = torch.stack([torch.from_numpy(stream.window(s, SEQ + 1)) for s in starts])
    with torch.no_grad():
        logits = model(windows[:, :-1])
    direct = F.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten())
    assert got["loss"] == pytest.approx(float(direct), rel=1e-5)
    assert (got["num_tokens"], got["num_windows"]) == (4 * SEQ, 4)
    # targets [1, 17) in document 0; [329, 345) in 6; [656, 672) in 13; [984, 1000) in 19
    assert got["num_documents"] == 4

    everything = heldout_loss(model, stream, seq_len=SEQ, max_tokens=None)
    assert everything["num_tokens"] == 999 // SEQ * SEQ and everything["num_documents"] == 20


def test_scored_documents_counts_a_document_once_across_windows(stream: TokenStream) -> None:
    # targets [1, 17) and [17, 33) are both in document 0; [45, 61) spans documents 0 and 1
    assert scored_documents(stream, [0, 16], SEQ) == 1
    assert scored_documents(stream, [0, 44], SEQ) == 2
    assert scored_documents(stream, [48], SEQ) == 2  # target 49 (doc 0), then BOS at 50 opens doc 1


def test_ngram_scores_the_loss_eval_targets(stream: TokenStream) -> None:
    model = fit_ngram(np.asarray(stream.window(0, len(stream))), 3, 64)
    starts = spread_window_starts(len(stream), SEQ, 4 * SEQ)
    got = ngram_windows_loss(model, stream, starts, SEQ)
    tokens = np.asarray(stream.window(0, len(stream)))
    nll = [-model.log_probs(tokens[s + 1 - 2 : s + SEQ + 1]) for s in starts[1:]]
    nll.insert(0, -model.log_probs(tokens[0 : SEQ + 1]))  # the split's first 2 tokens have no full context
    assert got["num_tokens"] == sum(len(x) for x in nll) == 4 * SEQ - 1
    assert got["loss"] == pytest.approx(float(np.concatenate(nll).mean()))
    consecutive = spread_window_starts(len(stream), SEQ, None)
    whole = ngram_loss(model, tokens[: len(consecutive) * SEQ + 1], slice(1, None))
    assert ngram_windows_loss(model, stream, consecutive, SEQ)["loss"] == pytest.approx(whole["loss"])


def test_bfloat16_eval_is_close_to_float32_and_recorded(tmp_path, tiny_data) -> None:
    """evals.<task>.dtype = bfloat16 on the CPU: weights in bf16, logits scored in fp32; the loss is within
    0.01 nats (0.2 %) of the fp32 eval over the same 8 spread windows, and the JSON records device/dtype."""
    from helpers import write_train_toml

    from lmrepro.config import load_job_config
    from lmrepro.eval.results import evaluate_loss_task
    from lmrepro.train.trainer import init_checkpoint

    config = write_train_toml(
        tmp_path / "train.toml", tmp_path, tiny_data["train_index"], training={"seed": 3}
    )
    checkpoint = tmp_path / "checkpoints" / "step-0"
    init_checkpoint(load_job_config(config), checkpoint)
    heldout = tiny_data["heldout_index"].parent
    records = {
        dtype: evaluate_loss_task(
            checkpoint, heldout, "heldout", 8 * 32, tmp_path / f"{dtype}.json", dtype=dtype
        )
        for dtype in ("float32", "bfloat16")
    }
    fp32, bf16 = (records[d]["metrics"]["loss"] for d in ("float32", "bfloat16"))
    assert bf16 != fp32 and abs(bf16 - fp32) < 0.01  # measured: 6.14195 vs 6.14126
    assert [(r["device"], r["dtype"]) for r in records.values()] == [("cpu", "float32"), ("cpu", "bfloat16")]
    assert records["bfloat16"]["num_documents"] >= 2 and records["bfloat16"]["num_windows"] == 8
    with pytest.raises(ValueError, match="eval dtype 'float8' is not valid"):
        evaluate_loss_task(checkpoint, heldout, "heldout", 32, tmp_path / "x.json", dtype="float8")
