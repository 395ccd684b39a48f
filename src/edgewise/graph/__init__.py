"""The edge graph of a transformer: sources, destinations and the edges between them,
built from a model's shape alone (no model needed)."""

from edgewise.graph.build import (
    RESID_START_HOOK,
    DestModule,
    Graph,
    GraphSpec,
    SrcModule,
    build_graph,
)

__all__ = ["RESID_START_HOOK", "DestModule", "Graph", "GraphSpec", "SrcModule", "build_graph"]
