"""The import graph of the project's own packages, read from the source (nothing is imported).

`imports(module)` lists what a module imports anywhere in it (lazy imports inside functions
included); `loads(module)` only what runs when the module is imported (top-level statements, not
under `if TYPE_CHECKING:`), which is what start-up time and a torch-free promise depend on.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ImportGraph:
    root: Path  # the folder holding the top-level packages
    packages: tuple[str, ...]
    anywhere: dict[str, set[str]] = field(default_factory=dict)
    at_import: dict[str, set[str]] = field(default_factory=dict)

    @classmethod
    def read(cls, root: Path, packages: tuple[str, ...]) -> ImportGraph:
        graph = cls(root, packages)
        for package in packages:
            for path in sorted((root / package).rglob("*.py")):
                name = module_name(root, path)
                anywhere, at_import = read_imports(path, name)
                graph.anywhere[name] = anywhere
                graph.at_import[name] = at_import
        return graph

    def resolve(self, name: str) -> str | None:
        """The project module an imported name refers to (`a.b.c` may be a name inside `a.b`)."""
        while name:
            if name in self.anywhere:
                return name
            name = name.rpartition(".")[0]
        return None

    def loads(self, module: str, lazy: bool = False) -> set[str]:
        """Every module importing `module` runs, transitively: project modules by name, third-party ones
        as imported (`torch.nn`, `safetensors.torch`). With `lazy`, imports inside functions count too.

        Importing `a.b.c` also runs `a/__init__` and `a.b/__init__`, so those count too.
        """
        edges = self.anywhere if lazy else self.at_import
        seen: set[str] = set()
        found: set[str] = set()
        todo = [module]
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            ours = self.resolve(current)
            if ours is None:
                if current.split(".")[0] not in self.packages:
                    found.add(current)
                continue
            found.add(ours)
            parts = ours.split(".")
            todo += [".".join(parts[:i]) for i in range(1, len(parts))]
            todo += edges.get(ours, ())
        return found

    def modules(self, package: str) -> list[str]:
        return sorted(m for m in self.anywhere if m == package or m.startswith(package + "."))


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def read_imports(path: Path, module: str) -> tuple[set[str], set[str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    anywhere: set[str] = set()
    at_import: set[str] = set()

    def names(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        if isinstance(node, ast.ImportFrom):
            base = absolute(node, module, is_package)
            # `from a import b` may import the submodule a.b: list both, resolve() keeps what exists
            return [base] + [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]
        return []

    for node in ast.walk(tree):
        anywhere.update(names(node))

    def top_level(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.Import | ast.ImportFrom):
                at_import.update(names(node))
            elif isinstance(node, ast.If):
                if not is_type_checking(node.test):
                    top_level(node.body)
                top_level(node.orelse)
            elif isinstance(node, ast.Try):
                top_level(node.body)
                for handler in node.handlers:
                    top_level(handler.body)
                top_level(node.orelse)
                top_level(node.finalbody)
            elif isinstance(node, ast.With):
                top_level(node.body)

    top_level(tree.body)
    return anywhere, at_import


def absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )
