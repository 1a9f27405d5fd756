"""lmrepro.eval.lm_eval_tasks: lm-eval's built-in hellaswag / arc_easy / gsm8k, offline, equal to the CLI.

The data is a datasets Arrow cache in the real Hub schemas, written here with ``datasets`` into a temporary
HF_HOME (the layout offline ``load_dataset("allenai/ai2_arc", "ARC-Easy")`` reads; a Hub snapshot or a
``save_to_disk`` folder is not found offline -- see ../shared/reference/lm-eval-offline.md section 5).
"""

from __future__ import annotations

import glob
import importlib.metadata
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")

from lmrepro.eval.harness import metrics_of  # noqa: E402
from lmrepro.eval.lm_eval_tasks import run_lm_eval_tasks  # noqa: E402

pytestmark = pytest.mark.slow
TASKS = ["hellaswag", "arc_easy", "gsm8k"]
LIMIT = 3
GEN_KWARGS = {"max_gen_toks": 4}  # gsm8k's until/do_sample stay lm-eval's; 4 new tokens keep it fast
WORDS = ["the", "a", "cat", "dog", "runs", "eats", "over", "under", "tree", "house", "bread", "water"]
WORDS += ["green", "small", "two", "three", "four"]


def _sent(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _rows(rng: random.Random) -> dict[str, dict[str, list[dict]]]:
    hs = [
        {
            "ind": i,
            "activity_label": "Toy " + rng.choice(WORDS),
            "ctx_a": _sent(rng, 5) + ".",
            "ctx_b": _sent(rng, 2),
            "ctx": "",
            "endings": [_sent(rng, rng.randint(1, 4)) + "." for _ in range(4)],  # no leading space: real data
            "source_id": f"toy~{i}",
            "split": "val",
            "split_type": "indomain",
            "label": str(rng.randrange(4)),  # the Hub's label is a digit string
        }
        for i in range(6)
    ]
    for r in hs:
        r["ctx"] = r["ctx_a"] + " " + r["ctx_b"]
    keys = ["A", "B", "C", "D"]
    arc = [
        {
            "id": f"Toy_{i}",
            "question": _sent(rng, 6) + "?",
            "choices": {"text": [_sent(rng, rng.randint(1, 3)) for _ in keys], "label": keys},
            "answerKey": rng.choice(keys),
        }
        for i in range(6)
    ]
    gsm = [
        {
            "question": f"{a} cats and {b} dogs. How many?",
            "answer": f"{a}+{b}=<<{a}+{b}={a + b}>>{a + b}\n#### {a + b}",
        }
        for a, b in ((rng.randint(1, 9), rng.randint(1, 9)) for _ in range(8))
    ]
    return {
        "Rowan/hellaswag": {"train": hs[:5], "validation": hs[1:]},
        "allenai/ai2_arc": {"train": arc[:5], "validation": arc[:2], "test": arc[1:]},
        "openai/gsm8k": {"train": gsm[:5], "test": gsm[5:]},
    }


def _features():
    from datasets import Features, List, Value

    s = Value("string")
    hs = Features(
        {
            "ind": Value("int32"),
            "activity_label": s,
            "ctx_a": s,
            "ctx_b": s,
            "ctx": s,
            "endings": List(s),
            "source_id": s,
            "split": s,
            "split_type": s,
            "label": s,
        }
    )
    arc = Features({"id": s, "question": s, "answerKey": s, "choices": {"text": List(s), "label": List(s)}})
    return {
        "Rowan/hellaswag": hs,
        "allenai/ai2_arc": arc,
        "openai/gsm8k": Features({"question": s, "answer": s}),
    }


# Hub layout: (config as lm-eval names it, folder of the parquet files); a README maps configs to files.
LAYOUT = {
    "Rowan/hellaswag": (None, "data"),
    "allenai/ai2_arc": ("ARC-Easy", "ARC-Easy"),
    "openai/gsm8k": ("main", "main"),
}


def _build_cache(root: Path) -> Path:
    """Hub-layout parquet -> load_dataset (local folder) -> moved to <HF_HOME>/datasets/<org>___<name>."""
    import datasets

    hf_home = root / "hf_home"
    cache = hf_home / "datasets"
    feats = _features()
    for repo, splits in _rows(random.Random(0)).items():
        cfg, sub = LAYOUT[repo]
        src = root / "hub_layout" / repo
        for split, rows in splits.items():
            (src / sub).mkdir(parents=True, exist_ok=True)
            datasets.Dataset.from_list(rows, features=feats[repo]).to_parquet(
                str(src / sub / f"{split}-00000-of-00001.parquet")
            )
        if cfg is not None:
            files = "".join(f"    - split: {s}\n      path: {sub}/{s}-*\n" for s in splits)
            (src / "README.md").write_text(
                f"---\nconfigs:\n  - config_name: {cfg}\n    data_files:\n{files}---\n"
            )
        dd = datasets.load_dataset(str(src), cfg, cache_dir=str(cache))
        built = Path(next(iter(dd.values())).cache_files[0]["filename"]).parent  # <name>/<cfg>/0.0.0/<hash>
        shutil.move(str(built.parents[2]), str(cache / repo.replace("/", "___")))
    return hf_home


def _save_model(root: Path) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    rng = random.Random(1)
    texts = [_sent(rng, 8) + " Question: Answer: #### 12 cats and dogs. How many?" for _ in range(200)]
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
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    out = root / "export" / "hf"
    hf_tok.save_pretrained(out)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(hf_tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=hf_tok.bos_token_id,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    import datasets.config
    from lm_eval.tasks import TaskManager

    root = tmp_path_factory.mktemp("lm_eval_tasks")
    saved = datasets.config.HF_DATASETS_CACHE
    hf_home = _build_cache(root)
    # datasets read HF_HOME at import; point this process at the fabricated cache (the CLI gets HF_HOME).
    datasets.config.HF_DATASETS_CACHE = hf_home / "datasets"
    try:
        yield {"root": root, "hf_home": hf_home, "model": _save_model(root), "tm": TaskManager()}
    finally:
        datasets.config.HF_DATASETS_CACHE = saved


def test_builtin_tasks_offline_equal_the_cli(env) -> None:
    results = run_lm_eval_tasks(
        env["model"], TASKS, limit=LIMIT, batch_size=4, gen_kwargs=GEN_KWARGS, task_manager=env["tm"]
    )
    by_task = {r["task"]: r for r in results}
    assert set(by_task) == set(TASKS)
    assert set(by_task["hellaswag"]["metrics"]) == {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"}
    assert "exact_match,strict-match" in by_task["gsm8k"]["metrics"]
    assert all(r["num_examples"] == LIMIT for r in results)
    for r in results:
        repro = r["lm_eval"]
        assert repro["lm_eval_version"] == importlib.metadata.version("lm_eval")
        assert len(repro["task_config_sha256"]) == 64 and repro["add_bos_token"] is True
        assert (repro["limit"], repro["batch_size"], repro["dtype"], repro["device"]) == (
            LIMIT,
            4,
            "float32",
            "cpu",
        )
    assert (
        by_task["gsm8k"]["lm_eval"]["n_shot"] == 5
        and by_task["gsm8k"]["lm_eval"]["gen_kwargs"] == "max_gen_toks=4"
    )

    # The recorded command line, for all three tasks at once, in a fresh process with the cache's HF_HOME.
    cmds = {t: shlex.split(r["lm_eval"]["command"]) for t, r in by_task.items()}
    argv = cmds["hellaswag"]
    i = argv.index("--tasks")
    for t, c in cmds.items():  # the commands differ only in the task name
        assert c[: i + 1] + c[i + 2 :] == argv[: i + 1] + argv[i + 2 :] and c[i + 1] == t
    assert [a.split("=")[0] for a in argv[:3]] == [
        "HF_HUB_OFFLINE",
        "HF_DATASETS_OFFLINE",
        "TRANSFORMERS_OFFLINE",
    ]
    assert argv[3:5] == ["python", "-m"] and "--gen_kwargs" in argv  # gsm8k's override travels with all
    out = env["root"] / "cli_out"
    cli = [sys.executable, *argv[4 : i + 1], ",".join(TASKS), *argv[i + 2 :], "--output_path", str(out)]
    run_env = {**os.environ, **dict(a.split("=", 1) for a in argv[:3]), "HF_HOME": str(env["hf_home"])}
    run_env.pop("HF_DATASETS_CACHE", None)
    proc = subprocess.run(cli, env=run_env, cwd=env["root"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (res_file,) = glob.glob(str(out / "**" / "results_*.json"), recursive=True)
    cli_res = json.loads(Path(res_file).read_text())
    for t in TASKS:
        assert metrics_of(cli_res["results"][t]) == by_task[t]["metrics"], t
        assert cli_res["n-shot"][t] == by_task[t]["lm_eval"]["n_shot"]
        assert cli_res["versions"][t] == by_task[t]["lm_eval"]["task_version"], t


def test_unknown_and_uncached_tasks_fail_before_scoring(env, monkeypatch) -> None:
    from lm_eval.models.huggingface import HFLM

    def no_model(*a, **k):
        raise AssertionError("the model must not be built")

    monkeypatch.setattr(HFLM, "__init__", no_model)
    with pytest.raises(ValueError, match=r"unknown lm-eval task.*'hellaswagg'.*did you mean hellaswag"):
        run_lm_eval_tasks(env["model"], ["hellaswagg"], task_manager=env["tm"])
    with pytest.raises(ValueError) as exc:
        run_lm_eval_tasks(env["model"], ["arc_easy", "arc_challenge"], task_manager=env["tm"])
    msg = str(exc.value)
    assert (
        "arc_challenge" in msg
        and "'allenai/ai2_arc'" in msg
        and "load_task_or_group(['arc_challenge'])" in msg
    )
    assert "(config 'ARC-Challenge')" in msg and "task 'arc_easy'" not in msg  # arc_easy is cached
    with pytest.raises(ValueError, match=r"task 'piqa' needs dataset .*piqa"):
        run_lm_eval_tasks(env["model"], ["piqa"], task_manager=env["tm"])


# ---- the workflow's eval kind lm_eval: one task per eval, checked while the workflow is parsed ----------


def _export_of(env) -> Path:
    """An export folder as export_checkpoint writes it: hf/ + export.json."""
    export = env["root"] / "export" / "step-5"
    if not export.exists():
        export.mkdir(parents=True)
        shutil.copytree(env["model"], export / "hf")
        (export / "export.json").write_text(json.dumps({"run": "tiny", "step": 5, "tokens_seen": 640}))
    return export


def test_an_lm_eval_eval_writes_the_tasks_numbers_in_the_eval_schema(env) -> None:
    from lmrepro.eval.results import evaluate_lm_eval_task

    out = env["root"] / "eval" / "arc.json"
    record = evaluate_lm_eval_task(
        _export_of(env), "arc", "arc_easy", out, limit=LIMIT, batch_size=4, device="cpu",
        task_manager=env["tm"],
    )  # fmt: skip
    (direct,) = run_lm_eval_tasks(
        env["model"], ["arc_easy"], limit=LIMIT, batch_size=4, task_manager=env["tm"]
    )
    assert json.loads(out.read_text()) == record
    assert (record["run"], record["step"], record["tokens_seen"], record["task"]) == ("tiny", 5, 640, "arc")
    assert (record["kind"], record["lm_eval_task"], record["num_examples"]) == ("lm_eval", "arc_easy", LIMIT)
    assert record["metrics"] == direct["metrics"] and set(record["metrics"]) >= {"acc", "acc_norm"}
    assert record["lm_eval"]["command"] == direct["lm_eval"]["command"].replace(
        str(env["model"]), str(_export_of(env) / "hf")
    )
    assert record["subtasks"] == [] and (record["device"], record["dtype"]) == ("cpu", "float32")


def test_lm_eval_tasks_are_checked_before_any_job(env, monkeypatch) -> None:
    import yaml

    from lmrepro.eval import lm_eval_tasks
    from lmrepro.workflow import check_config

    monkeypatch.setattr(lm_eval_tasks, "_task_manager", lambda tm: env["tm"])
    repo = Path(__file__).resolve().parents[2]
    base = yaml.safe_load((repo / "config" / "config.yaml").read_text())

    def check(task: str, **run) -> None:
        config = json.loads(json.dumps(base))
        config["evals"]["suite"] = {"kind": "lm_eval", "task": task, "batch_size": 8, "device": "auto",
                                    "dtype": "float32"}  # fmt: skip
        config["runs"]["tiny"]["evals"] = ["heldout", "suite"]
        config["runs"]["tiny"].update(run)
        check_config(config, root=repo)

    check("arc_easy")  # known and cached
    with pytest.raises(ValueError, match=r"^evals\.suite\.task = 'arc_eazy': unknown lm-eval task.*arc_easy"):
        check("arc_eazy")
    with pytest.raises(ValueError) as e:
        check("piqa")
    assert str(e.value).startswith("evals.suite.task = 'piqa': task 'piqa' needs dataset")
    assert "not in the offline datasets cache" in str(e.value) and "\n" not in str(e.value)
    masked = json.loads(json.dumps(base["runs"]["tiny"]["overrides"]))
    masked["model"] = {"overrides": {"causal": False}}
    masked["training"].update(objective="mlm", mlm={"mask_token": "<|pad|>"})
    with pytest.raises(ValueError, match=r"^runs\.tiny\.evals: suite is a lm_eval eval .*causal models only"):
        check("gsm8k", overrides=masked)  # a generative task (or any lm-eval task) on a masked LM
