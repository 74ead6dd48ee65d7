"""The one Jinja environment: every generated file comes from a template in templates/.

StrictUndefined turns a misspelt variable into an error instead of an empty string in the
XML; autoescape (for .xml and .html templates) keeps a path with '&' or '<' from breaking the
document, and a node's output from becoming markup in a torture run's report.html.
Compiled templates are cached in state/cache/templates/ (jinja2 checks each against its
template's source): even a doit that changes nothing renders a few files to compare, and
compiling them each time was a tenth of a no-op doit.
"""

from __future__ import annotations

from pathlib import Path

import jinja2

from dali.cluster import REPO

TEMPLATES = REPO / "templates"


def _compiled_templates() -> jinja2.BytecodeCache | None:
    where = REPO / "state" / "cache" / "templates"
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a checkout dali may not write to: compile every time
    return jinja2.FileSystemBytecodeCache(str(where))


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TEMPLATES)),
    undefined=jinja2.StrictUndefined,
    autoescape=jinja2.select_autoescape(enabled_extensions=("xml", "xml.j2", "html", "html.j2"), default=False),
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    bytecode_cache=_compiled_templates(),
)


def render(template: str, **values) -> str:
    return _env.get_template(template).render(**values)


def template_path(template: str) -> Path:
    """For doit's file_dep: a template edit makes what it renders stale."""
    return TEMPLATES / template


def write_if_changed(path: Path, text: str) -> bool:
    """Write atomically; leave the file (and its mtime) alone when the text is the same."""
    if path.exists() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return True
