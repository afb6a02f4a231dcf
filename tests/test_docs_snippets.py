"""Every ```python block on the Home, Getting started and user-guide pages, and the README's quickstart, runs.

The blocks of one page run in order in one namespace, as a reader pasting them into one session would.
Blocks that need MuJoCo or long runs are shown as ```bash on those pages, so they are not collected here.
"""

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^\n`]*)$")


def python_blocks(path: Path) -> list[str]:
    """The bodies of the ```python fences of a Markdown file, dedented (fences may sit in admonitions)."""
    blocks, body, opening = [], None, None
    for line in path.read_text(encoding="utf-8").splitlines():
        match = FENCE.match(line)
        if body is None:
            if match and match["info"].split()[:1] == ["python"]:
                body, opening = [], match
        elif match and match["fence"].startswith(opening["fence"]) and not match["info"].strip():
            indent = len(opening["indent"])
            blocks.append("\n".join(text[indent:] for text in body) + "\n")
            body = None
        else:
            body.append(line)
    if body is not None:
        raise ValueError(f"{path}: unclosed ```python fence")
    return blocks


def run_page(path: Path, budgets: dict[str, str] | None = None) -> dict:
    """Execute a page's python blocks in order in one fresh namespace; return the namespace.

    ``budgets`` maps text that must occur in the page's code to a smaller stand-in (fewer generations), for
    pages whose snippets are meant to run for a minute; each must match, so the page cannot drift silently.
    """
    source = "\n".join(python_blocks(path))
    assert source, f"{path.name} has no python blocks"
    for text, smaller in (budgets or {}).items():
        assert text in source, f"{path.name}: expected {text!r} in its python blocks"
        source = source.replace(text, smaller)
    namespace = {"__name__": f"docs_snippet_{path.stem}"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the snippets are tiny; one thread is fastest and insensitive to machine load
    try:
        exec(compile(source, str(path), "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    return namespace


def test_python_blocks_are_found(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "text\n```python\na = 1\n```\n```bash\nexit 1\n```\n!!! note\n    ```python\n    b = a + 1\n    ```\n"
    )
    assert python_blocks(page) == ["a = 1\n", "b = a + 1\n"]
    assert run_page(page)["b"] == 2


def test_home_page_quickstart_learns():
    ns = run_page(ROOT / "docs" / "index.md")
    assert ns["after"] < ns["before"]


def test_getting_started_runs():
    ns = run_page(ROOT / "docs" / "getting-started.md")
    assert ns["result"]["generation"] == 30
    assert ns["trainer"].best_fitness == pytest.approx(ns["sign_accuracy"](ns["best"]))


def test_readme_quickstart_runs():
    # The README's quickstart trains for 200 generations; 2 prove that it runs as written.
    ns = run_page(
        ROOT / "README.md", budgets={"trainer.train(200)": "trainer.train(2)", "range(100)": "range(2)"}
    )
    assert ns["trainer"].generation == 2
    assert ns["opt"].generation == 2


@pytest.mark.parametrize(
    "page", ["population.md", "schedulers.md", "checkpointing.md", "custom.md", "hyperparameters.md"]
)
def test_guide_runs(page):
    """The user-guide pages whose examples run on one process in seconds (they assert what they claim)."""
    run_page(ROOT / "docs" / "guide" / page)
