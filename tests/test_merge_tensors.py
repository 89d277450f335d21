"""Pure tensor functions of peftkit.merge.tensors (no models, no files)."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from peftkit.errors import InvalidOptionError, MergeError
from peftkit.merge.tensors import (
    COMBINATIONS,
    LowRank,
    average_tensors,
    combine_low_rank,
    svd_low_rank,
)


def _update(seed: int, r: int = 4, out: int = 6, inp: int = 5, scale: float = 2.0) -> LowRank:
    g = torch.Generator().manual_seed(seed)
    return LowRank(torch.randn(r, inp, generator=g), torch.randn(out, r, generator=g), scale)


@pytest.mark.parametrize("weights", [(0.7, 0.3), (1.0, -0.5), (2.0, 0.0)])
def test_cat_is_exact_weighted_sum(weights):
    u1, u2 = _update(0, r=3, scale=2.0), _update(1, r=5, scale=0.5)
    out = combine_low_rank([u1, u2], weights, "cat", scale=1.0)
    assert out.rank == 8
    assert_close(out.delta(), weights[0] * u1.delta() + weights[1] * u2.delta(), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:The density")
@pytest.mark.parametrize("how", ["linear", "dare_linear", "magnitude_prune"])
def test_factor_rules_with_one_nonzero_weight_return_that_update(how):
    u1, u2 = _update(0), _update(1, scale=3.0)
    out = combine_low_rank([u1, u2], [1.0, 0.0], how, density=1.0, scale=0.25)
    assert out.scale == 0.25
    assert_close(out.delta(), u1.delta(), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Adapter name")
def test_linear_matches_peft_add_weighted_adapter():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(5, 6))
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["0"]), adapter_name="a")
    model.add_adapter("b", LoraConfig(r=4, lora_alpha=2, target_modules=["0"]))
    layer = model.base_model.model[0]
    for name, seed in (("a", 0), ("b", 1)):
        u = _update(seed)
        layer.lora_A[name].weight.data.copy_(u.A)
        layer.lora_B[name].weight.data.copy_(u.B)
    model.add_weighted_adapter(["a", "b"], [0.7, 0.3], "mix", combination_type="linear")
    ours = combine_low_rank(
        [LowRank(layer.lora_A[n].weight, layer.lora_B[n].weight, layer.scaling[n]) for n in ("a", "b")],
        [0.7, 0.3],
        "linear",
        scale=layer.scaling["mix"],
    )
    assert_close(ours.delta(), layer.get_delta_weight("mix"), rtol=1e-5, atol=1e-6)


def test_svd_full_rank_is_exact_and_truncation_is_optimal():
    u1, u2 = _update(0), _update(1)
    exact = 0.6 * u1.delta() + 0.4 * u2.delta()
    assert_close(combine_low_rank([u1, u2], [0.6, 0.4], "svd", rank=5).delta(), exact, rtol=1e-4, atol=1e-4)
    low = combine_low_rank([u1, u2], [0.6, 0.4], "svd", rank=2)
    assert (low.A.shape, low.B.shape) == ((2, 5), (6, 2))
    singular = torch.linalg.svdvals(exact)
    assert_close(torch.linalg.matrix_norm(low.delta() - exact), singular[2:].norm(), rtol=1e-4, atol=1e-4)


def test_svd_pads_to_requested_rank():
    out = svd_low_rank(torch.randn(3, 4), rank=6)
    assert (out.A.shape, out.B.shape) == ((6, 4), (3, 6))


@pytest.mark.parametrize("how", ["ties_svd", "dare_ties_svd", "dare_linear_svd", "magnitude_prune_svd"])
def test_svd_variants_have_requested_rank(how):
    out = combine_low_rank([_update(0), _update(1)], [0.5, 0.5], how, rank=3, density=0.5)
    assert out.rank == 3 and torch.isfinite(out.delta()).all()


def test_dare_is_reproducible_with_a_generator():
    ups = [_update(0), _update(1)]
    runs = [
        combine_low_rank(
            ups, [0.5, 0.5], "dare_linear", density=0.5, generator=torch.Generator().manual_seed(3)
        )
        for _ in range(2)
    ]
    assert_close(runs[0].A, runs[1].A)
    assert_close(runs[0].B, runs[1].B)


def test_adalora_fold():
    from peftkit.methods.adalora.lowrank import fold_singular_values

    a, e, b = torch.randn(3, 5), torch.tensor([[1.0], [0.0], [2.0]]), torch.randn(4, 3)
    u = fold_singular_values(a, e, b, scale=0.5)
    assert_close(u.delta(), 0.5 * b @ (a * e))


def test_average_tensors():
    t = [torch.ones(2), 3 * torch.ones(2)]
    assert_close(average_tensors(t, [3.0, 1.0]), torch.full((2,), 1.5))
    with pytest.raises(MergeError, match="sum to 0"):
        average_tensors(t, [1.0, -1.0])


@pytest.mark.parametrize(
    ("how", "kwargs", "error", "match"),
    [
        ("lineer", {}, InvalidOptionError, "Did you mean 'linear'"),
        ("ties", {}, InvalidOptionError, "density"),
        ("ties", {"density": 1.5}, InvalidOptionError, "density=1.5"),
        ("linear", {"rank": 2}, InvalidOptionError, "only applies"),
        ("svd", {"rank": 0}, InvalidOptionError, "positive"),
    ],
)
def test_bad_options_are_refused(how, kwargs, error, match):
    with pytest.raises(error, match=match):
        combine_low_rank([_update(0), _update(1)], [0.5, 0.5], how, **kwargs)


def test_linear_refuses_unequal_ranks():
    with pytest.raises(MergeError, match="equal rank.*cat"):
        combine_low_rank([_update(0, r=2), _update(1, r=3)], [0.5, 0.5], "linear")


def test_every_combination_is_listed():
    assert {"linear", "cat", "svd", "ties", "dare_linear", "dare_ties"} <= set(COMBINATIONS)
