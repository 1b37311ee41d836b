"""Imports flow one way: pure core <- adapters <- engine <- surfaces (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "correspond"

# Lower number = lower layer. A module may import only from its own layer or below.
LAYERS: dict[str, int] = {
    "correspond.errors": 0,
    "correspond.settings": 0,
    "correspond.imap.types": 0,
    "correspond.imap.protocol": 0,
    "correspond.imap.mutf7": 0,
    "correspond.mail": 0,
    "correspond.rules": 0,
    "correspond.imap.client": 1,
    "correspond.imap.connect": 1,
    "correspond.smtp": 1,
    "correspond.store": 1,
    "correspond.secretbox": 1,
    "correspond.sync": 2,
    "correspond.accounts": 2,
    "correspond.composer": 2,
    "correspond.auth": 2,
    "correspond.mailbox": 2,
    "correspond.notify": 2,
    "correspond.outgoing": 2,
    "correspond.drafts": 2,
    "correspond.search": 2,
    "correspond.api": 3,
    "correspond.web": 3,
    "correspond.cli": 3,
    "correspond.testing": 3,
}
# Pure modules must not do IO through these.
IO_MODULES = {"asyncio", "socket", "ssl", "sqlalchemy", "subprocess", "httpx", "httpx2", "fastapi"}


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None
    for prefix, layer in LAYERS.items():
        matches = module == prefix or module.startswith(prefix + ".")
        if matches and (best is None or len(prefix) > best[0]):
            best = (len(prefix), layer)
    return None if best is None else best[1]


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: list[str] = []
    package = (
        module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    )
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            names.append(mod)
    return names


SOURCES = sorted(p for p in SRC.rglob("*.py") if "migrations" not in p.parts)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_flow_downward(path: Path) -> None:
    me = module_name(path)
    my_layer = layer_of(me)
    if my_layer is None:
        return  # the package face (correspond/__init__.py) and layer packages' __init__
    for target in imported_modules(path):
        if not target.startswith("correspond"):
            if my_layer == 0:
                assert target.split(".")[0] not in IO_MODULES, f"pure module {me} imports {target}"
            continue
        target_layer = layer_of(target)
        if target_layer is None:
            continue
        assert target_layer <= my_layer, (
            f"{me} (layer {my_layer}) imports {target} ({target_layer})"
        )
