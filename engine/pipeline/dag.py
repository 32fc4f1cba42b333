"""The stage graph: edges run from the stage that produces a path to the stages that read it.

A dep matches an output when it is the output, lies inside an output directory, or is a
directory that contains an output. Cycles are refused at construction, naming the cycle.
Run order is topological with ties broken by stage name, so it is the same every time.
"""

from __future__ import annotations

import fnmatch
import posixpath
from collections.abc import Callable, Iterable

import networkx as nx

from engine.errors import GraphError, SpecError
from engine.pipeline.spec import PipelineSpec

__all__ = ["Dag"]


class Dag:
    """A validated, acyclic stage graph over a :class:`PipelineSpec`."""

    def __init__(self, spec: PipelineSpec, *, exists: Callable[[str], bool] | None = None) -> None:
        self.spec = spec
        g: nx.DiGraph = nx.DiGraph()
        g.add_nodes_from(spec.stages)
        producer: dict[str, str] = {}
        inside: dict[str, set[str]] = {}  # directory -> stages with an output below it
        for st in spec.stages.values():
            for o in st.all_outs:
                producer[o] = st.name
                parent = posixpath.dirname(o)
                while parent:
                    inside.setdefault(parent, set()).add(st.name)
                    parent = posixpath.dirname(parent)
        self.producer = producer
        missing: list[str] = []
        for st in spec.stages.values():
            for d in st.deps:
                found: set[str] = set(inside.get(d, ()))
                p = d
                while p:
                    if p in producer:
                        found.add(producer[p])
                        break
                    p = posixpath.dirname(p)
                for src in found:
                    if src == st.name:
                        raise GraphError(f"{spec.path}:{st.line}: stage '{st.name}': field 'deps': "
                                         f"'{d}' is also its own output; a stage cannot depend on itself")
                    g.add_edge(src, st.name)
                if not found and exists is not None and not exists(d):
                    missing.append(
                        f"{spec.path}:{st.line}: stage '{st.name}': field 'deps': '{d}' does not exist "
                        "and no stage produces it; create it or add the stage that writes it"
                    )
        if missing:
            raise GraphError("\n".join(sorted(missing)))
        try:
            cycle = nx.find_cycle(g)
        except nx.NetworkXNoCycle:
            cycle = None
        if cycle:
            names = [u for u, _ in cycle] + [cycle[0][0]]
            raise GraphError(f"{spec.path}: cycle in the stage graph: {' -> '.join(names)}; "
                             "remove one of these dependencies")
        self.graph = g
        self._order = list(nx.lexicographical_topological_sort(g))
        self._rank = {n: i for i, n in enumerate(self._order)}

    def order(self, names: Iterable[str] | None = None) -> list[str]:
        """Topological order (ties by name) of ``names``, or of all stages."""
        if names is None:
            return list(self._order)
        return sorted(set(names), key=self._rank.__getitem__)

    def upstream(self, name: str) -> list[str]:
        return self.order(self.graph.predecessors(name))

    def downstream(self, name: str) -> list[str]:
        return self.order(self.graph.successors(name))

    def resolve_targets(self, targets: Iterable[str]) -> list[str]:
        """Stage names, foreach families (``train`` for ``train@*``) and globs."""
        out: list[str] = []
        for t in targets:
            if t in self.spec.stages:
                out.append(t)
                continue
            family = [n for n in self._order if n.split("@", 1)[0] == t]
            globbed = [n for n in self._order if fnmatch.fnmatchcase(n, t)]
            by_out = [self.producer[p] for p in (posixpath.normpath(t),) if p in self.producer]
            hit = family or globbed or by_out
            if not hit:
                import difflib

                close = difflib.get_close_matches(t, list(self.spec.stages), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else "; see 'certus dag' for stage names"
                raise SpecError(f"{self.spec.path}: unknown target '{t}'{hint}")
            out.extend(hit)
        return self.order(out)

    def select(self, targets: Iterable[str] | None, *, downstream: bool = False, single: bool = False) -> list[str]:
        """What a repro of ``targets`` covers: the targets plus what they need (or feed)."""
        targets = list(targets or [])
        if not targets:
            return list(self._order)
        chosen = set(self.resolve_targets(targets))
        if single:
            return self.order(chosen)
        extra: set[str] = set()
        for n in chosen:
            extra |= nx.descendants(self.graph, n) if downstream else nx.ancestors(self.graph, n)
        return self.order(chosen | extra)

    def _governance(self) -> list[tuple[str, str, list[str]]]:
        """Gates and packaging steps as extra nodes: (kind, name, upstream node names)."""
        spec = self.spec
        producers = {o: st.name for st in spec.stages.values() for o in st.all_outs}
        out: list[tuple[str, str, list[str]]] = []
        for g in getattr(spec, "gates", {}).values():
            out.append(("gate", g.name, [g.after]))
        for pk in getattr(spec, "packages", {}).values():
            ups = [producers[pk.model]] if pk.model in producers else []
            out.append(("package", pk.name, ups + ([f"gate {pk.requires_gate}"] if pk.requires_gate else [])))
        return out

    def to_mermaid(self) -> str:
        ids = {n: f"s{i}" for i, n in enumerate(self._order)}
        lines = ["flowchart TD"]
        for n in self._order:
            lines.append(f'    {ids[n]}["{n}"]')
        extra = self._governance()
        for i, (kind, name, _) in enumerate(extra):
            ids[f"{kind} {name}"] = f"g{i}"
            shape = "{{" + f'"gate: {name}"' + "}}" if kind == "gate" else f'[/"package: {name}"/]'
            lines.append(f"    g{i}{shape}")
        for u, v in sorted(self.graph.edges, key=lambda e: (self._rank[e[0]], self._rank[e[1]])):
            lines.append(f"    {ids[u]} --> {ids[v]}")
        for kind, name, ups in extra:
            lines += [f"    {ids[u]} -.-> {ids[f'{kind} {name}']}" for u in ups if u in ids]
        return "\n".join(lines) + "\n"

    def to_dot(self) -> str:
        lines = ["digraph certus {", "    rankdir=TB;", "    node [shape=box];"]
        for n in self._order:
            lines.append(f'    "{n}";')
        extra = self._governance()
        for kind, name, _ in extra:
            lines.append(f'    "{kind} {name}" [shape={"hexagon" if kind == "gate" else "parallelogram"}];')
        for u, v in sorted(self.graph.edges, key=lambda e: (self._rank[e[0]], self._rank[e[1]])):
            lines.append(f'    "{u}" -> "{v}";')
        for kind, name, ups in extra:
            lines += [f'    "{u}" -> "{kind} {name}" [style=dashed];' for u in ups]
        lines.append("}")
        return "\n".join(lines) + "\n"

    def to_ascii(self) -> str:
        lines = []
        for n in self._order:
            ups = self.upstream(n)
            lines.append(f"{n}" + (f"  <- {', '.join(ups)}" if ups else ""))
        lines += [f"[{kind} {name}]  <- {', '.join(ups)}" for kind, name, ups in self._governance()]
        return "\n".join(lines) + "\n"
