"""Counts a package's function-level imports (all of them, and those of the package itself)
and its TYPE_CHECKING imports: `python scripts/import_counts.py [flood_cli]`. A function-level
import should only keep a heavy library out of a process; tests/core/test_layers.py checks
the layer rule itself."""
import ast
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "flood_cli")
every = own = checking = 0
for path in sorted(root.rglob("*.py")):
    tree = ast.parse(path.read_text())
    def visit(node, inside):
        global every, own, checking
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)) and inside:
                every += 1
                names = [child.module or ""] if isinstance(child, ast.ImportFrom) else [a.name for a in child.names]
                if (isinstance(child, ast.ImportFrom) and child.level) or any(n.startswith(root.name) for n in names):
                    own += 1
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                checking += sum(isinstance(s, (ast.Import, ast.ImportFrom)) for s in child.body)
            visit(child, inside or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))
    visit(tree, False)
print(f"function-level imports: {every} ({own} of {root.name} itself); TYPE_CHECKING imports: {checking}")
