"""The layers of DESIGN.md, checked on every module's imports (function-level ones included).

Bottom to top: tasks < engines < sim < data < estimators < orchestration < policy < serving < pipelines < cli/jobs.
A module may import its own layer and the ones below, never above; and only ``engines/`` (the backend seam) and
``sim/`` (the twin's cluster) may import ``sysaware.engines.twin``, so no policy can read the simulator's answer key.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sysaware"

# Lower number = lower layer. Modules at the package root (config, runs) are shared foundations.
LAYERS = {
    "config": -1,
    "runs": -1,
    "resources": -1,
    "tasks": 0,
    "engines": 1,
    "sim": 2,
    "data": 3,
    "estimators": 4,
    "orchestration": 5,
    "policy": 6,
    "serving": 7,
    "pipelines": 8,
    "cli": 9,
}
TWIN = "sysaware.engines.twin"
MAY_IMPORT_TWIN = ("engines", "sim")


def layer_of(module: str) -> str:
    """'sysaware.orchestration.session' -> 'orchestration'; 'sysaware.config' -> 'config'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "cli"


def module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """Every absolute ``sysaware`` module a file imports, with the line, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path, root).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            out += [(node.lineno, f"{base}.{a.name}" if _is_module(f"{base}.{a.name}", root) else base) for a in node.names]
    return [(line, m) for line, m in out if m == "sysaware" or m.startswith("sysaware.")]


def _is_module(name: str, root: Path) -> bool:
    rel = Path(*name.split("."))
    return (root / rel).with_suffix(".py").exists() or (root / rel / "__init__.py").exists()


def project_files(root: Path) -> list[Path]:
    files = sorted((root / "sysaware").rglob("*.py")) + sorted((root / "jobs").glob("*.py"))
    return files + [p for p in [root / "serve_app.py"] if p.exists()]


def violations(root: Path = ROOT) -> list[str]:
    found = []
    for path in project_files(root):
        importer = module_name(path, root) if path.is_relative_to(root / "sysaware") else "cli"
        src_layer = layer_of(importer) if importer != "cli" else "cli"
        for line, target in imports_of(path, root):
            if target == "sysaware":
                continue
            dst_layer = layer_of(target)
            where = f"{path.relative_to(root)}:{line} imports {target}"
            if LAYERS.get(dst_layer, -1) > LAYERS.get(src_layer, 9):
                found.append(f"{where} (upward: {src_layer} -> {dst_layer})")
            if (target == TWIN or target.startswith(TWIN + ".")) and src_layer not in MAY_IMPORT_TWIN:
                found.append(f"{where} (the twin is reachable only through engines/ and sim/)")
    return found


def test_every_layer_is_known():
    unknown = {layer_of(module_name(p)) for p in PACKAGE.rglob("*.py")} - set(LAYERS)
    assert not unknown, f"packages with no place in DESIGN.md's layers: {sorted(unknown)}"


def test_imports_point_down_and_only_the_seam_sees_the_twin():
    assert violations() == []


@pytest.mark.parametrize(
    "importer, source, expected",
    [
        ("sysaware/estimators/x.py", "from sysaware.pipelines import evaluate\n", "upward: estimators -> pipelines"),
        ("sysaware/orchestration/x.py", "from sysaware.engines.twin.perf.core import X\n", "only through engines/"),
        ("sysaware/serving/x.py", "def f():\n    import sysaware.engines.twin.live\n", "only through engines/"),
    ],
)
def test_the_checker_catches_what_it_should(tmp_path, importer, source, expected):
    """The checker itself can fail: a planted upward import and planted twin imports are reported."""
    planted = tmp_path / importer
    planted.parent.mkdir(parents=True)
    planted.write_text(source)
    found = violations(tmp_path)
    assert len(found) == 1 and expected in found[0], found
