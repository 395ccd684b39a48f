"""Pictures of circuits: an offline HTML report, PNG figures, and live-model drawings.

* :func:`write_report` turns the ``results.json`` dict of ``edgewise discover`` into one
  self-contained HTML page (inline SVG, inline CSS, a little vanilla JS; nothing is
  fetched): the circuit of each algorithm as a layered graph, faithfulness and metric
  curves, ROC curves, top-edge tables and a summary.
* :func:`draw_circuit_png` draws a list of top edges as a PNG with matplotlib (Agg).
* :func:`faithfulness_figure`, :func:`circuit_graph_figure` and :func:`overlap_figure`
  return matplotlib figures of the same results (for notebooks), and :func:`save_figure`
  saves one as PNG, SVG or PDF; :func:`circuit_overlap` gives the shared edges and Jaccard
  indices of the algorithms' top-k circuits.
* :func:`draw_seq_graph` draws the circuit of a live :class:`PatchableModel` from its
  prune scores (usable as ACDC's ``draw_seq_graph_ref``).

Circuits are drawn bottom to top: ``Resid Start`` in the lowest row, then per layer its
attention heads and its MLP, ``Resid End`` in the top row. Edges enter a head at its
``Q``/``K``/``V`` port; blue edges have positive scores, red negative ones, and width
grows with ``|score|``. Edges at token positions are drawn in one column per position.

HTML and the layout need only the standard library; the PNG functions import matplotlib
when called.

Modules: :mod:`~edgewise.visualize.nodes` (what a node is: from the model's graph
fields, or from a name read back from ``results.json``), :mod:`~edgewise.visualize.layout`
(where nodes and edges go), :mod:`~edgewise.visualize.svg` (the circuit and charts as
SVG), :mod:`~edgewise.visualize.report` (the HTML page; its CSS and JS in
:mod:`~edgewise.visualize.assets`), :mod:`~edgewise.visualize.figure` (matplotlib
figures and PNGs), :mod:`~edgewise.visualize.plots` (figures of a results dict),
:mod:`~edgewise.visualize.overlap` (agreement of circuits), :mod:`~edgewise.visualize.live` (a live model's circuit) and
:mod:`~edgewise.visualize.style` (colours and number formats).
"""

from edgewise.visualize.figure import draw_circuit_png
from edgewise.visualize.live import draw_seq_graph
from edgewise.visualize.overlap import Overlap, circuit_overlap
from edgewise.visualize.plots import (
    circuit_graph_figure,
    faithfulness_figure,
    overlap_figure,
    save_figure,
)
from edgewise.visualize.report import write_report

__all__ = ["write_report", "draw_circuit_png", "draw_seq_graph", "faithfulness_figure",
           "circuit_graph_figure", "overlap_figure", "save_figure", "circuit_overlap",
           "Overlap"]
