"""The house, read from the imports: no import cycle between the project's modules, models/ data/ utils/ import no
engine, no library module imports an entry script, every engine has the same files, entry scripts stay thin."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY = ("train_minimax", "sample", "evaluate")
PACKAGES = ("engines", "models", "data", "utils", "scripts", "benchmarks")


def project_modules():
    """{module name: path} of the entry scripts and every module of the project's packages."""
    mods = {m: os.path.join(ROOT, f"{m}.py") for m in ENTRY}
    for pkg in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, pkg)):
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].replace(os.sep, ".")
                    mods[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(folder, f)
    return mods


def imports(path, mods):
    """Project modules that `path` imports anywhere (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            while n and n not in mods:
                n = n.rpartition(".")[0]
            if n:
                found.add(n)
    return found


def graph():
    mods = project_modules()
    return {m: imports(p, mods) - {m} for m, p in mods.items()}


def test_no_import_cycle():
    g = graph()
    state, cycle = {}, []

    def visit(m, stack):
        state[m] = "open"
        for n in sorted(g[m]):
            if n.startswith(m + "."):  # a package importing its own submodule is not a cycle back
                continue
            if state.get(n) == "open" and not m.startswith(n + "."):
                cycle.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not cycle, f"import cycles: {cycle[:3]}"


def test_layers_import_downwards_only():
    g = graph()
    for m, deps in g.items():
        if m.split(".")[0] in ("models", "data", "utils"):
            assert not [d for d in deps if d.startswith("engines")], f"{m} imports an engine: {deps}"
        if m not in ENTRY:
            assert not deps & set(ENTRY), f"{m} imports an entry script: {deps & set(ENTRY)}"
    for tool in ("train", "sample", "evaluate"):
        assert {f"engines.{tool}.{f}" for f in ("schema", "run", "state")} <= set(g), tool
        assert f"engines.{tool}.run" not in g[f"engines.{tool}.schema"]  # the schema loads no torch


def test_entry_scripts_are_thin():
    for m in ENTRY:
        lines = open(os.path.join(ROOT, f"{m}.py")).read().splitlines()
        assert len(lines) <= 60, (m, len(lines))
        assert f"from engines.{'train' if m == 'train_minimax' else m} import main" in "\n".join(lines)
