"""The import graph of ``src/grpo`` keeps the shape the tree is meant to show (docs: README's
module table; the floors below are the same order).

Three rules, checked on the source with :mod:`ast` (nothing is imported):

* **no circles.** Every import that runs counts: module level, and also imports inside
  functions (lazy ones). A lazy import hides a circle from Python, not from the reader: both
  circles the architecture review found (``rollout/hf`` <-> ``hf_decode``, ``rewards/base`` <->
  ``pool``) had one lazy side. Imports under ``if TYPE_CHECKING:`` never run and are left out.
  An edge goes to the module named, not to the packages above it (``from grpo.rewards.base
  import Reward`` is an edge to ``grpo.rewards.base``, although Python runs
  ``grpo/rewards/__init__`` first), so a package ``__init__`` that re-exports its own modules
  is not a circle; a module importing *from its own package's* ``__init__`` that imports it is.
* **no upward imports.** Every module sits on one of :data:`FLOORS`, ordered from the bottom
  up, and may import (module level or lazily) only from its own floor or a lower one. A new
  module must be placed on a floor: the failure says so.
* **no private names across packages.** A name or module with a leading underscore may be
  imported only within the package it lives in (``grpo.rollout.hf`` may import
  ``grpo.rollout.tokens._x``; ``grpo.rewards.code`` may not import ``grpo.sandbox._x``).
  Checked for every import, ``TYPE_CHECKING`` ones included.

An edge the rules refuse but that has to stay for now goes into :data:`KNOWN`, with the reason.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

Floors = tuple[tuple[str, tuple[str, ...]], ...]

# From the bottom up. An entry is a module (``grpo.loss``), or a package with everything in it
# (``grpo.rewards.*``). The top package ``grpo`` (its ``__init__``) is the top floor's.
FLOORS: Floors = (
    ("math: pure tensor functions", ("grpo.advantages", "grpo.objectives.*", "grpo.loss",
                                     "grpo.logprobs",
                                     "grpo.packing", "grpo.distill", "grpo.textstats",
                                     "grpo.scaling")),
    ("process foundations", ("grpo.callbacks", "grpo.checkpoint", "grpo.guards", "grpo.parallel",
                             "grpo.tracking")),
    ("sandbox", ("grpo.sandbox.*",)),
    ("rewards", ("grpo.rewards.*",)),
    ("rollout", ("grpo.rollout.*",)),
    ("config and metrics", ("grpo.trl_args", "grpo.config", "grpo.metrics")),
    ("components", ("grpo.batch", "grpo.curriculum", "grpo.data", "grpo.policy", "grpo.models", "grpo.tiny",
                    "grpo.sft")),
    ("stages: source, learner, evaluation", ("grpo.source", "grpo.learner",
                                             "grpo.evaluation")),
    ("trainer loop", ("grpo.async_source", "grpo.trainer")),
    ("recipes", ("grpo.recipes.*",)),
    ("entry points", ("grpo.pipeline.*", "grpo.report", "grpo.sweep.*", "grpo.cli", "grpo.compat", "grpo")),
)

# Edges the rules refuse that stay for now: (importer, imported) -> why.
KNOWN: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Import:
    """One import statement's edge to one module of the package."""

    importer: str
    target: str  # the module imported, or imported from
    names: tuple[str, ...]  # the names taken from it (empty for ``import a.b``)
    line: int
    text: str  # the statement as written
    lazy: bool  # inside a function: runs on the first call, not at import
    typing_only: bool  # under ``if TYPE_CHECKING:``: never runs

    def where(self) -> str:
        lazy = ", lazy" if self.lazy else ""
        return f"{self.importer} (line {self.line}{lazy}: {self.text})"


def module_names(root: Path, package: str = "grpo") -> dict[str, Path]:
    """Every module of ``package`` under ``root``, by dotted name."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _statements(tree: ast.Module) -> Iterable[tuple[ast.Import | ast.ImportFrom, bool, bool]]:
    """Every import statement, with (lazy, typing_only): function bodies are lazy; module and
    class bodies and their ``if``/``try``/``with`` blocks are not."""

    def walk(nodes: Sequence[ast.AST], lazy: bool, typing_only: bool) -> Iterable:
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                yield node, lazy, typing_only
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                yield from walk(list(ast.iter_child_nodes(node)), True, typing_only)
            elif isinstance(node, ast.If) and _is_type_checking(node.test):
                yield from walk(node.body, lazy, True)
                yield from walk(node.orelse, lazy, typing_only)
            else:
                yield from walk(list(ast.iter_child_nodes(node)), lazy, typing_only)

    yield from walk(tree.body, False, False)


def _package_of(module: str, modules: Mapping[str, Path]) -> str:
    """The package a module belongs to: itself for a package, else its parent."""
    if modules[module].name == "__init__.py":
        return module
    return module.rpartition(".")[0]


def imports_of(root: Path, package: str = "grpo") -> list[Import]:
    """Every import of a ``package`` module by a ``package`` module, relative ones resolved."""
    modules = module_names(root, package)
    out = []
    for name, path in modules.items():
        source = path.read_text()
        here = _package_of(name, modules)
        for node, lazy, typing_only in _statements(ast.parse(source, str(path))):
            text = " ".join((ast.get_source_segment(source, node) or "").split())

            def edge(target: str, names: tuple[str, ...] = ()) -> Import:
                return Import(name, target, names, node.lineno, text, lazy, typing_only)

            if isinstance(node, ast.Import):
                out += [edge(alias.name) for alias in node.names
                        if alias.name == package or alias.name.startswith(package + ".")]
                continue
            if node.level:  # relative: from the importer's package, up ``level - 1`` packages
                base = here.split(".")[:len(here.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target != package and not target.startswith(package + "."):
                continue
            names = []
            for alias in node.names:
                if f"{target}.{alias.name}" in modules:  # ``from grpo.rewards import base``
                    out.append(edge(f"{target}.{alias.name}"))
                else:
                    names.append(alias.name)
            if names:
                out.append(edge(target, tuple(names)))
    return out


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def private_imports(imports: Iterable[Import], modules: Mapping[str, Path]) -> list[str]:
    """Underscore names or modules imported from another package."""
    out = []
    for imp in imports:
        if imp.target in modules and (
                _package_of(imp.target, modules) == _package_of(imp.importer, modules)):
            continue
        hidden = [p for p in imp.target.split(".") if _private(p)]
        hidden += [n for n in imp.names if _private(n)]
        if hidden:
            out.append(f"{imp.where()} takes private {', '.join(hidden)} from another package "
                       f"({imp.target}): make it public, or move it")
    return out


def cycles(imports: Iterable[Import]) -> list[list[str]]:
    """The circles of the graph of imports that run: its strongly connected components of more
    than one module (or a module importing itself), each as a sorted list."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if not imp.typing_only:
            graph.setdefault(imp.importer, set()).add(imp.target)
            graph.setdefault(imp.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm; recursion is fine for ~100 modules
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = stack[stack.index(v):]
            del stack[stack.index(v):]
            if len(component) > 1 or v in graph[v]:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def floor_of(module: str, floors: Floors = FLOORS) -> int | None:
    """The index in ``floors`` of the entry naming ``module`` (the longest package entry that
    holds it, if no entry names it exactly), or None."""
    best: tuple[int, int] | None = None  # (length of the package entry, floor)
    for i, (_, entries) in enumerate(floors):
        for entry in entries:
            if entry == module:
                return i
            if entry.endswith(".*"):
                pkg = entry[:-2]
                if (module == pkg or module.startswith(pkg + ".")) and (
                        best is None or len(pkg) > best[0]):
                    best = (len(pkg), i)
    return None if best is None else best[1]


def upward_imports(imports: Iterable[Import], floors: Floors = FLOORS) -> list[str]:
    out = []
    for imp in imports:
        if imp.typing_only:
            continue
        low, high = floor_of(imp.importer, floors), floor_of(imp.target, floors)
        if low is not None and high is not None and high > low:
            out.append(f"{imp.where()} imports upward: {imp.importer} is on the floor "
                       f"{floors[low][0]!r}, {imp.target} on the higher {floors[high][0]!r}")
    return out


def unplaced(modules: Iterable[str], floors: Floors = FLOORS) -> list[str]:
    return [f"{m} is on no floor: add it (or its package, as 'pkg.*') to a floor of FLOORS in "
            "tests/test_architecture.py" for m in modules if floor_of(m, floors) is None]


def violations(root: Path, package: str = "grpo", floors: Floors = FLOORS,
               known: Mapping[tuple[str, str], str] | None = None) -> list[str]:
    """Every broken rule, one message each; empty when the graph has the intended shape."""
    known = KNOWN if known is None else known
    modules = module_names(root, package)
    imports = [imp for imp in imports_of(root, package) if (imp.importer, imp.target) not in known]
    out = unplaced(modules, floors)
    out += private_imports(imports, modules)
    for component in cycles(imports):
        edges = [imp.where() for imp in imports if not imp.typing_only
                 and imp.importer in component and imp.target in component]
        out.append(f"import circle among {', '.join(component)}:\n    " + "\n    ".join(edges))
    out += upward_imports(imports, floors)
    return out


# ------------------------------------------------------------------------------ grpo itself


def test_grpo_import_graph_has_the_intended_shape():
    problems = violations(SRC)
    assert not problems, "\n".join(problems)


def test_known_exceptions_are_still_needed():
    """An entry of KNOWN whose import is gone, or that the rules now allow, must go."""
    imports = imports_of(SRC)
    present = {(imp.importer, imp.target) for imp in imports}
    assert not [edge for edge in KNOWN if edge not in present], "gone: remove from KNOWN"
    allowed = violations(SRC, known={})
    for importer, target in KNOWN:
        assert any(f"{importer} (line" in p and target in p for p in allowed), (
            f"{importer} -> {target} breaks no rule any more: remove it from KNOWN")


def test_every_floor_entry_names_a_module_or_package():
    modules = module_names(SRC)
    entries = [e for _, floor in FLOORS for e in floor]
    assert len(entries) == len(set(entries))
    for entry in entries:
        name = entry.removesuffix(".*")
        assert name in modules, f"FLOORS names {entry}, which does not exist: remove it"
        assert entry.endswith(".*") == (modules[name].name == "__init__.py" and name != "grpo"), (
            f"FLOORS: write a package as 'pkg.*' and a module by its name ({entry})")


# ----------------------------------------------------------- the checker on a fake package


def _fake_package(tmp_path: Path, files: Mapping[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / "fake" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return tmp_path


FAKE_FLOORS: Floors = (("low", ("fake.low", "fake.sub.*")), ("high", ("fake.high", "fake")))


def test_checker_finds_a_circle_through_a_relative_import(tmp_path):
    root = _fake_package(tmp_path, {
        "__init__.py": "",
        "low.py": "from fake.high import thing\n",
        "high.py": "from .low import other\nthing = 1\n",
    })
    problems = violations(root, "fake", FAKE_FLOORS, known={})
    assert problems == [
        "import circle among fake.high, fake.low:\n"
        "    fake.high (line 1: from .low import other)\n"
        "    fake.low (line 1: from fake.high import thing)",
        "fake.low (line 1: from fake.high import thing) imports upward: fake.low is on the floor "
        "'low', fake.high on the higher 'high'"]


def test_checker_counts_lazy_imports_but_not_type_checking_ones(tmp_path):
    files = {
        "__init__.py": "",
        "high.py": "from fake import low\n",
        "low.py": textwrap.dedent("""\
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from fake.high import Thing
            else:
                Thing = None
        """),
    }
    assert violations(_fake_package(tmp_path, files), "fake", FAKE_FLOORS, known={}) == []
    files["low.py"] += "def f():\n    from fake.high import thing\n"
    problems = violations(_fake_package(tmp_path, files), "fake", FAKE_FLOORS, known={})
    assert [p.splitlines()[0] for p in problems] == [
        "import circle among fake.high, fake.low:",
        "fake.low (line 7, lazy: from fake.high import thing) imports upward: fake.low is on "
        "the floor 'low', fake.high on the higher 'high'"]


def test_checker_finds_a_module_importing_its_own_package(tmp_path):
    root = _fake_package(tmp_path, {
        "__init__.py": "",
        "sub/__init__.py": "class Error(Exception): ...\ndef f():\n    from .schema import Spec\n",
        "sub/schema.py": "from fake.sub import Error\nclass Spec: ...\n",
    })
    [problem] = violations(root, "fake", FAKE_FLOORS, known={})
    assert problem.startswith("import circle among fake.sub, fake.sub.schema:")


def test_checker_finds_private_imports_across_packages_only(tmp_path):
    root = _fake_package(tmp_path, {
        "__init__.py": "",
        "low.py": "_hidden = 1\n",
        "_impl.py": "",
        "sub/__init__.py": "from fake.sub._inner import x  # same package: fine\n",
        "sub/_inner.py": "x = 1\n",
        "sub/user.py": "from ._inner import x  # same package: fine\n",
        "high.py": """\
            def f():
                from fake.low import _hidden  # same package (fake): fine
                from . import _impl  # a module of the same package: fine
                from fake.sub._inner import x  # the package fake.sub's: refused
        """,
    })
    assert violations(root, "fake", (("all", ("fake", "fake.*")),), known={}) == [
        "fake.high (line 4, lazy: from fake.sub._inner import x) takes private _inner from "
        "another package (fake.sub._inner): make it public, or move it"]


def test_checker_asks_where_a_new_module_goes(tmp_path):
    root = _fake_package(tmp_path, {"__init__.py": "", "low.py": "", "new.py": ""})
    assert violations(root, "fake", (("low", ("fake.low", "fake.new")), ("top", ("fake",))),
                      known={}) == []
    assert violations(root, "fake", (("low", ("fake.low",)), ("top", ("fake",))), known={}) == [
        "fake.new is on no floor: add it (or its package, as 'pkg.*') to a floor of FLOORS in "
        "tests/test_architecture.py"]


def test_known_exceptions_silence_one_edge(tmp_path):
    root = _fake_package(tmp_path, {"__init__.py": "", "low.py": "import fake.high\n",
                                    "high.py": ""})
    assert len(violations(root, "fake", FAKE_FLOORS, known={})) == 1
    assert violations(root, "fake", FAKE_FLOORS, known={("fake.low", "fake.high"): "why"}) == []
