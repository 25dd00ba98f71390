"""A hash of the source of the modules that build a cached model, so a cache folder built by older
code is not reused after that code changes (cache_folders.py keys folders by settings + this hash).

    BUILDING_MODULES = ["identity_grpo.world.face_models", "identity_grpo.world.face_embedder", ...]
    key = settings_hash({**settings, "code": source_hash(BUILDING_MODULES)})

Each cache kind lists its building modules explicitly; `project_imports` (the modules a module
imports within the project, read with `ast`, imports inside functions included) lets a test check
that a list is closed under imports, i.e. that no building module was left out. Package __init__
files are not counted: they hold docstrings and re-exports, no building code.
Line endings are normalised, so a checkout with CRLF files hashes like one with LF files.
Modules in NOT_BUILDING only choose which finished folder to read (core/shipped.py): builders
import them, but they never change what is built, so the closure does not follow them.
"""
from __future__ import annotations

import ast
import hashlib
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # holds identity_grpo/ and reward_model/
PROJECT_PACKAGES = ("identity_grpo", "reward_model")
NOT_BUILDING = frozenset({"identity_grpo.core.shipped"})  # read finished folders, never build (see above)


def module_file(module: str) -> Path:
    """The source file of a project module (a package's __init__.py), without importing it."""
    if module.split(".")[0] not in PROJECT_PACKAGES:
        raise ValueError(f"{module!r} is not a module of this project ({', '.join(PROJECT_PACKAGES)})")
    base = PROJECT_ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    raise ValueError(f"{module!r}: no such module under {PROJECT_ROOT}")


def source_hash(modules: list[str]) -> str:
    """12 hex digits over the named modules' sources (order and duplicates do not matter)."""
    digest = hashlib.sha256()
    for module in sorted(set(modules)):
        text = module_file(module).read_bytes().replace(b"\r\n", b"\n")
        digest.update(module.encode() + b"\0" + hashlib.sha256(text).digest())
    return digest.hexdigest()[:12]


def _is_module(name: str) -> bool:
    try:
        module_file(name)
        return True
    except ValueError:
        return False


def project_imports(module: str) -> set[str]:
    """The project modules `module` imports anywhere in its file (`from a.b import c` counts a.b.c
    when c is a module, else a.b); packages' __init__ files only when imported by name."""
    path = module_file(module)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, `level - 1` packages up
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names = [f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}") else base for alias in node.names]
        else:
            continue
        found |= {name for name in names if name.split(".")[0] in PROJECT_PACKAGES and _is_module(name)}
    return found


def import_closure(modules: list[str]) -> set[str]:
    """The named modules and every project module they import, directly or not (NOT_BUILDING aside)."""
    seen, todo = set(), list(modules)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += sorted(project_imports(module) - seen - NOT_BUILDING)
    return seen
