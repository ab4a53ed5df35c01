#!/usr/bin/env python3
"""Fails when files of a crate import each other in a circle (ARCHITECTURE.md, "Invariants").

For each crate directory given (default: core/src filter/src token-service/src), every `.rs`
file is a module (`lib.rs`/`main.rs` the crate root, `x/mod.rs` or `x.rs` the module `x`).
A file depends on another when its non-test code names it: a path through `crate::`, `super::`
or `self::` (an item of a module counts for the module's file; an item of the root for the
root), or a child module named from a `mod.rs`/root file. Declaring a child (`mod x;`) is not
a dependency. Test code (from the first `#[cfg(test)]` on) is left out: tests may reach
anywhere.
"""
import re
import sys
from pathlib import Path

PATH = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
BRACED = re.compile(r"\b(crate|super|self)::\{([^}]*)\}")


def modules(src: Path):
    """module path (tuple) -> file"""
    found = {}
    has_lib = (src / "lib.rs").exists()
    for f in sorted(src.rglob("*.rs")):
        rel = f.relative_to(src)
        if has_lib and rel == Path("main.rs"):
            continue  # the binary: a crate of its own over the library
        parts = list(rel.with_suffix("").parts)
        if parts[-1] in ("mod",) or (len(parts) == 1 and parts[0] in ("lib", "main")):
            parts = parts[:-1]
        found[tuple(parts)] = f
    return found


def code_of(f: Path) -> str:
    text = f.read_text()
    cut = text.find("#[cfg(test)]")
    text = text if cut < 0 else text[:cut]
    # Comments name modules too, without depending on them.
    text = re.sub(r"//[^\n]*", "", text)
    return text


def resolve(mods, path):
    """The longest module prefix of `path`, else the root."""
    for n in range(len(path), 0, -1):
        if tuple(path[:n]) in mods:
            return tuple(path[:n])
    return ()


def edges(src: Path):
    mods = modules(src)
    graph = {m: set() for m in mods}
    for mod, f in mods.items():
        text = code_of(f)
        children = [k for k in mods if len(k) == len(mod) + 1 and k[: len(mod)] == mod]

        def add(base, rest):
            start = {"crate": (), "super": mod[:-1], "self": mod}[base]
            target = resolve(mods, list(start) + rest)
            if target != mod and target in mods:
                graph[mod].add(target)

        for m in PATH.finditer(text):
            add(m.group(1), [p for p in m.group(2).split("::") if p])
        for m in BRACED.finditer(text):
            for item in m.group(2).split(","):
                first = item.strip().split("::")[0].strip()
                if first and first != "self":
                    add(m.group(1), [first])
        # A module naming its children directly (`app::x`, `use app::...`).
        for child in children:
            if re.search(rf"(?<![A-Za-z0-9_:]){child[-1]}::", text):
                graph[mod].add(child)
    return mods, graph


def cycles(graph):
    """Strongly connected components with more than one module."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
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
    for v in graph:
        if v not in index:
            visit(v)
    return out


def name(mod):
    return "::".join(mod) or "(crate root)"


def main(dirs):
    failed = False
    for d in dirs:
        src = Path(d)
        mods, graph = edges(src)
        for comp in cycles(graph):
            failed = True
            files = sorted(str(mods[m]) for m in comp)
            links = sorted(
                f"{name(a)} -> {name(b)}" for a in comp for b in graph[a] if b in comp
            )
            print(f"{src}: files importing each other in a circle: {', '.join(files)}")
            for link in links:
                print(f"    {link}")
    if failed:
        print("Break the circle: move what both sides need into a leaf module (ARCHITECTURE.md).")
        return 1
    print(f"no import circles in {' '.join(dirs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["core/src", "filter/src", "token-service/src"]))
