"""Evaluating scores: running circuits of chosen sizes (``circuits``) and the pipeline
from scores to faithfulness measurements (``pipeline``). The metrics themselves live in
:mod:`edgewise.metrics`."""
