"""MkDocs hook: pages made from the code at build time, so they cannot go stale.

* ``index.md`` (Getting started) from the repository's ``README.md``, its links rewritten
  for the site (``docs/X.md`` -> ``X.md``; other repository files become plain text).
* ``commands/<group>.md``: one page per CLI module of :mod:`organet.cli` (the command
  groups), with each command's ``--help`` text in plain form.
* ``api/<package>.md``: one page per subpackage of :mod:`organet` (not ``cli``), rendered by
  mkdocstrings from the numpy docstrings of its public modules.

The "Commands" and "API reference" entries of ``nav`` in ``mkdocs.yml`` are filled in here.
The page functions need only typer and the package; ``tests/test_docs.py`` checks them
without mkdocs.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "organet"
COMMANDS_TITLE = "Commands"
API_TITLE = "API reference"
# left out of the API reference: cli (documented as commands) and the napari plugin's Qt widgets (``napari*``)
API_SKIP_PACKAGES = {"cli"}
_LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]+)\)")


def readme_page(text: str) -> str:
    """The README as the site's front page: ``docs/`` links made site-relative, links to
    other repository files (configs, benchmarks) turned into their link text."""

    def fix(m: re.Match[str]) -> str:
        label, target = m.group(1), m.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*://", target) or target.startswith("#"):
            return m.group(0)
        if target.startswith("docs/"):
            return f"[{label}]({target[len('docs/') :]})"
        return label

    return _LINK.sub(fix, text)


def _rst_to_md(text: str) -> str:
    """``code`` and :role:`x` of the package's reST-flavoured docstrings as Markdown code."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def _module_summary(module: str) -> str:
    """First line of a module's docstring (read statically; the module is not imported)."""
    path = SRC.joinpath(*module.split(".")[1:]).with_suffix(".py")
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return _rst_to_md(doc.strip().splitlines()[0]) if doc.strip() else ""


def _plain_help(command: Any, parent: Any, name: str) -> str:
    """``organet ... NAME --help`` as plain text (no rich boxes), 100 columns wide."""
    ctx = _context(command, name, parent)
    if hasattr(command, "rich_markup_mode"):
        command.rich_markup_mode = None
    return str(command.get_help(ctx)).rstrip()


def _context(command: Any, name: str, parent: Any) -> Any:
    """A click context for ``command`` (typer carries its own copy of click: use its class)."""
    return command.context_class(command, info_name=name, parent=parent, max_content_width=100, terminal_width=100)


def _is_group(command: Any) -> bool:
    return hasattr(command, "commands")


def _command_module(command: Any) -> str:
    if _is_group(command):
        return _command_module(next(iter(command.commands.values())))
    return str(command.callback.__module__)


def cli_pages() -> dict[str, tuple[str, str]]:
    """Pages of the command reference: ``{"commands/<group>.md": (nav title, markdown)}``,
    one per CLI module, plus ``commands/index.md`` listing every command.

    Commands are grouped by the :mod:`organet.cli` module that defines them; a subcommand
    group (``organet masks``) goes with the module of its commands.
    """
    import typer.main

    from organet.cli import app

    root = typer.main.get_command(app)
    top = _context(root, "organet", None)
    groups: dict[str, list[tuple[str, Any, Any]]] = {}
    for name, cmd in root.commands.items():
        if cmd.hidden:
            continue
        module = _command_module(cmd)
        if _is_group(cmd):
            gctx = _context(cmd, name, top)
            groups.setdefault(module, []).append((f"organet {name}", cmd, top))
            for sub_name, sub in cmd.commands.items():
                if not sub.hidden:
                    groups[module].append((f"organet {name} {sub_name}", sub, gctx))
        else:
            groups.setdefault(module, []).append((f"organet {name}", cmd, top))

    pages: dict[str, tuple[str, str]] = {}
    overview = [
        "# Commands",
        "",
        "Generated from `organet --help` when the site is built. Every command prints the same text with `--help`.",
        "",
        "```text",
        _plain_help(root, None, "organet"),
        "```",
        "",
        "| command | page |",
        "|---|---|",
    ]
    for module in sorted(groups, key=lambda m: m.rsplit(".", 1)[-1]):
        short = module.rsplit(".", 1)[-1]
        page = f"commands/{short}.md"
        entries = groups[module]
        title = ", ".join(full.removeprefix("organet ") for full, cmd, _ in entries if not _is_group(cmd))
        lines = [f"# {title}", "", _module_summary(module), ""]
        for full, cmd, parent in entries:
            lines += [f"## `{full}`", ""]
            if _is_group(cmd):
                lines += [_rst_to_md(cmd.help or ""), ""]
                continue
            lines += ["```text", _plain_help(cmd, parent, full.rsplit(" ", 1)[-1]), "```", ""]
            overview.append(f"| `{full}` | [{title}]({short}.md) |")
        pages[page] = (title, "\n".join(lines))
    pages = {"commands/index.md": ("Overview", "\n".join(overview) + "\n"), **pages}
    return pages


def api_modules(package: str) -> list[str]:
    """The package and its public modules (no leading underscore, not ``napari*``), in file order."""
    out = [f"organet.{package}"]
    for path in sorted((SRC / package).glob("*.py")):
        if path.stem.startswith(("_", "napari")):
            continue
        out.append(f"organet.{package}.{path.stem}")
    return out


def api_pages() -> dict[str, tuple[str, str]]:
    """Pages of the API reference: ``{"api/<package>.md": (nav title, markdown)}``, one per
    subpackage of :mod:`organet` (and one for its top-level modules)."""
    pages: dict[str, tuple[str, str]] = {}
    top = [p.stem for p in sorted(SRC.glob("*.py")) if not p.stem.startswith("_")]
    lines = ["# organet", "", "::: organet", "    options:", "      show_submodules: false", ""]
    lines += [f"::: organet.{m}\n" for m in top]
    pages["api/index.md"] = ("organet", "\n".join(lines))
    for pkg in sorted(p.name for p in SRC.iterdir() if (p / "__init__.py").is_file()):
        if pkg in API_SKIP_PACKAGES:
            continue
        mods = api_modules(pkg)
        body = [f"# organet.{pkg}", ""]
        for mod in mods:
            body += [f"::: {mod}", "    options:", "      show_submodules: false", ""]
        pages[f"api/{pkg}.md"] = (pkg, "\n".join(body))
    return pages


# ---------------------------------------------------------------------------------------------
# the MkDocs hook events

_PAGES: dict[str, tuple[str, str]] = {}


def on_config(config: Any) -> Any:
    """Make the pages and put the generated sections into ``nav``."""
    _PAGES.clear()
    _PAGES["index.md"] = ("Getting started", readme_page((ROOT / "README.md").read_text(encoding="utf-8")))
    cli = cli_pages()
    api = api_pages()
    _PAGES.update(cli)
    _PAGES.update(api)
    for i, item in enumerate(config.nav or []):
        if isinstance(item, dict) and COMMANDS_TITLE in item:
            config.nav[i] = {COMMANDS_TITLE: [{title: path} for path, (title, _) in cli.items()]}
        elif isinstance(item, dict) and API_TITLE in item:
            config.nav[i] = {API_TITLE: [{title: path} for path, (title, _) in api.items()]}
    return config


def on_files(files: Any, config: Any) -> Any:
    """Add the generated pages to the site's files."""
    from mkdocs.structure.files import File

    for path, (_, content) in _PAGES.items():
        old = files.get_file_from_path(path)
        if old is not None:
            files.remove(old)
        files.append(File.generated(config, path, content=content))
    return files
