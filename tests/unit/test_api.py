"""The public API (pslora_cli.api) against the CLI's training path, on the unit tests' tiny BERT: the regulariser's
value and gradient through the API equal those of the Regulariser `pslora run` builds (training/recipe.build) for the
same adapter and history, in float64, and both equal the dense reference loss; the fold puts the same weights in
place; importing the API stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import text_data, unit_sequence
from pslora_cli.models.adapters import AdapterFile
from pslora_cli.store import TaskFiles
from pslora_cli.training.recipe import build, train_task

CPU = torch.device("cpu")
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
LAMBDA = 0.7


def _seq(word_bert, **method):
    return unit_sequence(word_bert, method={"stability_weight": LAMBDA, **method},
                         training={"steps": 6, "learning_rate": 2e-2})


@pytest.fixture(scope="module")
def earlier(word_bert, tmp_path_factory):
    """Two earlier tasks trained by the CLI's recipe (the history of task 3)."""
    seq = _seq(word_bert)
    folders = []
    for i in range(2):
        out = TaskFiles(tmp_path_factory.mktemp(f"t{i + 1}"))
        train_task(seq, i, text_data(seed=i + 1), [f for f in folders], out, CPU)
        folders.append(out.adapter_dir)
    return folders


def _user_model(word_bert):
    """The PEFT model a user would make: stock AutoModel + get_peft_model, the sequence's LoRA settings."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    return get_peft_model(AutoModel.from_pretrained(word_bert),
                          LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"]))


def _set_factors(layers: dict, seed: int) -> list[torch.Tensor]:
    """Random non-zero A and B (float64) in every LoRA layer, the same for the same seed; returns them in order."""
    gen = torch.Generator().manual_seed(seed)
    params = []
    with torch.no_grad():
        for name in sorted(layers):
            for factor in (layers[name].lora_A["default"].weight, layers[name].lora_B["default"].weight):
                factor.copy_(torch.randn(factor.shape, generator=gen, dtype=torch.float64) * 0.05)
                params.append(factor)
    return params


def _value_and_grads(value: torch.Tensor, params: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    return value.detach(), [g.detach() for g in torch.autograd.grad(value, params)]


@pytest.mark.parametrize("variant", ["magnitude-only", "hinge+ratio", "dir+fro"])
def test_the_api_regulariser_equals_the_cli_s_in_value_and_gradient_float64(word_bert, earlier, variant):
    from pslora_cli.api import StabilityRegulariser, fold_history
    from pslora_cli.core.stability import adaptive_alpha, lora_delta, parameter_stability_loss
    from pslora_cli.training.recipe import lora_layers

    seq = _seq(word_bert, variant=variant)
    # the CLI's path: task 3 built by the recipe against the two stored adapters
    run = build(seq, 2, text_data(seed=3), [AdapterFile(f) for f in earlier], CPU)
    run.peft_model.double()
    cli_params = _set_factors(run.layers, seed=7)
    cli = _value_and_grads(run.regulariser.weighted(run.regulariser.terms(run.layers)), cli_params)

    # the API's: a stock PEFT model, the history folded in and the regulariser built from the same folders
    model = _user_model(word_bert)
    assert fold_history(model, earlier) == list(earlier)
    for name, layer in lora_layers(model).items():  # the fold put W0 + merge in place, as the CLI's build does
        assert torch.equal(layer.get_base_layer().weight, run.layers[name].get_base_layer().weight.float()), name
    model.double()
    regulariser = StabilityRegulariser(model, earlier, stability_weight=LAMBDA, variant=variant)
    api_params = _set_factors(regulariser.layers, seed=7)
    api = _value_and_grads(regulariser(), api_params)

    assert api[0].dtype == torch.float64 and api[0] > 0
    assert torch.allclose(api[0], cli[0], rtol=1e-12, atol=0), (api[0], cli[0])
    for g_api, g_cli in zip(api[1], cli[1]):
        assert g_api.abs().sum() > 0
        assert torch.allclose(g_api, g_cli, rtol=1e-10, atol=1e-14)

    # and both are the dense reference loss (core/stability.py) on D = s·B·A against H = ΔW_1 + ΔW_2, float64
    params = [p.detach().clone().requires_grad_(True) for p in api_params]
    total = torch.zeros((), dtype=torch.float64)
    adapters = [AdapterFile(f) for f in earlier]
    names = sorted(regulariser.layers)
    for k, name in enumerate(names):
        a, b = params[2 * k], params[2 * k + 1]
        h = sum(adapter.delta(name, dtype=torch.float64) for adapter in adapters)
        h32 = sum(adapter.delta(name) for adapter in adapters)  # H as training holds it (float32), for α
        total = total + parameter_stability_loss(lora_delta(a, b, 4 / 2), h, alpha=adaptive_alpha(h32).double(),
                                                 variant=variant)
    if variant != "dir+fro":
        total = total / len(names)  # the scale-free variants: a mean over modules
    # (training keeps H, and tanh(αH), in float32: the last ~1e-8 differ from the float64 reference)
    reference = _value_and_grads(LAMBDA * total, params)
    assert torch.allclose(api[0], reference[0], rtol=1e-6), (api[0], reference[0])
    for g_api, g_ref in zip(api[1], reference[1]):
        assert torch.allclose(g_api, g_ref, rtol=1e-5, atol=1e-7), (g_api - g_ref).abs().max()


def test_a_store_as_history_is_its_trained_tasks_in_order(word_bert, earlier, tmp_path):
    from pslora_cli.api import history_folders

    assert history_folders(None) == [] and history_folders([]) == []
    assert history_folders(earlier) == list(earlier) and history_folders(earlier[0]) == [earlier[0]]


def test_no_history_or_zero_weight_is_an_inactive_zero_term(word_bert, earlier):
    from pslora_cli.api import StabilityRegulariser

    model = _user_model(word_bert)
    for history, weight in (([], 1.0), (earlier, 0.0)):
        regulariser = StabilityRegulariser(model, history, stability_weight=weight)
        assert not regulariser.active and float(regulariser()) == 0.0


def test_bad_options_and_mismatched_modules_are_refused(word_bert, earlier, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    from pslora_cli.api import StabilityRegulariser, fold_history

    model = _user_model(word_bert)
    for options, match in (({"stability_weight": -1}, "stability_weight"), ({"variant": "x"}, "variant"),
                           ({"alpha": 0}, "alpha"), ({"reduction": "sum"}, "reduction")):
        with pytest.raises(ValueError, match=match):
            StabilityRegulariser(model, earlier, **options)
    with pytest.raises(ValueError, match="no PEFT LoRA layer"):
        StabilityRegulariser(AutoModel.from_pretrained(word_bert), earlier)
    query_only = get_peft_model(AutoModel.from_pretrained(word_bert), LoraConfig(r=2, target_modules=["query"]))
    with pytest.raises(ValueError, match="adapts other modules"):
        StabilityRegulariser(query_only, earlier)
    fold_history(model, earlier)
    with pytest.raises(ValueError, match="folded into it already"):
        fold_history(model, earlier)


def test_the_api_merge_and_metrics_are_the_cli_s(word_bert, earlier, tmp_path):
    from safetensors.torch import load_file

    from pslora_cli.api import continual_metrics, merge_adapters
    from pslora_cli.core.metrics import cl_metrics
    from pslora_cli.errors import InputError

    info = merge_adapters(earlier, tmp_path / "merged.safetensors")
    merged = load_file(str(tmp_path / "merged.safetensors"))
    a, b = (AdapterFile(f) for f in earlier)
    for name in a.modules:
        da, db = a.delta(name), b.delta(name)
        assert torch.equal(merged[name], torch.where(db.abs() > da.abs(), db, da))
    assert info["method"] == "magnitude" and info["modules"] == 4
    with pytest.raises(InputError, match="--density 7"):
        merge_adapters(earlier, tmp_path / "ties.safetensors", method="ties", density=7)
    matrix = [[0.5, 0.5], [0.9, 0.4], [0.8, 0.9]]
    assert continual_metrics(matrix) == cl_metrics(matrix) and continual_metrics(matrix)["bwt"] == pytest.approx(-0.1)


def test_importing_the_api_imports_neither_torch_nor_transformers():
    code = ("import sys, pslora_cli.api as api; "
            "print(sorted(api.__all__)); print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == str(sorted(["StabilityRegulariser", "builtin_model", "continual_metrics", "fold_history",
                                 "history_folders", "merge_adapters"]))
    assert out[1] == "False False"
