"""The shape of afsweep's code, for reviews of its layout: import circles, imports inside functions, the largest
functions and files.

    python scripts/code_shape.py [--top 5]

Reads the source with `ast` (imports nothing of it). A circle is a strongly connected set of afsweep modules when
every import counts, module-level and function-level alike (a function-level import still ties the two modules).
"""
from __future__ import annotations

import argparse
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("alphaflow", "orchestrator")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path, modules: set[str]):
    """(target module, inside a function?) for each afsweep import in the file, and the count of all imports."""
    name = module_name(path)
    tree = ast.parse(path.read_text())
    found, total, inside = [], 0, 0

    def visit(node, in_function):
        nonlocal total, inside
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                if isinstance(child, ast.ImportFrom) and child.module == "__future__":
                    continue
                total += 1
                inside += in_function
                if isinstance(child, ast.Import):
                    targets = [a.name for a in child.names]
                else:  # `from pkg import module` imports the module; `from pkg import name`, the package
                    base = resolve(name, path.name == "__init__.py", child)
                    targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in child.names]
                for target in targets:
                    while target and target not in modules:
                        target = target.rpartition(".")[0]
                    if target and target != name:
                        found.append((target, in_function))
            visit(child, nested)

    visit(tree, False)
    return found, total, inside, tree


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def connect(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args()
    files = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))
    modules = {module_name(p) for p in files}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    total = inside = 0
    functions, sizes = [], []
    for path in files:
        found, n, n_inside, tree = imports_of(path, modules)
        total, inside = total + n, inside + n_inside
        graph[module_name(path)] |= {t for t, _ in found}
        sizes.append((len(path.read_text().splitlines()), str(path.relative_to(ROOT))))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append((node.end_lineno - node.lineno + 1, f"{path.relative_to(ROOT)}:{node.name}"))
    found_circles = circles(graph)
    print(f"import circles: {len(found_circles)}")
    for group in found_circles:
        print("  " + " <-> ".join(group))
    print(f"imports inside functions: {inside} of {total}")
    print("largest functions (lines):")
    for n, name in sorted(functions, reverse=True)[: args.top]:
        print(f"  {n:4d}  {name}")
    print("largest files (lines):")
    for n, name in sorted(sizes, reverse=True)[: args.top]:
        print(f"  {n:4d}  {name}")


if __name__ == "__main__":
    main()
