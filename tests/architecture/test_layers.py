"""The layers of the README's architecture section: every module imports only from its own
package or from layers below it (statically, from the source, so a lazy import inside a
function counts too)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Package -> layer, lowest first. Packages of one layer never import each other.
LAYERS = {
    "identity_grpo.core": 0,
    "identity_grpo.faces": 1,
    "identity_grpo.world": 2,
    "reward_model": 3,
    "identity_grpo.generators": 4,
    "identity_grpo.rewards": 5,
    "identity_grpo.finetune": 6,
    "identity_grpo.grpo": 7,
    "identity_grpo.ipro": 7,
    "identity_grpo.report": 8,
    "identity_grpo.plan": 8,
    "identity_grpo.bench": 9,  # above plan: it builds the published shapes plan/architectures.py describes
}


def package_of(module: str) -> str | None:
    for package in sorted(LAYERS, key=len, reverse=True):
        if module == package or module.startswith(package + "."):
            return package
    return None


def project_modules() -> dict[str, Path]:
    modules = {}
    for top in ("identity_grpo", "reward_model"):
        for path in (ROOT / top).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(p for p in parts if p != "__init__")] = path
    return modules


def imports_of(path: Path, module: str) -> set[str]:
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def layer_violations() -> list[str]:
    modules = project_modules()
    problems = []
    for module, path in sorted(modules.items()):
        own = package_of(module)
        if own is None:
            if module not in ("identity_grpo", "reward_model"):
                problems.append(f"{module}: in no layer")
            continue
        for target in sorted(imports_of(path, module)):
            other = package_of(target)
            if other is None or other == own:
                continue
            if LAYERS[other] >= LAYERS[own]:
                problems.append(f"{module} imports {target} ({other}, layer {LAYERS[other]} >= {LAYERS[own]})")
    return problems


def test_every_module_is_in_a_layer_and_imports_go_down():
    assert layer_violations() == []


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    # A module of the foundation that imports GRPO is caught (the check can fail).
    fake = tmp_path / "identity_grpo" / "core"
    fake.mkdir(parents=True)
    (tmp_path / "reward_model").mkdir()
    (fake / "bad.py").write_text("from identity_grpo.grpo.loss import policy_loss\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path, raising=False)
    globals()["ROOT"], saved = tmp_path, ROOT
    try:
        assert layer_violations() == [
            "identity_grpo.core.bad imports identity_grpo.grpo.loss (identity_grpo.grpo, layer 7 >= 0)",
            "identity_grpo.core.bad imports identity_grpo.grpo.loss.policy_loss (identity_grpo.grpo, layer 7 >= 0)",
        ]
    finally:
        globals()["ROOT"] = saved
