"""lmrepro.eval.harness: task YAML, input validation, lm-eval scoring checked against independent maths."""

from __future__ import annotations

import json
import math
import os
import random
import socket
from pathlib import Path

import pytest
import yaml

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")

from lmrepro.eval.harness import evaluate_multiple_choice, write_multiple_choice_task  # noqa: E402

WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "bird",
    "runs",
    "eats",
    "sings",
    "over",
    "under",
    "tree",
    "house",
    "bread",
    "water",
    "green",
    "small",
    "quickly",
]
N_ROWS = 12


def _sentence(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _random_rows(seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(N_ROWS):
        endings = [" " + _sentence(rng, 1, 4) + "." for _ in range(4)]
        rows.append(
            {
                "ind": i,
                "activity_label": "toy",
                "ctx": _sentence(rng, 3, 8),
                "endings": endings,
                "label": rng.randrange(4),
            }
        )
    # Quotes and an apostrophe exercise the "{{endings}}" -> Jinja -> ast.literal_eval round trip.
    rows[0]["endings"][1] = ' it\'s "quoted".'
    return rows


def _save_model(tok_dir: Path, out: Path, *, uniform: bool) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=not uniform,
    )
    model = LlamaForCausalLM(cfg)
    if uniform:
        # All logits exactly 0: every token has log-prob -log(V), so a continuation scores -n_tokens*log(V).
        with torch.no_grad():
            model.lm_head.weight.zero_()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("tiny")
    rng = random.Random(1)
    texts = [_sentence(rng, 3, 10) for _ in range(200)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    # Like the project's tokenizer export: no BOS from the post-processor, so BOS must come from lm-eval.
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok_dir = root / "tok"
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    ).save_pretrained(tok_dir)
    return {
        "random": _save_model(tok_dir, root / "random_model", uniform=False),
        "uniform": _save_model(tok_dir, root / "uniform_model", uniform=True),
        "jsonl": _write_jsonl(root / "toy.jsonl", _random_rows()),
    }


def test_write_task_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _write_jsonl(tmp_path / "d.jsonl", _random_rows())
    monkeypatch.chdir(tmp_path)  # a relative input must still end up absolute in the YAML
    out = write_multiple_choice_task("toy_mc", Path("d.jsonl"), tmp_path / "tasks")
    cfg = yaml.safe_load(out.read_text())
    assert out == tmp_path / "tasks" / "toy_mc.yaml"
    path = Path(cfg["dataset_kwargs"]["data_files"]["test"])
    assert path.is_absolute() and path == data.resolve()
    assert cfg["task"] == "toy_mc" and cfg["output_type"] == "multiple_choice" and cfg["test_split"] == "test"
    assert (cfg["doc_to_text"], cfg["doc_to_target"]) == ("{{ctx}}", "{{label}}")
    assert "endings" in cfg["doc_to_choice"] and cfg["target_delimiter"] == ""
    assert "include" not in cfg  # not HellaSwag's schema (no ctx_a/ctx_b): the one-space rule
    assert [m["metric"] for m in cfg["metric_list"]] == ["acc", "acc_norm"]


def test_bad_inputs(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        write_multiple_choice_task("toy_mc", missing, tmp_path)
    rows = _random_rows()
    del rows[0]["endings"]
    bad = _write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError, match="'endings'") as exc:
        write_multiple_choice_task("toy_mc", bad, tmp_path)
    assert str(bad) in str(exc.value)
    good = _write_jsonl(tmp_path / "good.jsonl", _random_rows())
    for name in ("has space", "a/b", "x,y", "", "1abc"):
        with pytest.raises(ValueError, match="task name"):
            write_multiple_choice_task(name, good, tmp_path)
    # evaluate_multiple_choice validates before importing/loading anything heavy.
    with pytest.raises(FileNotFoundError, match="config.json"):
        evaluate_multiple_choice(tmp_path / "no_model", "toy_mc", good)


def _manual_scores(model_dir: Path, rows: list[dict]) -> tuple[float, float]:
    """Independent acc/acc_norm: sum log-softmax of the ending's tokens after [BOS] + ctx, argmax."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    hits = hits_norm = 0
    for row in rows:
        n_ctx = 1 + len(tok.encode(row["ctx"], add_special_tokens=False))
        lls = []
        for ending in row["endings"]:
            ids = [tok.bos_token_id] + tok.encode(row["ctx"] + ending, add_special_tokens=False)
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
            lls.append(sum(logp[p - 1, ids[p]].item() for p in range(n_ctx, len(ids))))
        pred = max(range(len(lls)), key=lls.__getitem__)
        pred_norm = max(range(len(lls)), key=lambda j: lls[j] / len(row["endings"][j]))
        hits += pred == row["label"]
        hits_norm += pred_norm == row["label"]
    return hits / len(rows), hits_norm / len(rows)


@pytest.mark.slow
def test_evaluate_feeds_bos_and_matches_manual_scoring(tiny: dict[str, Path], monkeypatch) -> None:
    from lm_eval.models.huggingface import HFLM

    fed: list[list[int]] = []
    original = HFLM._model_call

    def recording_model_call(self, inps, *args, **kwargs):
        fed.extend(inps.tolist())
        return original(self, inps, *args, **kwargs)

    inet: list[object] = []
    original_connect = socket.socket.connect

    def guarded_connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            inet.append(address)
            raise OSError(f"network access attempted: {address}")
        return original_connect(sock, address)

    monkeypatch.setattr(HFLM, "_model_call", recording_model_call)
    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    res = evaluate_multiple_choice(tiny["random"], "toy_mc", tiny["jsonl"], batch_size=5)

    assert json.loads(json.dumps(res)) == res
    assert set(res) == {"task", "kind", "metrics", "num_examples", "lm_eval_version", "lm_eval"}
    repro = res["lm_eval"]
    assert (repro["add_bos_token"], repro["batch_size"], repro["dtype"], repro["device"]) == (
        True,
        5,
        "float32",
        "cpu",
    )
    assert repro["task_version"] == 2.0 and len(repro["task_config_sha256"]) == 64
    assert "add_bos_token=True" in repro["command"] and "--include_path" in repro["command"]
    assert (res["task"], res["kind"], res["num_examples"]) == ("toy_mc", "multiple_choice", N_ROWS)
    assert set(res["metrics"]) == {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"}
    assert all(0.0 <= res["metrics"][k] <= 1.0 for k in ("acc", "acc_norm"))
    assert res["lm_eval_version"].startswith("0.4")
    assert inet == []

    # What lm-eval fed: each row is [BOS] + tokens(ctx + ending) minus the last token (it is only predicted),
    # right-padded with 0. Exactly one BOS, no space between ctx and ending (target_delimiter "").
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny["random"])
    assert tok.bos_token_id is not None and tok.encode("the cat") == tok.encode(
        "the cat", add_special_tokens=False
    )
    expected = [
        [tok.bos_token_id] + tok.encode(r["ctx"] + e, add_special_tokens=False)[:-1]
        for r in _random_rows()
        for e in r["endings"]
    ]

    def matches(row: list[int], seq: list[int]) -> bool:
        return row[: len(seq)] == seq and not any(row[len(seq) :])

    assert len(fed) >= N_ROWS
    assert all(any(matches(row, seq) for seq in expected) for row in fed)
    assert all(any(matches(row, seq) for row in fed) for seq in expected)
    assert all(row[0] == tok.bos_token_id and row[1] != tok.bos_token_id for row in fed)

    acc, acc_norm = _manual_scores(tiny["random"], _random_rows())
    assert math.isclose(res["metrics"]["acc"], acc) and math.isclose(res["metrics"]["acc_norm"], acc_norm)

    # Deterministic: same inputs, same numbers (different batch size on purpose).
    again = evaluate_multiple_choice(tiny["random"], "toy_mc", tiny["jsonl"], batch_size=16)
    assert again["metrics"] == res["metrics"] and again["num_examples"] == res["num_examples"]


@pytest.mark.slow
def test_evaluate_uniform_model_oracle(tiny: dict[str, Path], tmp_path: Path) -> None:
    """With all-zero logits the ending with the fewest tokens wins acc; label it correct everywhere."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny["uniform"])
    rng = random.Random(2)
    rows: list[dict] = []
    expected_norm = 0
    while len(rows) < N_ROWS:
        ctx = _sentence(rng, 3, 6)
        endings = [" " + " ".join(rng.choice(WORDS) for _ in range(n)) for n in (1, 2, 3, 4)]
        rng.shuffle(endings)
        n_ctx = len(tok.encode(ctx, add_special_tokens=False))
        n_tok = [len(tok.encode(ctx + e, add_special_tokens=False)) - n_ctx for e in endings]
        # acc_norm divides -n_tok*log(V) by the ending's length in characters (lm-eval's definition).
        norm = sorted((-n / len(e), j) for j, (n, e) in enumerate(zip(n_tok, endings, strict=True)))
        if sorted(n_tok)[0] == sorted(n_tok)[1] or norm[-1][0] - norm[-2][0] < 1e-3:
            continue  # ties would make the expected answer depend on float rounding; draw again
        label = n_tok.index(min(n_tok))
        expected_norm += norm[-1][1] == label
        rows.append(
            {"ind": len(rows), "activity_label": "toy", "ctx": ctx, "endings": endings, "label": label}
        )
    data = _write_jsonl(tmp_path / "oracle.jsonl", rows)

    res = evaluate_multiple_choice(tiny["uniform"], "oracle_mc", data)
    assert res["metrics"]["acc"] == 1.0
    assert res["metrics"]["acc_stderr"] == 0.0
    assert math.isclose(res["metrics"]["acc_norm"], expected_norm / N_ROWS)
    limited = evaluate_multiple_choice(tiny["uniform"], "oracle_mc", data, limit=5)
    assert limited["num_examples"] == 5 and limited["metrics"]["acc"] == 1.0


def _record_requests(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(context, continuation) of every loglikelihood request lm-eval scores, in order."""
    from lm_eval.models.huggingface import HFLM

    seen: list[tuple[str, str]] = []
    original = HFLM.loglikelihood

    def recording(self, requests, *args, **kwargs):
        seen.extend(tuple(r.args) for r in requests)
        return original(self, requests, *args, **kwargs)

    monkeypatch.setattr(HFLM, "loglikelihood", recording)
    return seen


@pytest.mark.slow
def test_local_set_requests_unchanged_and_space_insensitive(tiny, tmp_path, monkeypatch) -> None:
    """The synthetic default (endings with a leading space) scores exactly what it scored before the
    one-space rule: context ctx, continuation the ending as given. Without the space: the same requests."""
    seen = _record_requests(monkeypatch)
    rows = _random_rows()
    res = evaluate_multiple_choice(tiny["random"], "toy_mc", tiny["jsonl"], batch_size=8)
    before_rule = [(r["ctx"], e) for r in rows for e in r["endings"]]  # target_delimiter "" + raw endings
    assert sorted(seen) == sorted(before_rule) and len(seen) == len(before_rule)
    stripped = [{**r, "endings": [e[1:] for e in r["endings"]]} for r in rows]
    seen.clear()
    res2 = evaluate_multiple_choice(tiny["random"], "toy_mc", _write_jsonl(tmp_path / "ns.jsonl", stripped))
    assert sorted(seen) == sorted(before_rule)
    assert res2["metrics"] == res["metrics"]


# Real rowanz hellaswag_val.jsonl rows (schema and style; endings carry no leading space).
HELLASWAG_ROWS = [
    {
        "ind": 24,
        "activity_label": "Roof shingle removal",
        "ctx_a": "A man is sitting on a roof.",
        "ctx_b": "he",
        "ctx": "A man is sitting on a roof. he",
        "split": "val",
        "split_type": "indomain",
        "label": 3,
        "endings": [
            "is using wrap to wrap a pair of skis.",
            "is ripping level tiles off.",
            "is holding a rubik's cube.",
            "starts pulling up roofing on a roof.",
        ],
        "source_id": "activitynet~v_-JhWjGDPHMY",
    },
    {
        "ind": 92,
        "activity_label": "Clean and Jerk",
        "ctx_a": "A lady walks to a barbell. She bends down and grabs the pole.",
        "ctx_b": "the lady",
        "ctx": "A lady walks to a barbell. She bends down and grabs the pole. the lady",
        "split": "val",
        "split_type": "zeroshot",
        "label": 3,
        "endings": [
            "swings and lands in her arms.",
            "pulls the barbell forward.",
            "pulls a rope attached to the barbell.",
            "stands and lifts the weight over her head.",
        ],
        "source_id": "activitynet~v_-lJS58hyo1c",
    },
    {
        "ind": 4,
        "activity_label": "Home and Garden",
        "ctx_a": "[header] How to clean a grill [title] Heat the grill.",
        "ctx_b": "",
        "ctx": "[header] How to clean a grill [title] Heat the grill.",
        "split": "val",
        "split_type": "indomain",
        "label": 0,
        "endings": [
            "[step] Scrub the grates with a brush.",
            "Eat the grill.",
            "[substeps] Paint it blue.",
            "Sell the house.",
        ],
        "source_id": "wikihow~1",
    },
]


@pytest.mark.slow
def test_real_format_hellaswag_scored_like_lm_evals_hellaswag(tiny, tmp_path, monkeypatch) -> None:
    """Fails on the old code (it scored ctx + "" + ending: "...roof. he" + "is using", i.e. "heis using")."""
    from lm_eval.tasks.hellaswag.utils import preprocess

    data = _write_jsonl(tmp_path / "hellaswag_val.jsonl", HELLASWAG_ROWS)
    seen = _record_requests(monkeypatch)
    res = evaluate_multiple_choice(tiny["random"], "hs_local", data, batch_size=4)
    # lm-eval's hellaswag task: query = preprocess(label + ": " + ctx_a + " " + ctx_b.capitalize()),
    # continuation = " " + preprocess(ending).
    expected = [
        (preprocess(f"{r['activity_label']}: {r['ctx_a']} {r['ctx_b'].capitalize()}"), " " + preprocess(e))
        for r in HELLASWAG_ROWS
        for e in r["endings"]
    ]
    assert sorted(seen) == sorted(expected) and len(seen) == len(expected)
    assert (
        "Roof shingle removal: A man is sitting on a roof. He",
        " is using wrap to wrap a pair of skis.",
    ) in seen
    assert (
        "Home and Garden: How to clean a grill. Heat the grill.",
        "  Scrub the grates with a brush.",  # lm-eval's own quirk: "[step] X" -> " X", then " " + " X"
    ) in seen
    assert res["num_examples"] == 3 and res["lm_eval"]["hellaswag_preprocessing"] is True
    assert res["lm_eval"]["task_version"] == 1.0  # hellaswag.yaml's metadata.version
