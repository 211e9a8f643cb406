"""The verdict lives once, in benchmarks/RESULTS.md; the README quotes its one-line summary word for word and
METHOD.md links to it. These fail when the summary is edited in one place only, or a copy of the table comes back."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TABLE = "| backbone and scenario |"


def one_line(text: str) -> str:
    """The paragraph that starts with **In one line:** (joined into one line)."""
    match = re.search(r"\*\*In one line:\*\*(.*?)(?:\n\n|$)", text, re.S)
    assert match, "no **In one line:** paragraph"
    return " ".join(match.group(1).split())


def test_the_readme_quotes_the_results_one_line_summary():
    results = one_line((ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8"))
    readme = one_line((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(results) > 80, "the summary lost its words"
    assert readme == results, "copy the one-line summary of benchmarks/RESULTS.md (Verdict) into README.md"


def test_the_verdict_table_lives_only_in_results():
    assert TABLE in (ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")
    for name in ("README.md", "METHOD.md"):
        assert TABLE not in (ROOT / name).read_text(encoding="utf-8"), f"{name} carries a copy of the verdict table"


def test_one_line_reads_a_wrapped_paragraph():
    assert one_line("x\n\n**In one line:** a b\nc d.\n\nnext") == "a b c d."
