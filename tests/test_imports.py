"""The package's shape, read from the source with ``ast`` (nothing is imported): no import cycle
between minbert modules, minbert.bert self-contained, and imports that run one way through the
layers (README: the layout), so that the folders tell how a config becomes a trained model.

An edge ``a -> b`` is any import statement in ``a`` naming ``b``, at module level or inside a
function (``import minbert.b``, ``from minbert.b import x``, ``from minbert import b`` when ``b`` is
a submodule, relative imports). The parent packages Python runs on the way (``minbert/__init__.py``
for ``import minbert.b``) are not edges: every import would otherwise pass through them.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "minbert"
MAX_FIT_LINES = 80

# Lowest first. A module may import modules of its own layer or of a lower one, never of a higher.
LAYERS = {
    "the encoder": ["minbert.bert"],
    "config and the registry": ["minbert.config", "minbert.registry"],
    "the process": ["minbert.runtime"],
    "data": ["minbert.data"],
    "the task model and the strategies": [
        "minbert.tasks",
        "minbert.optim",
        "minbert.multitask",
        "minbert.regularizers",
    ],
    "the engine": ["minbert.training"],
    "the lab": ["minbert.lab"],
    "the applications": [
        "minbert.predictor",
        "minbert.export",
        "minbert.pretrain",
        "minbert.similarity",
        "minbert.cli",
        "minbert.__main__",
    ],
}


def find_modules(package_dir: Path) -> dict[str, Path]:
    """``{"minbert.bert.model": path, "minbert.bert": .../bert/__init__.py, ...}``."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ``modules`` that ``name`` (at ``path``) imports, anywhere in its source."""
    root = name.split(".")[0]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def known(dotted: str) -> str | None:  # the longest prefix that is a module: minbert.x.Class -> minbert.x
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(known(a.name) for a in node.names if a.name.split(".")[0] == root)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x, from ..y import z
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != root:
                continue
            for alias in node.names:  # from minbert import train: the submodule, not minbert/__init__
                sub = f"{source}.{alias.name}"
                found.add(sub if sub in modules else known(source))
    found.discard(None)
    found.discard(name)
    return found


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    modules = find_modules(package_dir)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None (depth-first search, modules in sorted order)."""
    state: dict[str, str] = {}  # "open" while on the current path, then "done"
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


GRAPH = import_graph(PACKAGE)


# -- the graph builder itself, on a package made for it ---------------------------------


def write_package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root / "pkg"


def test_graph_sees_every_import_form(tmp_path):
    pkg = write_package(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.sub import thing\n",
            "pkg/a.py": "import pkg.b\nimport os\n",
            "pkg/b.py": "from pkg import c\nfrom pkg.sub.deep import Klass\n",
            "pkg/c.py": "def later():\n    from pkg.sub import d\n",
            "pkg/sub/__init__.py": "from . import deep\nfrom .deep import Klass\n",
            "pkg/sub/d.py": "from ..a import f\n",
            "pkg/sub/deep.py": "KLASS = 1\n",
            "pkg/e.py": "import pkg\nfrom pkg import name_in_init\n",
        },
    )
    assert import_graph(pkg) == {
        "pkg": {"pkg.sub"},
        "pkg.a": {"pkg.b"},
        "pkg.b": {"pkg.c", "pkg.sub.deep"},
        "pkg.c": {"pkg.sub.d"},  # inside a function
        "pkg.sub": {"pkg.sub.deep"},
        "pkg.sub.d": {"pkg.a"},
        "pkg.sub.deep": set(),
        "pkg.e": {"pkg"},  # a name defined in pkg/__init__.py
    }
    # a -> b -> c -> sub.d -> a, the edge c -> sub.d only inside a function
    assert find_cycle(import_graph(pkg)) == ["pkg.a", "pkg.b", "pkg.c", "pkg.sub.d", "pkg.a"]
    assert find_cycle({"x": {"y"}, "y": {"z"}, "z": set()}) is None


# -- minbert ----------------------------------------------------------------------------


def test_the_graph_covers_the_package():
    assert {"minbert", "minbert.training.loop", "minbert.bert.model", "minbert.multitask.surgery"} <= set(GRAPH)
    assert "minbert.training.state" in GRAPH["minbert.training.loop"]
    assert "minbert.registry" in GRAPH["minbert.tasks.losses"]
    assert GRAPH["minbert"] == {"minbert.bert", "minbert.predictor"}  # Predictor: imported on first use


def test_no_import_cycle_between_minbert_modules():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_minbert_bert_imports_nothing_from_the_rest_of_minbert():
    outside = {
        name: sorted(m for m in deps if m != "minbert.bert" and not m.startswith("minbert.bert."))
        for name, deps in GRAPH.items()
        if name == "minbert.bert" or name.startswith("minbert.bert.")
    }
    assert len(outside) >= 7  # the package and its modules were all read
    assert {k: v for k, v in outside.items() if v} == {}


def bert_deps(name: str) -> set[str]:
    """The sibling modules ``minbert.bert.<name>`` imports, by short name."""
    return {m.removeprefix("minbert.bert.") for m in GRAPH[f"minbert.bert.{name}"] if m.startswith("minbert.bert.")}


def test_inside_minbert_bert_imports_run_one_way():
    assert {"model", "checkpoint", "hub", "pretrained", "tokenizer", "heads", "mlm"} <= {
        m.removeprefix("minbert.bert.") for m in GRAPH if m.startswith("minbert.bert.")
    }
    assert bert_deps("model") == set()  # torch only: no checkpoint, hub or pretrained
    assert bert_deps("checkpoint") == set()  # dicts and files only, never BertModel
    assert bert_deps("hub") <= {"checkpoint"}
    assert bert_deps("pretrained") == {"model", "checkpoint", "hub"}


def layer_of(module: str) -> int | None:
    """The index of ``module``'s layer (the package ``minbert`` itself, its public face, is the top)."""
    if module == "minbert":
        return len(LAYERS) - 1
    for i, prefixes in enumerate(LAYERS.values()):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    return None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{a} ({list(LAYERS)[layer_of(a)]}) imports {b} ({list(LAYERS)[layer_of(b)]})"
        for a, deps in sorted(graph.items())
        for b in sorted(deps)
        if (layer_of(b) or 0) > (layer_of(a) or 0)
    ]


def test_every_module_has_a_layer():
    assert [m for m in GRAPH if layer_of(m) is None] == []


def test_imports_run_one_way_through_the_layers():
    assert upward_imports(GRAPH) == []


def test_the_layer_check_sees_an_upward_import():
    # a strategy reaching into the engine, and the encoder into the task model: both refused
    graph = {"minbert.multitask.surgery": {"minbert.training.loop"}, "minbert.bert.model": {"minbert.tasks.pairs"}}
    assert upward_imports(graph) == [
        "minbert.bert.model (the encoder) imports minbert.tasks.pairs (the task model and the strategies)",
        "minbert.multitask.surgery (the task model and the strategies) imports minbert.training.loop (the engine)",
    ]
    assert upward_imports({"minbert.cli": {"minbert.training.loop", "minbert.bert"}}) == []


def test_fit_is_short():
    from minbert.training.loop import fit

    source, _ = inspect.getsourcelines(fit)
    assert len(source) < MAX_FIT_LINES, f"minbert.training.loop.fit has {len(source)} lines: readable in one sitting"
