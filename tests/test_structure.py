"""The tree's structure: no import circles, nothing imported from a layer above, the drawing in
docs/design.md is the tree's own (tests/structure.py draws it), and the environment is read
where the settings are, not by hooks for tests."""

from __future__ import annotations

import re

import structure

DESIGN = structure.REPO / "docs" / "design.md"


def test_no_module_imports_in_a_circle():
    assert structure.circles(structure.imports()) == []


def test_a_circle_is_found():
    graph = {"dali.a": {"dali.b"}, "dali.b": {"dali.c"}, "dali.c": {"dali.a"}, "dali.d": {"dali.a"}}
    assert structure.circles(graph) == [["dali.a", "dali.b", "dali.c"]]


def test_the_library_never_imports_a_stage_and_stages_never_import_each_other():
    graph = structure.imports()
    assert not [(m, w) for m, ws in graph.items() if m.startswith("dali") for w in ws if w.startswith("tasks")]
    assert not [(m, w) for m, ws in graph.items() if m.startswith("tasks.") for w in ws if w.startswith("tasks.")]


def test_every_import_goes_down_the_layers():
    graph = structure.imports()
    layer = structure.layers(graph)
    assert all(layer[w] < layer[m] for m, ws in graph.items() for w in ws)


def test_the_design_doc_shows_the_tree_as_it_is():
    text = DESIGN.read_text()
    assert "```\n" + structure.drawing() + "```" in text, (
        "docs/design.md's structure drawing is out of date: paste the output of "
        ".venv/bin/python tests/structure.py there")


def test_the_environment_is_read_where_the_settings_are_and_nowhere_for_tests():
    """dodo.py hands the environment to the settings (every DALI_* variable is a setting); beside
    them only DALI_TRACEBACK (errors.unforeseen) and the environment a debootstrap inherits. A
    hook for tests (DALI_HOLD_AT_TASK was one, in the reporter) lives in tests/support/."""
    readers = {name for name, path in structure.modules().items()
               if re.search(r"\bos\.environ\b|\bgetenv\b|from os import .*environ", path.read_text())}
    assert readers == {"dali.errors", "dali.image_builder"}
