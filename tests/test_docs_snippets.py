"""Every ```python block on the Home, Getting started and user-guide pages and in the README runs, and learns.

The blocks of one page run in order in one namespace, as a reader pasting them into one session would.
Blocks that need MuJoCo or long runs are shown as ```bash on those pages, so they are not collected here.
"""

import re
from collections.abc import Callable
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


def run_page(
    path: Path, budgets: dict[str, str] | None = None, checks: dict[int, Callable] | None = None
) -> dict:
    """Execute a page's python blocks in order in one fresh namespace; return the namespace.

    ``budgets`` maps text that must occur in the page's code to a smaller stand-in (fewer generations), for
    pages whose snippets are meant to run for a minute; each must match, so the page cannot drift silently.
    ``checks`` maps a block's index to a function called with the namespace right after that block ran.
    """
    blocks = python_blocks(path)
    assert blocks, f"{path.name} has no python blocks"
    for text, smaller in (budgets or {}).items():
        assert any(text in block for block in blocks), f"{path.name}: expected {text!r} in its python blocks"
        blocks = [block.replace(text, smaller) for block in blocks]
    namespace = {"__name__": f"docs_snippet_{path.stem}"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the snippets are tiny; one thread is fastest and insensitive to machine load
    try:
        for index, block in enumerate(blocks):
            exec(compile(block, str(path), "exec"), namespace)
            if checks and index in checks:
                checks[index](namespace)
    finally:
        torch.set_num_threads(threads)
    return namespace


def mse(ns: dict) -> float:
    """Mean squared error of the page's current ``model`` on its ``x``, ``y``."""
    with torch.no_grad():
        return ((ns["model"](ns["x"]) - ns["y"]) ** 2).mean().item()


def test_python_blocks_are_found(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "text\n```python\na = 1\n```\n```bash\nexit 1\n```\n!!! note\n    ```python\n    b = a + 1\n    ```\n"
    )
    assert python_blocks(page) == ["a = 1\n", "b = a + 1\n"]
    seen = []
    assert run_page(page, checks={0: lambda ns: seen.append(ns["a"])})["b"] == 2
    assert seen == [1]


def test_readme_snippets_learn_at_their_documented_length():
    # As written: the quickstart's 200 batched generations (1.751 -> 0.0015) and the drop-in loop's 100
    # closure steps with torch.optim.Adam (1.751 -> 0.0063), a few seconds together on one thread.
    ns = run_page(
        ROOT / "README.md",
        checks={0: lambda ns: ns.update(quickstart=(ns["before"], ns["after"], ns["trainer"].generation))},
    )
    before, after, generations = ns["quickstart"]
    assert generations == 200 and after < before / 100, (before, after)
    assert ns["opt"].generation == 100
    assert mse(ns) < ns["start"] / 50, (ns["start"], mse(ns))


def test_home_page_quickstart_learns():
    ns = run_page(ROOT / "docs" / "index.md")  # 50 generations: 0.969 -> 0.011
    assert ns["trainer"].generation == 50 and ns["after"] < ns["before"] / 20, (ns["before"], ns["after"])


def test_getting_started_learns():
    def closure_loop(ns):  # 5 epochs of 4 minibatches: 9.26 -> 0.88 sequential, 9.39 -> 0.62 batched
        assert ns["opt"].generation == 20 and mse(ns) < ns["start"] / 4, (ns["start"], mse(ns))

    ns = run_page(ROOT / "docs" / "getting-started.md", checks={0: closure_loop, 1: closure_loop})
    assert ns["result"]["generation"] == 30
    assert ns["sign_accuracy"](ns["model"]) > 0.9  # 0.457 -> 0.977
    assert ns["trainer"].best_fitness == pytest.approx(ns["sign_accuracy"](ns["best"]))


def test_schedulers_page_learns():
    def after_cosine(ns):  # 30 generations: 0.624 -> 0.306
        ns["cosine_end"] = mse(ns)
        assert ns["cosine_end"] < 0.7 * ns["start"], (ns["start"], ns["cosine_end"])

    def after_sigma_decay(ns):  # 10 more: 0.258
        assert mse(ns) < ns["cosine_end"] and ns["trainer"].sigma < 0.02

    run_page(ROOT / "docs" / "guide" / "schedulers.md", checks={0: after_cosine, 1: after_sigma_decay})


def test_checkpointing_page_learns_and_resumes_exactly():
    ns = run_page(ROOT / "docs" / "guide" / "checkpointing.md")  # the page asserts the exact resume
    assert ns["trainer"].generation == 20
    assert -ns["fitness"](ns["model"]) < 0.8 * ns["start"]  # 0.426 -> 0.299


def test_hyperparameters_page_runs():
    # The page asserts that SGD at lr = 0.3·σ²·√N learns at two (σ, N) and 10× that lr does not.
    ns = run_page(ROOT / "docs" / "guide" / "hyperparameters.md")
    assert ns["trainer"].param_groups[0]["momentum"] == 0.9


@pytest.mark.parametrize("page", ["population.md", "custom.md"])
def test_guide_runs(page):
    """The other user-guide pages whose examples run on one process in seconds (they assert what they claim)."""
    run_page(ROOT / "docs" / "guide" / page)
