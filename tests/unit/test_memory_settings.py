"""What lets a 7B model train on one GPU, on tiny models: backbone.dtype (frozen weights in bfloat16/float16, the LoRA
factors, optimiser state, head and saved adapter float32), training.gradient_checkpointing (activations recomputed,
the same adapter), and a history that forms nothing d_out x d_in that the loss form does not need (the default
magnitude-only reads ‖H‖ from the factors; the running merge is added into the weights row block by row block)."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import text_data, unit_sequence
from pslora_cli.core.merges.magnitude import add_magnitude_merge_factors_, magnitude_merge_factors
from pslora_cli.models.adapters import AdapterFile, SummedHistory
from pslora_cli.store import TaskFiles
from pslora_cli.training.recipe import build, save_task, train_step, train_task

CPU = torch.device("cpu")
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")  # PEFT on transformers 5
STEPS = 6


class LargestTensor(TorchDispatchMode):
    """Records the most elements of any new tensor an op allocates while it is active (views and in-place results,
    which share an input's storage, allocate nothing)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in torch.utils._pytree.tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.largest = max(self.largest, t.untyped_storage().nbytes() // t.element_size())
        return out


def _lora_products(folder) -> dict[str, torch.Tensor]:
    adapter = AdapterFile(folder)
    return {name: adapter.delta(name) for name in adapter.modules}


def _trained(seq, tmp_path, name, index=0, previous=()):
    """(the live TaskTraining after STEPS steps, its saved TaskFiles)."""
    torch.manual_seed(0)
    run = build(seq, index, text_data(seed=index + 1), [AdapterFile(d) for d in previous], CPU)
    run.peft_model.train()
    for step in range(1, run.total + 1):
        run.recent.append(train_step(run, step))
    out = TaskFiles(tmp_path / name)
    save_task(run, out)
    return run, out


# -- backbone.dtype ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_half_precision_backbone_trains_float32_adapters_close_to_float32_ones(word_bert, tmp_path, dtype):
    half = getattr(torch, dtype)
    runs = {}
    for name in ("float32", dtype):
        seq = unit_sequence(word_bert, backbone={"dtype": name}, training={"steps": STEPS})
        runs[name] = _trained(seq, tmp_path, name)
    run, out = runs[dtype]
    frozen = [p for n, p in run.peft_model.named_parameters() if "lora_" not in n]
    lora = [p for n, p in run.peft_model.named_parameters() if "lora_" in n]
    assert frozen and all(p.dtype == half and not p.requires_grad for p in frozen)
    assert lora and all(p.dtype == torch.float32 and p.requires_grad for p in lora)
    assert run.head.weight.dtype == torch.float32
    state = [t for s in run.optimizer.state.values() for t in s.values() if t.dim() > 0]
    assert state and all(t.dtype == torch.float32 for t in state)
    with safe_open(str(out.adapter_dir / "adapter_model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}
    # the same training in float32: the updates agree to the half format's precision (cosine over all modules;
    # a query module's first AdamW steps follow the sign of a near-zero gradient, so single entries may differ)
    ref, got = _lora_products(runs["float32"][1].adapter_dir), _lora_products(out.adapter_dir)
    cat = lambda d: torch.cat([d[n].flatten() for n in sorted(d)])  # noqa: E731
    assert torch.nn.functional.cosine_similarity(cat(got), cat(ref), 0) > 0.99
    assert runs[dtype][0].recent[-1]["loss"] == pytest.approx(runs["float32"][0].recent[-1]["loss"], rel=0.05)


def test_earlier_tasks_fold_into_a_bfloat16_backbone_rounded_once(word_bert, tmp_path):
    seq = unit_sequence(word_bert, backbone={"dtype": "bfloat16"}, training={"steps": STEPS})
    _, t1 = _trained(seq, tmp_path, "t1")
    w0 = {n: p.detach().clone() for n, p in build(seq, 0, text_data(seed=1), [], CPU).layers.items()
          for n, p in [(n, p.get_base_layer().weight)]}
    run, _ = _trained(seq, tmp_path, "t2", index=1, previous=[t1.adapter_dir])
    merge = _lora_products(t1.adapter_dir)  # one earlier task: its merge is its update
    for name, layer in run.layers.items():
        weight = layer.get_base_layer().weight
        assert weight.dtype == torch.bfloat16
        assert torch.equal(weight, (w0[name].float() + merge[name]).to(torch.bfloat16)), name


def test_a_language_model_loads_in_bfloat16(tmp_path):
    from test_generative import tiny_llama, word_tokenizer

    from pslora_cli.config import Backbone
    from pslora_cli.models import load_backbone

    tok = word_tokenizer()
    folder = tmp_path / "llama"
    tiny_llama(tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    lm = load_backbone(Backbone(source="huggingface", name=str(folder), kind="causal-lm", dtype="bfloat16"), CPU)
    assert {p.dtype for p in lm.model.parameters()} == {torch.bfloat16}
    default = load_backbone(Backbone(source="huggingface", name=str(folder), kind="causal-lm"), CPU)
    assert {p.dtype for p in default.model.parameters()} == {torch.float32}


def test_backbone_dtype_float32_leaves_the_store_identity_as_before(word_bert):
    plain = unit_sequence(word_bert).to_dict()
    assert "dtype" not in plain["backbone"] and "gradient_checkpointing" not in plain["training"]
    assert unit_sequence(word_bert, backbone={"dtype": "bfloat16"}).to_dict()["backbone"]["dtype"] == "bfloat16"


# -- training.gradient_checkpointing ----------------------------------------------------------------------------

def test_gradient_checkpointing_recomputes_the_layers_and_trains_the_same_adapter(word_bert, tmp_path):
    outs, calls = {}, {}
    for on in (False, True):
        seq = unit_sequence(word_bert, training={"steps": STEPS, "gradient_checkpointing": on})
        torch.manual_seed(0)
        run = build(seq, 0, text_data(seed=1), [], CPU)
        inner = run.backbone.model.encoder.layer[0].intermediate  # inside the checkpointed layer
        count = []
        inner.register_forward_hook(lambda *args: count.append(1))
        run.peft_model.train()
        for step in range(1, run.total + 1):
            train_step(run, step)
        calls[on] = len(count)
        outs[on] = TaskFiles(tmp_path / str(on))
        save_task(run, outs[on])
    assert calls[False] == STEPS and calls[True] == 2 * STEPS  # each layer run again in the backward pass
    ref, got = _lora_products(outs[False].adapter_dir), _lora_products(outs[True].adapter_dir)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-7)


# -- nothing dense that the loss form does not need ----------------------------------------------------------------

class _Adapter:
    def __init__(self, factors, scale):
        self._factors, self.scale = factors, scale

    def factors(self, name, device):
        return self._factors[name]


class _Layer(torch.nn.Module):
    def __init__(self, a, b, scale):
        super().__init__()
        self.lora_A = torch.nn.ModuleDict({"default": torch.nn.Linear(a.shape[1], a.shape[0], bias=False)})
        self.lora_B = torch.nn.ModuleDict({"default": torch.nn.Linear(b.shape[1], b.shape[0], bias=False)})
        with torch.no_grad():
            self.lora_A["default"].weight.copy_(a)
            self.lora_B["default"].weight.copy_(b)
        self.scaling = {"default": scale}


class _NoDense(dict):
    """A history whose dense H must not be read."""

    def __getitem__(self, name):
        raise AssertionError(f"the dense history of {name} was formed")


@pytest.mark.parametrize("variant", ["magnitude-only", "hinge+ratio"])
def test_the_magnitude_only_form_reads_h_from_its_factors(variant):
    from pslora_cli.config import Method
    from pslora_cli.core.stability import stability_terms
    from pslora_cli.core.lora import lora_delta
    from pslora_cli.training.regularisers import Regulariser

    g = torch.Generator().manual_seed(0)
    d_out, d_in, r = 96, 80, 2
    names = ["m0", "m1"]
    earlier = [_Adapter({n: (torch.randn(r, d_in, generator=g), torch.randn(d_out, r, generator=g)) for n in names},
                        2.0) for _ in range(3)]
    layers = {n: _Layer(torch.randn(r, d_in, generator=g), torch.randn(d_out, r, generator=g), 2.0) for n in names}
    dense = {n: sum(lora_delta(*adp.factors(n, CPU), adp.scale) for adp in earlier) for n in names}
    reads = []

    class Counting(dict):
        def __getitem__(self, name):
            reads.append(name)
            return dense[name]

    history = Counting(dense) if variant != "magnitude-only" else _NoDense(dense)
    with LargestTensor() as probe:
        reg = Regulariser(Method(variant=variant), layers, earlier, history, CPU)
        loss = reg.terms(layers)["stability"]
        loss.backward()
    if variant == "magnitude-only":
        # nothing d_out x d_in, no α (no tanh term)
        assert probe.largest < d_out * d_in and reg.record["alpha_per_module"] is None
        assert all(h.store == "factors" for h in reg.losses["stability"].prepared.values())
        expected = sum(stability_terms(lora_delta(layers[n].lora_A["default"].weight, layers[n].lora_B["default"].weight,
                                                  2.0), dense[n], alpha=1.0, variant=variant)[1] for n in names) / 2
        torch.testing.assert_close(loss.detach(), expected.detach(), rtol=1e-5, atol=0)
    else:
        assert sorted(reads) == names  # each module's dense H formed once, for α and tanh(αH)
        assert set(reg.record["alpha_per_module"]) == set(names)


def test_a_ps_lora_task_forms_no_dense_history_and_folds_the_merge_exactly(word_bert, tmp_path, monkeypatch):
    from pslora_cli.core.merges.magnitude import magnitude_merge

    seq = unit_sequence(word_bert, training={"steps": STEPS})  # ps-lora, magnitude-only, previous: merge
    t1 = train_task(seq, 0, text_data(seed=1), [], TaskFiles(tmp_path / "t1"), CPU)
    t2_dir = tmp_path / "t2"
    train_task(seq, 1, text_data(seed=2), [tmp_path / "t1"], TaskFiles(t2_dir), CPU)
    assert t1["steps"] == STEPS
    w0 = {n: layer.get_base_layer().weight.detach().clone()
          for n, layer in build(seq, 0, text_data(seed=1), [], CPU).layers.items()}
    previous = [tmp_path / "t1", t2_dir]
    with monkeypatch.context() as m:  # no dense update of a task, no dense H, no dense merge is formed
        def refuse(*args, **kwargs):
            raise AssertionError("a dense d_out x d_in tensor was formed")

        import pslora_cli.core.merges.magnitude as magnitude

        m.setattr(AdapterFile, "delta", refuse)
        m.setattr(SummedHistory, "__getitem__", refuse)
        m.setattr(magnitude, "from_factors", refuse)
        m.setattr(magnitude, "magnitude_merge_factors", refuse)
        run = build(seq, 2, text_data(seed=3), [AdapterFile(d) for d in previous], CPU)
    assert {h.store for h in run.regulariser.losses["stability"].prepared.values()} == {"factors"}
    for name, layer in run.layers.items():
        merged = magnitude_merge([AdapterFile(d).delta(name) for d in previous])
        assert torch.equal(layer.get_base_layer().weight, w0[name] + merged), name


@pytest.mark.parametrize("tasks", [1, 3, 6])
def test_the_merge_added_in_row_blocks_is_bitwise_the_dense_merge_added(tasks):
    g = torch.Generator().manual_seed(tasks)
    d_out, d_in, block = 200, 70, 16 * 70  # 13 row blocks
    factors = [(torch.randn(d_out, 3, generator=g), torch.randn(3, d_in, generator=g)) for _ in range(tasks)]
    factors.append((factors[0][0].clone(), factors[0][1].clone()))  # ties: the earlier task keeps the element
    weight = torch.randn(d_out, d_in, generator=g)
    expected = weight + magnitude_merge_factors(factors, block_elements=block)
    with LargestTensor() as probe:
        add_magnitude_merge_factors_(weight, factors, block_elements=block)
    assert torch.equal(weight, expected)
    assert probe.largest <= block  # the merge never exists in full
    half = torch.randn(d_out, d_in, generator=g).to(torch.bfloat16)
    rounded_once = (half.float() + magnitude_merge_factors(factors, block_elements=block)).to(torch.bfloat16)
    assert torch.equal(add_magnitude_merge_factors_(half, factors, block_elements=block), rounded_once)


def test_an_image_backbone_in_bfloat16_takes_float_images_and_feeds_a_float32_head():
    from conftest import vit_backbone

    from pslora_cli.models import load_backbone
    from pslora_cli.models.heads import TaskModel, make_head

    bb = load_backbone(vit_backbone(dtype="bfloat16"), CPU)
    assert {p.dtype for p in bb.model.parameters()} == {torch.bfloat16}
    batch = bb.collate([torch.rand(20, 20, 3).numpy()], CPU)
    assert batch["pixel_values"].dtype == torch.float32  # cast to the weights' dtype inside features()
    head = make_head(bb.feature_dim, 3, 0)
    logits = TaskModel(bb, bb.model, head)(batch)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
