"""The generative track end to end: the built-in SmolLM2 (converted from its GGUF once), and every command on a
generative store (a tiny random LLaMA with SmolLM2's real tokenizer, on real WordNet and Rotten Tomatoes data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import check_validation_eval, run_cli


@pytest.fixture(scope="session")
def smollm2_folder() -> Path:
    from pslora_cli.config import Backbone
    from pslora_cli.models import resolve_model_path

    return Path(resolve_model_path(Backbone(source="builtin", name="smollm2-135m-instruct")))


@pytest.fixture(scope="session")
def tiny_llama(smollm2_folder, tmp_path_factory) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(smollm2_folder)
    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_builtin_smollm2_answers_prompts_offline(smollm2_folder):
    """The converted folder is an ordinary transformers model; zero-shot it answers easy sentiment prompts."""
    from pslora_cli.config import Backbone
    from pslora_cli.data.prompts import Prompted
    from pslora_cli.models import load_backbone
    from pslora_cli.models.lm import exact_match_hits

    assert (smollm2_folder / "config.json").is_file() and (smollm2_folder / "model.safetensors").is_file()
    lm = load_backbone(Backbone(source="builtin", name="smollm2-135m-instruct", kind="causal-lm", max_length=64),
                       torch.device("cpu"))
    assert lm.kind == "causal-lm" and lm.generative
    prefix = "What is the sentiment of the following movie review? Choose one from the option.\nOption: positive, negative\n"
    reviews = ["A wonderful, moving film.", "Boring and far too long, a waste of time.", "I loved it.", "Terrible."]
    hits = exact_match_hits(lm, [Prompted(prefix, r, "\nAnswer:") for r in reviews], [0, 1, 0, 1],
                            ["positive", "negative"], torch.device("cpu"), batch_size=4)
    assert hits.sum().item() >= 3


def sequence(tiny_llama: Path, **changes) -> dict:
    seq = {
        "name": "tiny-generative",
        "scenario": "task-incremental",
        "backbone": {"source": "huggingface", "name": str(tiny_llama), "max_length": 64},
        "lora": {"rank": 4, "alpha": 8},
        "training": {"steps": 4, "batch_size": 4, "learning_rate": 5e-3, "eval_batch_size": 16},
        "tasks": [
            {"id": "t1", "data": {"type": "wordnet", "classes": ["animal", "plant"], "train_per_class": 8,
                                  "test_per_class": 4},
             "prompt": {"instruction": "Is this an animal? Choose one from the option.",
                        "answers": {"animal": "yes", "plant": "no"}}},
            {"id": "t2", "data": {"type": "rotten_tomatoes", "classes": ["fresh", "rotten"], "train_per_class": 8,
                                  "test_per_class": 4},
             "prompt": {"answers": {"fresh": "yes", "rotten": "no"}}},
        ],
    }
    seq.update(changes)
    return seq


def test_every_command_works_on_a_generative_store(tiny_llama, write_sequence, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    store = tmp_path / "store"
    code, doc, err = run_cli(capsys, "run", write_sequence(sequence(tiny_llama)), "--store", store, "--json")
    assert code == 0, err
    matrix = doc["matrix"]
    assert matrix["scorer"] == "exact-match" and matrix["primary"] == "task_aware" and matrix["task_agnostic"] is None
    assert all(v is not None for row in matrix["task_aware"][1:] for v in row[:1])
    for task in ("t1", "t2"):  # stock PEFT adapters, no head
        files = sorted(p.name for p in (store / "tasks" / task).iterdir())
        assert files == ["adapter_config.json", "adapter_model.safetensors", "meta.json"]
        meta = json.loads((store / "tasks" / task / "meta.json").read_text())
        assert meta["generative"] and meta["answers"] == ["yes", "no"]
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), store / "tasks" / task)
    assert doc["merge"]["method"] == "magnitude"
    assert matrix["metrics"]["task_aware"]["fwt"] is not None  # a language model's zero-shot answers: FWT defined
    assert matrix["scorer_detail"].startswith("exact-match: whole answer")
    check_validation_eval(capsys, store, [8, 8])
    code, report, err = run_cli(capsys, "store", "verify", "--store", store, "--json")
    assert code == 0 and report["ok"], report
    code, info, err = run_cli(capsys, "merge", "--store", store, "--method", "sum", "--json")
    assert code == 0 and info["tasks"] == ["t1", "t2"], err
    code, shifts, err = run_cli(capsys, "analyze-shifts", "--store", store, "--intervene", "--no-figures", "--json")
    assert code == 0, err
    assert shifts["intervention"]["kind"] == "task_aware"
    assert shifts["intervention"]["stages"][0]["baseline_matches_matrix"] is True
    code, ranked, err = run_cli(capsys, "eval", "--store", store, "--set", "evaluation.scorer=rank", "--json")
    assert code == 0 and ranked["scorer"] == "rank", err
    # the scorer is part of what every row was scored with, the base model's zero-shot row included
    assert all(a != b for a, b in zip(ranked["row_keys"], matrix["row_keys"]))
    code, trained, err = run_cli(capsys, "train-task", "--task", "t2", "--store", store, "--json",
                                 "--set", "method.name=seq-lora")
    assert code == 0 and trained["task"]["generative"], err


@pytest.mark.parametrize("change, key", [
    ({"evaluation": {"scorer": "heads"}}, "evaluation.scorer"),
    ({"tasks": [{"id": "t1", "data": {"type": "wordnet", "classes": ["animal", "plant"]},
                 "prompt": {"template": "{instruction} {nope} {text}"}}]}, "tasks[0].prompt.template"),
    ({"tasks": [{"id": "t1", "data": {"type": "wordnet", "classes": ["animal", "plant"]},
                 "prompt": {"answers": {"animal": "yes", "plant": "YES"}}}]}, "tasks[0].prompt.answers"),
])
def test_bad_generative_sequences_exit_2_naming_the_key(tiny_llama, write_sequence, tmp_path, capsys, change, key):
    store = tmp_path / "store"
    code, _, err = run_cli(capsys, "run", write_sequence(sequence(tiny_llama, **change)), "--store", store)
    assert code == 2 and key in err and len(err.strip().splitlines()) == 1, err
    assert not store.exists()


def test_answers_that_collide_with_another_class_exit_2_before_anything_is_written(tiny_llama, write_sequence,
                                                                                    tmp_path, capsys):
    bad = sequence(tiny_llama)
    bad["tasks"][0]["prompt"]["answers"] = {"animal": "plant"}  # "plant" is also the other class's own text
    store = tmp_path / "store"
    code, _, err = run_cli(capsys, "run", write_sequence(bad), "--store", store)
    assert code == 2 and "same answer text" in err, err
    assert not store.exists()


def test_prompts_are_refused_on_an_encoder(tiny_bert, write_sequence, tmp_path, capsys):
    from conftest import tiny_sequence

    seq = tiny_sequence(tiny_bert)
    seq["tasks"][0]["prompt"] = {"instruction": "x"}
    code, _, err = run_cli(capsys, "run", write_sequence(seq), "--store", tmp_path / "s")
    assert code == 2 and "tasks[0].prompt" in err, err


def test_export_answers_through_the_transformers_pipeline_as_eval_scores(tiny_llama, write_sequence, tmp_path,
                                                                         capsys, monkeypatch):
    import io

    from transformers import pipeline

    from pslora_cli.models.lm import normalise
    from pslora_cli.data.loader import data_loader
    from pslora_cli.session import Session

    store, out = tmp_path / "store", tmp_path / "model"
    assert run_cli(capsys, "run", write_sequence(sequence(tiny_llama)), "--store", store, "--quiet")[0] == 0
    code, info, err = run_cli(capsys, "export", "--store", store, "--out", out, "--json")
    assert code == 0 and info["kind"] == "causal-lm", err
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "prompts.json",
            "README.md"} <= set(info["files"])
    prompts = json.loads((out / "prompts.json").read_text())["tasks"]
    assert prompts["t1"]["answers"] == {"animal": "yes", "plant": "no"}
    pipe = pipeline("text-generation", model=str(out), device="cpu")
    matrix = json.loads((store / "eval" / "matrix.json").read_text())
    seq, _, _ = Session(store_path=store, device_name="cpu", quiet=True).open()
    load = data_loader(seq)
    for i, task in enumerate(("t1", "t2")):
        data = load(i)
        answers = [pipe(prompts[task]["prefix"] + x.text + prompts[task]["suffix"], return_full_text=False,
                        add_special_tokens=False, max_new_tokens=prompts[task]["max_new_tokens"])[0]["generated_text"]
                   for x in data.test_x]
        hits = [normalise(a) == normalise(data.answers[y]) for a, y in zip(answers, data.test_y)]
        assert sum(hits) / len(hits) == pytest.approx(matrix["task_aware"][2][i], abs=1e-9)
        # predict --task gives the same answers, from stdin
        monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(x.text for x in data.test_x)))
        code, doc, err = run_cli(capsys, "predict", "--store", store, "--input", "-", "--task", task, "--json")
        assert code == 0, err
        assert [p["label"] for p in doc["predictions"]] == [a.strip() for a in answers]
        assert all(0 < p["score"] <= 1 for p in doc["predictions"])


def test_n_lora_s_official_form_on_a_grouped_query_model_is_refused_before_the_store_exists(tiny_llama, write_sequence,
                                                                                          tmp_path, capsys):
    """The tiny LLaMA's v_proj maps 16 to 8 (one key-value head): N-LoRA's A B product is undefined there."""
    seq = write_sequence(sequence(tiny_llama, method={"name": "n-lora"}))
    store = tmp_path / "store"
    code, _, err = run_cli(capsys, "run", seq, "--store", store, "--device", "cpu")
    assert code == 2 and "v_proj.weight maps 16 to 8" in err and "sparsity_form: update" in err, err
    assert not store.exists()
    code, doc, err = run_cli(capsys, "run", seq, "--store", store, "--device", "cpu", "--json", "--quiet",
                             "--set", "method.sparsity_form=update")
    assert code == 0, err
    meta = json.loads((store / "tasks" / "t1" / "meta.json").read_text())
    assert meta["train"]["final"]["sparsity_loss"] > 0


def test_inflora_on_a_language_model_designs_a_from_the_prompt_and_answer_tokens(tiny_llama, write_sequence,
                                                                                  tmp_path, capsys):
    """Through the causal LM's training batches (right-padded: the padding is left out of the input matrix):
    task 2's A is orthogonal to the subspace task 1 left in the store, on q_proj and on the narrower v_proj."""
    from safetensors.torch import load_file

    seq = write_sequence(sequence(tiny_llama, method={"name": "inflora"}))
    store = tmp_path / "store"
    code, doc, err = run_cli(capsys, "run", seq, "--store", store, "--device", "cpu", "--json", "--quiet")
    assert code == 0, err
    bases = load_file(str(store / "tasks" / "t1" / "input_bases.safetensors"))
    w = load_file(str(store / "tasks" / "t2" / "adapter_model.safetensors"))
    for name, basis in bases.items():
        a = w["base_model.model." + name.removesuffix(".weight") + ".lora_A.weight"]
        assert 1 <= basis.shape[1] <= basis.shape[0] == a.shape[1]
        assert (a.double() @ basis.double()).abs().max() < 1e-5, name


def test_a_grid_scores_a_cell_once_for_every_store_that_shares_it(tiny_llama, write_sequence, tmp_path, capsys,
                                                                  monkeypatch):
    """ps-merge-only's first task is ps-lora's training (task cache), merged by the same rule: its base-model row
    and its first stage are ps-lora's cells, taken from the grid's scored cells; only its second stage is scored."""
    from pslora_cli.evaluation.scoring import Evaluator

    monkeypatch.setenv("PSLORA_TASK_CACHE", str(tmp_path / "cache"))
    seq = write_sequence(sequence(tiny_llama))
    code, first, err = run_cli(capsys, "run", seq, "--store", tmp_path / "a", "--json")
    assert code == 0, err
    scored = []
    stage = Evaluator.stage
    monkeypatch.setattr(Evaluator, "stage", lambda self, t, cells, **kw: scored.append(t) or stage(self, t, cells,
                                                                                                   **kw))
    code, second, err = run_cli(capsys, "run", seq, "--store", tmp_path / "b", "--set", "method.name=ps-merge-only",
                                "--json")
    assert code == 0, err
    assert scored == [2], scored
    a, b = first["matrix"], second["matrix"]
    assert b["task_aware"][:2] == a["task_aware"][:2] and b["hits"]["task_aware"][:2] == a["hits"]["task_aware"][:2]
    assert b["row_keys"][:2] == a["row_keys"][:2] and b["row_keys"][2] != a["row_keys"][2]
    # a damaged entry is scored again, never used
    for entry in (tmp_path / "cache" / "cells").iterdir():
        entry.write_text('{"value": 1.0, "hits": "0000"}')
    scored.clear()
    (tmp_path / "b" / "eval" / "matrix.json").unlink()
    code, _, err = run_cli(capsys, "eval", "--store", tmp_path / "b", "--json")
    assert code == 0 and scored == [0, 1, 2], (err, scored)
