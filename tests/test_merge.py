"""merge_adapter / combine_adapters / describe_adapter through the Python API on tiny models."""

from __future__ import annotations

import json
import os
import stat
import warnings
from pathlib import Path

import pytest
import safetensors.torch
import torch
import transformers
from torch.testing import assert_close

import peftkit
from peftkit.errors import (
    AdapterFileError,
    BaseModelMismatchError,
    InvalidOptionError,
    MergeError,
    QuantizationError,
)
from peftkit.io import load_adapter, read_adapter_dir, save_adapter
from peftkit.merge import combine_adapters, merge_adapter
from peftkit.merge.adapters import view_adapter
from peftkit.merge.describe import describe_adapter
from tests.tiny_models import make_batch, make_model, model_device, save_tiny_model

OPTIONS = {"lora": {}, "adalora": {"total_step": 20}, "adapter": {}}
AUTO = {
    "bert": transformers.AutoModelForTokenClassification,
    "gpt2": transformers.AutoModelForSequenceClassification,
    "llama": transformers.AutoModelForCausalLM,
}


def perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Stand-in for training: move every trainable parameter (LoRA B starts at zero)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)  # the same numbers on every device
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            if param.requires_grad:
                noise = torch.randn(param.shape, generator=generator, device="cpu")
                param.add_(0.1 * noise.to(param.device))
    return model.eval()


def logits(model: torch.nn.Module, family: str) -> torch.Tensor:
    batch = {k: v for k, v in make_batch(family, device=model_device(model)).items() if k != "labels"}
    with torch.no_grad():
        return model(**batch).logits.float().cpu()


class Artefacts:
    """Tiny bases and 'trained' adapters saved once per module (memoised by their recipe)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache: dict[tuple, object] = {}

    def base(self, family: str, seed: int = 0) -> Path:
        key = ("base", family, seed)
        if key not in self.cache:
            path = self.root / f"base-{family}-{seed}"
            save_tiny_model(family, path, seed=seed)
            self.cache[key] = path
        return self.cache[key]

    def adapter(
        self,
        family: str,
        method: str,
        seed: int = 1,
        base_seed: int = 0,
        labels: tuple[str, ...] | None = None,
        **opts,
    ) -> tuple[Path, torch.Tensor]:
        """Save an adapter; returns its directory and the logits of the adapter model."""
        key = ("adapter", family, method, seed, base_seed, labels, repr(sorted(opts.items())))
        if key not in self.cache:
            model = make_model(family, base_seed)
            if labels:
                model.config.id2label = dict(enumerate(labels))
                model.config.label2id = {v: k for k, v in enumerate(labels)}
            peftkit.wrap(model, method, **{**OPTIONS[method], **opts})
            perturb(model, seed)
            path = self.root / f"{family}-{method}-{len(self.cache)}"
            save_adapter(model, path)
            self.cache[key] = (path, logits(model, family))
        return self.cache[key]


@pytest.fixture(scope="module")
def art(tmp_path_factory: pytest.TempPathFactory) -> Artefacts:
    return Artefacts(tmp_path_factory.mktemp("merge"))


# --------------------------------------------------------------------------- merge


@pytest.mark.parametrize(
    ("family", "method"),
    [("bert", "lora"), ("bert", "adalora"), ("gpt2", "lora"), ("gpt2", "adalora"), ("llama", "lora")],
)
def test_merged_model_loads_with_plain_transformers_and_matches_the_adapter(art, tmp_path, family, method):
    adapter, expected = art.adapter(family, method)
    out = tmp_path / "merged"
    merged = merge_adapter(art.base(family), adapter, out)
    assert merged.peftkit_merge_report["max_abs_logit_diff_fp32"] < 1e-5
    assert not any("lora" in name or "modules_to_save" in name for name, _ in merged.named_parameters())
    assert not merged._forward_hooks and all(p.requires_grad for p in merged.parameters())
    plain = AUTO[family].from_pretrained(out)
    assert type(plain) is type(make_model(family))
    assert_close(logits(plain, family), expected, rtol=1e-5, atol=1e-5)
    assert (out / "model.safetensors").is_file()
    assert json.loads((out / "peftkit_merge.json").read_text())["method"] == method


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_merged_files_follow_the_umask_like_adapter_files(art, tmp_path, umask):
    adapter, _ = art.adapter("bert", "lora")
    previous = os.umask(umask)
    try:
        merge_adapter(art.base("bert"), adapter, tmp_path / "merged")
        save_adapter(peftkit.wrap(make_model("bert"), "lora"), tmp_path / "adapter")
    finally:
        os.umask(previous)
    modes = {
        f"{p.parent.name}/{p.name}": stat.S_IMODE(p.stat().st_mode)
        for p in sorted([*(tmp_path / "merged").iterdir(), *(tmp_path / "adapter").iterdir()])
    }
    assert "merged/model.safetensors" in modes and "adapter/adapter_model.safetensors" in modes
    assert set(modes.values()) == {0o666 & ~umask}, {k: oct(v) for k, v in modes.items()}


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated")
def test_merge_adapter_written_by_peft_itself(art, tmp_path):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        make_model("gpt2"),
        LoraConfig(
            r=4, lora_alpha=8, target_modules=["c_attn"], modules_to_save=["score"], fan_in_fan_out=True
        ),
    )
    perturb(model, 5)
    expected = logits(model, "gpt2")
    model.save_pretrained(tmp_path / "peft-adapter")
    merged = merge_adapter(
        art.base("gpt2"), tmp_path / "peft-adapter", tmp_path / "merged"
    )  # no peftkit.json
    assert type(merged).__name__ == "GPT2ForSequenceClassification"
    assert_close(logits(merged, "gpt2"), expected, rtol=1e-5, atol=1e-5)


def test_merge_model_object_in_bfloat16_keeps_labels_and_tokenizer_files(art, tmp_path):
    adapter, expected = art.adapter("bert", "lora", labels=("O", "B-PER", "I-PER", "B-LOC", "I-LOC"))
    base_dir = tmp_path / "base"
    save_tiny_model("bert", base_dir)
    (base_dir / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    out = tmp_path / "merged"
    merged = merge_adapter(
        transformers.AutoModelForTokenClassification.from_pretrained(base_dir), adapter, out, dtype="bfloat16"
    )
    assert all(p.dtype == torch.bfloat16 for p in merged.parameters())
    assert (out / "vocab.txt").read_text() == "[PAD]\n[UNK]\n"
    plain = transformers.AutoModelForTokenClassification.from_pretrained(out)
    assert plain.config.id2label[1] == "B-PER"
    assert_close(logits(plain, "bert"), expected, rtol=0.05, atol=0.05)


def test_merging_a_pruned_adalora_adapter(art, tmp_path):
    model = peftkit.wrap(make_model("gpt2"), "adalora", total_step=20, init_r=4, target_r=2)
    perturb(model, 3)
    handle = peftkit.state.get_state(model).adapters["default"].handle
    pattern = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_E") and "default" in getattr(module, "lora_E", {}):
            mask = torch.tensor([True, False, True, False])
            with torch.no_grad():
                module.lora_E["default"][~mask] = 0.0
            pattern[f"{name}.lora_E.default"] = mask.tolist()
    handle.peft_config.rank_pattern = pattern
    expected = logits(model, "gpt2")
    save_adapter(model, tmp_path / "pruned")
    assert describe_adapter(tmp_path / "pruned")["ranks"]["max"] == 2
    merged = merge_adapter(art.base("gpt2"), tmp_path / "pruned")
    assert_close(logits(merged, "gpt2"), expected, rtol=1e-5, atol=1e-5)
    mixed = combine_adapters(
        [tmp_path / "pruned", tmp_path / "pruned"], [1.0, 0.0], "linear", tmp_path / "mix"
    )
    assert_close(logits(load_adapter(make_model("gpt2"), mixed), "gpt2"), expected, rtol=1e-5, atol=1e-5)


def test_bottleneck_merge_refused_on_request_or_without_a_head_writes_nothing(art, tmp_path):
    adapter, _ = art.adapter("bert", "adapter")
    with pytest.raises(MergeError, match=r"cannot be merged.*load_adapter.*combine"):
        merge_adapter(art.base("bert"), adapter, tmp_path / "out", head_only=False)
    headless, _ = art.adapter("llama", "adapter")  # a causal LM: its LM head is frozen, never saved
    with pytest.raises(MergeError, match="no trained task head"):
        merge_adapter(art.base("llama"), headless, tmp_path / "out2")
    assert list(tmp_path.iterdir()) == []


def test_bottleneck_merge_warns_and_folds_only_the_head_and_the_adapter_still_loads(art, tmp_path):
    adapter, expected = art.adapter("bert", "adapter")
    with pytest.warns(UserWarning, match=r"cannot be merged.*WITHOUT the adapter layers.*load_adapter"):
        merge_adapter(art.base("bert"), adapter, tmp_path / "out")
    plain = transformers.AutoModelForTokenClassification.from_pretrained(tmp_path / "out")
    head = read_adapter_dir(adapter).tensors["base_model.model.classifier.weight"]
    assert_close(plain.classifier.weight, head)
    base = transformers.AutoModelForTokenClassification.from_pretrained(art.base("bert"))
    assert_close(
        plain.bert.encoder.layer[0].output.dense.weight, base.bert.encoder.layer[0].output.dense.weight
    )
    assert_close(
        logits(load_adapter(plain, adapter), "bert"), expected
    )  # same fingerprint: heads are excluded


def test_merge_refuses_another_base_unless_forced(art, tmp_path):
    adapter, _ = art.adapter("bert", "lora")
    with pytest.raises(BaseModelMismatchError, match="pretrained weights differ"):
        merge_adapter(art.base("bert", seed=7), adapter, tmp_path / "a")
    with pytest.raises(BaseModelMismatchError, match="'gpt2' model"):
        merge_adapter(art.base("gpt2"), adapter, tmp_path / "b")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merge_adapter(art.base("bert", seed=7), adapter, tmp_path / "c", strict=False)
    assert (tmp_path / "c" / "model.safetensors").is_file()
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_nan_weights_are_never_saved_nor_merged_and_leave_nothing(tmp_path, art):
    model = perturb(peftkit.wrap(make_model("bert"), "lora"), 1)
    save_adapter(model, tmp_path / "nan")
    with torch.no_grad():
        model.bert.encoder.layer[1].attention.self.value.lora_B["default"].weight[0, 0] = float("nan")
    with pytest.raises(AdapterFileError, match=r"lora_B.weight.*NaN.*Nothing was written"):
        save_adapter(model, tmp_path / "nan")
    # NaN written behind peftkit's back (another tool, a diverged peft run) is refused on reading
    weights = tmp_path / "nan" / "adapter_model.safetensors"
    tensors = safetensors.torch.load_file(weights)
    key = next(k for k in tensors if k.endswith("value.lora_B.weight"))
    tensors[key][0, 0] = float("nan")
    safetensors.torch.save_file(tensors, weights)
    meta = json.loads((tmp_path / "nan" / "peftkit.json").read_text())
    meta.pop("files")  # no checksum to trip over first
    (tmp_path / "nan" / "peftkit.json").write_text(json.dumps(meta))
    with pytest.raises(AdapterFileError, match=rf"{key}.*NaN"):
        merge_adapter(art.base("bert"), tmp_path / "nan", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan"]


def test_merge_refuses_existing_output_and_bad_dtype(art, tmp_path):
    adapter, _ = art.adapter("bert", "lora")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("x")
    with pytest.raises(InvalidOptionError, match="already exists"):
        merge_adapter(art.base("bert"), adapter, tmp_path / "taken")
    with pytest.raises(InvalidOptionError, match="float16"):
        merge_adapter(art.base("bert"), adapter, tmp_path / "x", dtype="int8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_merge_into_8bit_weights_is_refused(art, tmp_path):
    adapter, _ = art.adapter("bert", "lora")
    config = json.loads((art.base("bert") / "config.json").read_text())
    quantised = tmp_path / "q"
    quantised.mkdir()
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_8bit": True}
    (quantised / "config.json").write_text(json.dumps(config))
    with pytest.raises(QuantizationError, match="re-?quantise|quantise the merged model"):
        merge_adapter(quantised, adapter, tmp_path / "out")
    model = make_model("bert")
    model.bert.encoder.layer[0].attention.self.query.weight = torch.nn.Parameter(
        torch.zeros(32, 32, dtype=torch.int8), requires_grad=False
    )
    with pytest.raises(QuantizationError, match="fp32/bf16"):
        merge_adapter(model, adapter)


def test_adapter_trained_on_8bit_base_merges_into_fp32_base(art, tmp_path):
    quantization = pytest.importorskip(
        "peftkit.quantization", reason="peftkit.quantization not available yet"
    )
    load_base = getattr(quantization, "load_base", None)
    if load_base is None:
        pytest.skip("peftkit.quantization.load_base not available yet")
    base_dir = art.base("bert")
    model8 = load_base(base_dir, task="token-classification", num_labels=5, load_in_8bit=True)
    peftkit.wrap(model8, "lora")
    perturb(model8, 4)
    save_adapter(model8, tmp_path / "ad8")
    fp32 = load_adapter(
        transformers.AutoModelForTokenClassification.from_pretrained(base_dir), tmp_path / "ad8"
    )
    merged = merge_adapter(base_dir, tmp_path / "ad8", tmp_path / "merged")
    assert_close(logits(merged, "bert"), logits(fp32, "bert"), rtol=1e-5, atol=1e-5)
    assert (logits(merged, "bert") - logits(model8, "bert")).abs().max() < 0.1  # 8-bit rounding only
    with pytest.raises(QuantizationError):
        merge_adapter(
            load_base(base_dir, task="token-classification", num_labels=5, load_in_8bit=True),
            tmp_path / "ad8",
        )


# --------------------------------------------------------------------------- combine


@pytest.mark.parametrize("method", ["lora", "adalora", "adapter"])
def test_combine_linear_with_weights_one_zero_equals_the_first(art, tmp_path, method):
    first, expected = art.adapter("gpt2", method, seed=1)
    second, _ = art.adapter("gpt2", method, seed=2)
    out = combine_adapters([first, second], [1.0, 0.0], "linear", tmp_path / "mix")
    assert_close(logits(load_adapter(make_model("gpt2"), out), "gpt2"), expected, rtol=1e-5, atol=1e-5)
    meta = read_adapter_dir(out).meta
    assert meta["combined_from"]["how"] == "linear" and meta["method"] == method


def test_combine_cat_is_the_exact_weighted_sum(art, tmp_path):
    a, _ = art.adapter("bert", "lora", seed=1)
    b, _ = art.adapter("bert", "lora", seed=2, r=4, alpha=2.0)
    out = combine_adapters([a, b], [0.7, 0.3], "cat", tmp_path / "cat")
    views = [view_adapter(read_adapter_dir(p)) for p in (a, b, out)]
    assert views[2].nominal_rank == 12
    for module, update in views[2].updates.items():
        expected = 0.7 * views[0].updates[module].delta() + 0.3 * views[1].updates[module].delta()
        assert_close(update.delta(), expected, rtol=1e-5, atol=1e-6)
    head = "base_model.model.classifier.weight"
    assert_close(views[2].heads[head], 0.7 * views[0].heads[head] + 0.3 * views[1].heads[head])
    load_adapter(make_model("bert"), out)


@pytest.mark.parametrize(
    ("method", "how", "kwargs", "rank"),
    [
        ("lora", "svd", {"rank": 3}, 3),
        ("lora", "ties", {"density": 0.5}, 8),
        ("lora", "dare_linear", {"density": 0.5}, 8),
        ("lora", "dare_ties", {"density": 0.5}, 8),
        ("lora", "ties_svd", {"density": 0.5, "rank": 2}, 2),
        ("adalora", "svd", {"rank": 5}, 5),
        ("adalora", "dare_ties", {"density": 0.7}, 12),
    ],
)
def test_combine_rules_give_loadable_adapters_of_the_right_rank(art, tmp_path, method, how, kwargs, rank):
    a, _ = art.adapter("gpt2", method, seed=1)
    b, _ = art.adapter("gpt2", method, seed=2)
    out = combine_adapters([a, b], [0.6, 0.4], how, tmp_path / how, **kwargs)
    info = describe_adapter(out)
    assert (info["ranks"]["min"], info["ranks"]["max"], info["ranks"]["nominal"]) == (rank, rank, rank)
    model = load_adapter(make_model("gpt2"), out)
    assert torch.isfinite(logits(model, "gpt2")).all()


def test_combine_dare_is_reproducible_with_the_seed(art, tmp_path):
    a, _ = art.adapter("gpt2", "lora", seed=1)
    b, _ = art.adapter("gpt2", "lora", seed=2)
    runs = [
        combine_adapters([a, b], None, "dare_linear", tmp_path / f"r{i}", density=0.5, seed=3)
        for i in range(2)
    ]
    t0, t1 = (read_adapter_dir(p).tensors for p in runs)
    for key in t0:
        assert_close(t0[key], t1[key])


@pytest.mark.parametrize(
    ("second", "how", "error", "match"),
    [
        (("gpt2", "adalora", {}), "linear", MergeError, "methods differ"),
        (("gpt2", "lora", {"base_seed": 7}), "linear", BaseModelMismatchError, "different base models"),
        (("gpt2", "lora", {"target_modules": ["c_proj"]}), "linear", MergeError, "different modules"),
        (("gpt2", "lora", {"labels": ("neg", "neu", "pos")}), "linear", MergeError, "different label sets"),
        (("gpt2", "lora", {"r": 4}), "linear", MergeError, r"equal rank.*ranks: .*8.*4"),
        (("gpt2", "lora", {}), "ties", InvalidOptionError, "needs a density"),
    ],
)
def test_incompatible_combines_are_refused_with_the_reason(art, tmp_path, second, how, error, match):
    first, _ = art.adapter("gpt2", "lora", seed=1, labels=("a", "b", "c"))
    family, method, opts = second
    opts = {"labels": ("a", "b", "c"), **opts}
    other, _ = art.adapter(family, method, seed=2, **opts)
    with pytest.raises(error, match=match):
        combine_adapters([first, other], [0.5, 0.5], how, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bottleneck_combine_only_averages(art, tmp_path):
    a, _ = art.adapter("gpt2", "adapter", seed=1)
    b, _ = art.adapter("gpt2", "adapter", seed=2)
    with pytest.raises(MergeError, match="parameter averaging only"):
        combine_adapters([a, b], [0.5, 0.5], "svd", tmp_path / "x")
    c, _ = art.adapter("gpt2", "adapter", seed=2, placement="pfeiffer")
    with pytest.raises(MergeError, match="adapt different modules|placement differs"):
        combine_adapters([a, c], [0.5, 0.5], "linear", tmp_path / "y")
    out = combine_adapters([a, b], [3.0, 1.0], "linear", tmp_path / "avg")
    ta, tb, tout = (read_adapter_dir(p).tensors for p in (a, b, out))
    for key in tout:
        assert_close(tout[key], 0.75 * ta[key] + 0.25 * tb[key])


# --------------------------------------------------------------------------- inspect


def test_describe_adapter_fields(art):
    adapter, _ = art.adapter("bert", "lora", labels=("O", "B-PER", "I-PER", "B-LOC", "I-LOC"))
    info = describe_adapter(adapter)
    assert info["method"] == "lora" and info["mergeable"] is True and info["peft_type"] == "LORA"
    assert info["num_targets"] == 4 and all(t.endswith(("query", "value")) for t in info["targets"])
    assert info["ranks"]["nominal"] == 8 and set(info["ranks"]["per_module"].values()) == {8}
    assert info["parameters"]["heads"] == 5 * 32 + 5
    assert info["parameters"]["total"] == info["parameters"]["adapter"] + info["parameters"]["heads"]
    assert info["file_size"]["weights"] > 0 and info["file_size"]["directory"] > info["file_size"]["weights"]
    assert info["base"]["fingerprint"]["model_type"] == "bert" and info["base"]["digest"]
    assert info["heads"] == {
        "modules": ["classifier"],
        "num_labels": 5,
        "id2label": {"0": "O", "1": "B-PER", "2": "I-PER", "3": "B-LOC", "4": "I-LOC"},
    }
    assert info["peftkit_version"] == peftkit.__version__
    json.dumps(info)


def test_merged_model_refuses_the_same_adapter_again(tmp_path) -> None:
    """The merged model has its base's fingerprint; the adapter must still not be applied twice."""
    base_dir = tmp_path / "base"
    save_tiny_model("bert", base_dir)
    model = peftkit.wrap(make_model("bert"), "lora")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    peftkit.save_adapter(model, tmp_path / "adapter")
    peftkit.merge_adapter(str(base_dir), tmp_path / "adapter", tmp_path / "merged")
    merged = transformers.AutoModelForTokenClassification.from_pretrained(str(tmp_path / "merged"))
    with pytest.raises(BaseModelMismatchError, match="already merged"):
        peftkit.load_adapter(merged, tmp_path / "adapter")
    with pytest.warns(UserWarning, match="already merged"):
        twice = peftkit.load_adapter(merged, tmp_path / "adapter", strict=False)
    assert twice(**make_batch("bert")).logits.shape[-1] == 5


def test_merge_names_a_missing_base_or_an_adapter_passed_as_base(art, tmp_path):
    adapter, _ = art.adapter("bert", "lora")
    with pytest.raises(InvalidOptionError, match=r"'.*no-such-base' does not exist"):
        merge_adapter(str(tmp_path / "no-such-base"), adapter, tmp_path / "out")
    with pytest.raises(InvalidOptionError, match="is an adapter directory"):
        merge_adapter(str(adapter), adapter, tmp_path / "out")
    assert not (tmp_path / "out").exists()
