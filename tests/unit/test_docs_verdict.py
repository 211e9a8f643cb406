"""README and benchmarks/RESULTS.md state the verdict in the same words: the recommended-settings table and the
sentences under it are one block, copied; METHOD.md carries the same table. These fail when one is edited without
the others."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def verdict_block(text: str) -> str:
    """From the table's header line to the end of the bullet list that follows it."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| backbone and scenario |"))
    end = start
    while end < len(lines) and (lines[end].startswith(("|", "- ", "  ")) or lines[end] == ""):
        if lines[end] == "" and end + 1 < len(lines) and not lines[end + 1].startswith("- "):
            break
        end += 1
    return "\n".join(lines[start:end]).strip()


def test_readme_and_results_state_the_same_verdict():
    readme = verdict_block((ROOT / "README.md").read_text(encoding="utf-8"))
    results = verdict_block((ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8"))
    assert "Where PS-LoRA helps" in results, "the verdict block lost its sentences"
    assert readme == results, "copy the verdict table and bullets from benchmarks/RESULTS.md into README.md"


def verdict_table(text: str) -> str:
    return "\n".join(line for line in verdict_block(text).splitlines() if line.startswith("|"))


def test_method_md_carries_the_same_verdict_table():
    method = verdict_table((ROOT / "METHOD.md").read_text(encoding="utf-8"))
    results = verdict_table((ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8"))
    assert method.count("\n") >= 3, "the verdict table lost its rows"
    assert method == results, "copy the verdict table from benchmarks/RESULTS.md into METHOD.md"


def test_the_block_ends_where_the_bullets_end():
    text = "intro\n\n| backbone and scenario | use |\n| --- | --- |\n| a | b |\n\n- one\n  more\n- two\n\n## Next\n"
    assert verdict_block(text) == "| backbone and scenario | use |\n| --- | --- |\n| a | b |\n\n- one\n  more\n- two"
