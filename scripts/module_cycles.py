"""`make lint`: fails when modules of a crate (src/, native/src/) import each other in a circle.

A module is a file under src/ (a `mod.rs` stands for its folder). It depends on every module it
names with `crate::a::b` or `super::x` paths (outside its `#[cfg(test)]` part); a dependency on a
module's child counts as one on the child. Tests may reach anywhere, so they are left out.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The crates checked, one after the other (each its own `crate::`).
CRATES = [ROOT / "src", ROOT / "native" / "src"]
SRC = CRATES[0]


def module_of(path: Path) -> tuple[str, ...]:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] in ("mod", "lib"):
        parts.pop()
    return tuple(parts)


def non_test_text(text: str) -> str:
    """The file up to its first `#[cfg(test)]` item (our test modules come last)."""
    cut = text.find("#[cfg(test)]\nmod tests")
    text = text if cut < 0 else text[:cut]
    return re.sub(r"//.*", "", text)


REEXPORTS: dict[tuple[tuple[str, ...], str], tuple[str, ...]] = {}


def read_reexports(files: dict[tuple[str, ...], Path]) -> None:
    """`pub use child::{A, B}` in a folder module: `folder::A` is defined in `folder::child`."""
    for module, path in files.items():
        if path.name not in ("mod.rs", "lib.rs"):
            continue
        text = path.read_text()
        for m in re.finditer(r"pub use (?:self::)?([a-z_][a-z0-9_]*)::(\{[^}]*\}|[A-Za-z_][A-Za-z0-9_]*)", text):
            child = module + (m.group(1),)
            if child not in files:
                continue
            for item in m.group(2).strip("{}").split(","):
                item = item.strip().split(" as ")[-1].strip()
                if item:
                    REEXPORTS[(module, item)] = child


def resolve(current: tuple[str, ...], path: list[str], known: set[tuple[str, ...]]) -> tuple[str, ...] | None:
    if path[0] == "crate":
        base: list[str] = []
    elif path[0] == "super":
        base = list(current[:-1])
        path = path[1:]
        while path and path[0] == "super":
            base = base[:-1]
            path = path[1:]
        path = ["x"] + path
    elif path[0] == "self":
        base = list(current)
        path = ["x"] + path[1:]
    else:
        return None
    best = None
    for i in range(1, len(path)):
        candidate = tuple(base + path[1 : i + 1])
        if candidate in known:
            best = candidate
            if i + 1 < len(path) and (candidate, path[i + 1]) in REEXPORTS:
                best = REEXPORTS[(candidate, path[i + 1])]
    return best


def main() -> int:
    files = {module_of(p): p for p in SRC.rglob("*.rs")}
    known = set(files)
    read_reexports(files)
    edges: dict[tuple[str, ...], set[tuple[str, ...]]] = {m: set() for m in known}
    path_re = re.compile(r"\b((?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)+)")
    group_re = re.compile(r"\b((?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^}]*)\}")
    for module, path in files.items():
        text = non_test_text(path.read_text())
        # `super` in a folder's mod.rs names the folder's parent, as in a file beside it.
        anchor = module + ("x",) if path.name == "mod.rs" else module
        names = [m.group(1).split("::") for m in path_re.finditer(text)]
        for g in group_re.finditer(text):
            prefix = g.group(1).split("::")
            for item in g.group(2).split(","):
                item = item.strip().split(" as ")[0].split("::")[0]
                if item and item != "self":
                    names.append(prefix + [item])
        for name in names:
            target = resolve(anchor, name, known)
            if target is None or target == module:
                continue
            # A module may use its own children and ancestors (re-exports); only siblings and
            # cousins make cycles worth reporting.
            if target[: len(module)] == module or module[: len(target)] == target:
                continue
            edges[module].add(target)
    top: dict[tuple[str, ...], set[tuple[str, ...]]] = {}
    for m, targets in edges.items():
        top.setdefault(m[:1], set()).update(t[:1] for t in targets if t[:1] != m[:1])
    found = 0
    for graph in (edges, top):
        for comp in circles(graph):
            found += 1
            print("modules importing each other in a circle: "
                  + ", ".join(sorted("::".join(m) or "crate" for m in comp)))
            for m in sorted(comp):
                inside = sorted("::".join(t) for t in graph[m] if t in comp)
                print(f"  {'::'.join(m)} -> {', '.join(inside)}")
    return 1 if found else 0


def circles(edges: dict) -> list[list]:
    """Strongly connected components of two or more modules (Tarjan)."""
    for targets in list(edges.values()):
        for t in targets:
            edges.setdefault(t, set())
    index: dict = {}
    low: dict = {}
    stack: list = []
    on: set = set()
    out: list[list] = []
    counter = [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    sys.setrecursionlimit(10000)
    for v in list(edges):
        if v not in index:
            strong(v)
    return out


def check_all() -> int:
    global SRC
    failed = 0
    for crate in CRATES:
        SRC = crate
        REEXPORTS.clear()
        failed |= main()
    return failed


if __name__ == "__main__":
    sys.exit(check_all())
