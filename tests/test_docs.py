"""The documentation site's generated pages (docs/gen_pages.py, run by mkdocs as a hook) and the
tutorial notebooks, checked without mkdocs: every command has its page with its options, the
README's links resolve inside the site, every page is in the nav, notebooks carry no outputs."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import typer.main
import yaml

from organet.cli import app

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("gen_pages", DOCS / "gen_pages.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _commands(command, prefix="organet"):
    """(full name, command) of every leaf command of the CLI."""
    for name, sub in command.commands.items():
        if hasattr(sub, "commands"):
            yield from _commands(sub, f"{prefix} {name}")
        else:
            yield f"{prefix} {name}", sub


def test_every_command_has_a_section_with_its_options(gen):
    pages = gen.cli_pages()
    assert "commands/index.md" in pages
    text = {path: md for path, (_, md) in pages.items()}
    commands = list(_commands(typer.main.get_command(app)))
    assert len(commands) > 20
    for full, command in commands:
        holders = [p for p, md in text.items() if f"## `{full}`" in md]
        assert len(holders) == 1, f"{full}: sections in {holders}"
        section = text[holders[0]].split(f"## `{full}`", 1)[1].split("\n## ", 1)[0]
        assert f"Usage: {full} " in section, full
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("--") and not getattr(param, "hidden", False):
                    assert opt in section, f"{full}: option {opt} missing from its page"
        assert f"`{full}`" in text["commands/index.md"], f"{full} missing from the overview"
    # help text is plain (no rich box drawing) and each page is titled with its commands
    for md in text.values():
        assert "╭" not in md and "─" not in md
        assert md.startswith("# ")


def test_readme_links_resolve_inside_the_site(gen):
    page = gen.readme_page((ROOT / "README.md").read_text(encoding="utf-8"))
    targets = re.findall(r"\]\(([^)\s]+)\)", page)
    assert targets, "the README has links"
    for target in targets:
        if re.match(r"^[a-z]+://", target) or target.startswith("#"):
            continue
        assert not target.startswith("docs/"), target
        path = target.split("#", 1)[0]
        assert (DOCS / path).is_file(), f"README link {target} points to no file under docs/"
    # a link to a repository file outside docs/ keeps its text, not a dead link
    assert gen.readme_page("see [the config](configs/x.yaml).") == "see the config."
    assert gen.readme_page("[a](docs/cluster.md#blocks)") == "[a](cluster.md#blocks)"
    assert gen.readme_page("[b](https://example.org/docs/x.md)") == "[b](https://example.org/docs/x.md)"


def test_api_pages_name_existing_modules(gen):
    pages = gen.api_pages()
    packages = {p.name for p in (ROOT / "src" / "organet").iterdir() if (p / "__init__.py").is_file()} - {"cli"}
    assert {f"api/{p}.md" for p in packages} | {"api/index.md"} == set(pages)
    for _, md in pages.values():
        for module in re.findall(r"^::: (\S+)$", md, flags=re.M):
            rel = Path("src", *module.split("."))
            assert (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file(), module


def test_every_page_is_in_the_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))

    def files(nav):
        for item in nav:
            if isinstance(item, str):
                yield item
            else:
                for value in item.values():
                    yield from files(value) if isinstance(value, list) else [value]

    in_nav = set(files(config["nav"]))
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert pages - in_nav == set(), "pages missing from mkdocs.yml nav"
    assert {t for t in in_nav if not (DOCS / t).is_file()} == {"index.md"}  # made from README.md at build time


def test_notebooks_are_committed_without_outputs():
    notebooks = sorted((DOCS / "tutorials").glob("*.ipynb"))
    assert len(notebooks) >= 2
    index = (DOCS / "tutorials" / "index.md").read_text(encoding="utf-8")
    for path in notebooks:
        nb = json.loads(path.read_text(encoding="utf-8"))
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert code, path.name
        for cell in code:
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path.name}: clear the outputs"
        source = "".join("".join(c["source"]) for c in code)
        assert "subprocess" not in source and "urlopen" not in source and "../shared" not in source, path.name
        assert f"({path.name})" in index, f"{path.name} is not linked from tutorials/index.md"
