"""The documentation holds together: the README stays short and opens with the two commands,
every relative link of the README, CONTRIBUTING.md and docs/ reaches a file and a heading that
exist, and the README's producer example passes the payload models in an order a fresh database
accepts (each write's references written before it)."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path
from typing import Any

import pytest

import pipeline
from pipeline.kinds import BY_NAME

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = [README, ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCED = re.compile(r"^(```|~~~)[^\n]*\n.*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} +(.+?) *#*$", re.MULTILINE)


def prose(text: str) -> str:
    """The text without its code blocks and code spans, where brackets and hashes are code."""
    return CODE_SPAN.sub("", FENCED.sub("", text))


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor on a page, a repeated one with GitHub's ``-1``, ``-2``… suffix."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCED.sub("", page.read_text())):
        anchor = github_anchor(heading)
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        found.add(anchor if count == 0 else f"{anchor}-{count}")
    return found


def test_the_readme_is_at_most_10000_bytes() -> None:
    assert len(README.read_bytes()) <= 10_000


def test_the_readme_opens_with_the_two_commands() -> None:
    lines = README.read_text().splitlines()
    assert lines[0] == "# pipeline"
    assert lines[3].startswith("./run demo ") and lines[4].startswith("./run test ")


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_reaches_a_file_and_a_heading(page: Path) -> None:
    links = LINK.findall(prose(page.read_text()))
    assert links, "a page that links nowhere: the link pattern may have gone stale"
    broken = []
    for link in links:
        if re.match(r"^[a-z][a-z0-9+.-]*:", link):  # https:, mailto:: not a file of the repository
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link}: no file {target.relative_to(ROOT)}")
        elif anchor and anchor not in anchors(target):
            broken.append(f"{link}: no heading #{anchor} in {target.relative_to(ROOT)}")
    assert not broken, broken


def producer_example() -> list[tuple[str, dict[str, Any]]]:
    """The writes of the README's one Python example, in order: (job function, arguments)."""
    (code,) = re.findall(r"^```python\n(.*?)^```$", README.read_text(), re.MULTILINE | re.DOTALL)
    writes: list[tuple[tuple[int, int], str, dict[str, Any]]] = []
    for node in ast.walk(ast.parse(code)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in {"write", "enqueue", "enqueue_job"}
        ):
            (function,) = node.args
            kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}
            writes.append(((node.lineno, node.col_offset), ast.literal_eval(function), kwargs))
    return [(function, kwargs) for _, function, kwargs in sorted(writes)]


def test_the_readme_example_passes_the_payload_models_on_a_fresh_database() -> None:
    writes = producer_example()
    assert writes, "the README's example writes nothing"
    projects: set[str] = set()
    nodes: set[tuple[str, str]] = set()
    for function, kwargs in writes:
        BY_NAME[function].validate(kwargs)
        if function == "upsert_project":
            projects.add(kwargs["project_id"])
        elif function == "insert_nodes":
            project = kwargs["project_id"]
            assert project in projects, f"insert_nodes before its project {project!r}"
            for new in kwargs["nodes"]:
                parent = new.get("parent_id")
                assert parent is None or (project, parent) in nodes, f"{parent!r} not written"
                nodes.add((project, new["node_id"]))
        elif function in {"update_scores", "update_statuses"}:
            for item in kwargs["scores" if function == "update_scores" else "statuses"]:
                node = (kwargs["project_id"], item["node_id"])
                assert node in nodes, f"{function} before its node {node}"
        else:
            pytest.fail(f"this test does not know what {function} refers to: teach it")


#: The package the tests run against: the checkout's, or the installed one (``./run test``).
PACKAGE = Path(pipeline.__file__).resolve().parent
SOURCE_PATH = re.compile(r"(?<![\w/.-])((?:pipeline|tests|deploy)/[\w./-]*\w)")
DOTTED = re.compile(r"(?<![\w./])(pipeline(?:\.\w+)+)")
#: Logger names of the pipeline's own lines (stable for whoever filters logs by them).
LOGGERS = {
    name
    for source in PACKAGE.rglob("*.py")
    for name in re.findall(r"get_?[lL]ogger\(\"(pipeline[\w.]*)\"\)", source.read_text())
}


def named_in_docs(pattern: re.Pattern[str]) -> set[tuple[str, str]]:
    return {(page.name, name) for page in PAGES for name in pattern.findall(page.read_text())}


@pytest.mark.parametrize(
    ("page", "path"), sorted(named_in_docs(SOURCE_PATH)), ids="{0[0]}:{0[1]}".format
)
def test_every_source_path_the_docs_name_exists(page: str, path: str) -> None:
    base = PACKAGE.parent if path.startswith("pipeline/") else ROOT
    assert (base / path).exists() or list(base.glob(path)), f"{page} names {path}, not there"


@pytest.mark.parametrize(
    ("page", "name"), sorted(named_in_docs(DOTTED)), ids="{0[0]}:{0[1]}".format
)
def test_every_dotted_name_the_docs_give_imports(page: str, name: str) -> None:
    """A module, a module's attribute (``pipeline.logs.ARQ_LOGGING``) or a logger's name."""
    if name in LOGGERS:
        return
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            assert hasattr(found, attribute), f"{page} names {name}: no {attribute}"
            found = getattr(found, attribute)
        return
    raise AssertionError(f"{page} names {name}, which does not import")
