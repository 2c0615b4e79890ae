"""``minbert.bert`` is self-contained and its modules import one another one way.

Read from the source with ``ast`` (every import statement, module level or inside a function or an
``if TYPE_CHECKING:`` block), not by importing, because importing any submodule runs
``minbert/__init__.py``, which imports all of them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import minbert.bert

BERT_DIR = Path(minbert.bert.__file__).parent
MODULES = sorted(p.stem for p in BERT_DIR.glob("*.py"))


def imported_modules(name: str) -> set[str]:
    """Absolute names of the ``minbert`` modules that ``minbert/bert/<name>.py`` imports."""
    tree = ast.parse((BERT_DIR / f"{name}.py").read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative to minbert/bert/: ``.`` is minbert.bert, ``..`` minbert, more is above it
                package = {1: "minbert.bert", 2: "minbert"}.get(node.level, "<above minbert>")
                mod = f"{package}.{node.module}" if node.module else package
            else:
                mod = node.module or ""
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}  # ``from minbert.bert import checkpoint``
    return {m for m in out if m.split(".")[0] in ("minbert", "<above minbert>")}


def bert_deps(name: str) -> set[str]:
    """The sibling modules ``name`` imports (``minbert.bert.x`` -> ``x``)."""
    return {m.removeprefix("minbert.bert.") for m in imported_modules(name)} & set(MODULES)


def test_the_expected_modules_are_there():
    assert {"model", "checkpoint", "hub", "pretrained", "tokenizer", "heads", "mlm"} <= set(MODULES)


def test_nothing_is_imported_from_minbert_outside_minbert_bert():
    outside = {
        name: sorted(m for m in imported_modules(name) if m != "minbert.bert" and not m.startswith("minbert.bert."))
        for name in MODULES
    }
    assert {k: v for k, v in outside.items() if v} == {}


def test_model_depends_on_no_file_format_and_checkpoint_on_no_model():
    assert bert_deps("model") == set()  # torch only: no checkpoint, hub or pretrained
    assert bert_deps("checkpoint") == set()  # dicts and files only, never BertModel
    assert bert_deps("hub") <= {"checkpoint"}
    assert bert_deps("pretrained") == {"model", "checkpoint", "hub"}


def test_no_import_cycles_inside_minbert_bert():
    graph = {name: bert_deps(name) - {"__init__"} for name in MODULES if name != "__init__"}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import cycle: {' -> '.join((*path, name))}"
        if name in done:
            return
        for dep in graph[name]:
            visit(dep, (*path, name))
        done.add(name)

    for name in graph:
        visit(name, ())
