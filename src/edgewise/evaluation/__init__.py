"""Evaluating scores: running circuits of chosen sizes (``circuits``), the pipeline from
scores to faithfulness measurements (``pipeline``), and bootstrap intervals of scores and
faithfulness over resampled prompts (``bootstrap``). The metrics themselves live in
:mod:`edgewise.metrics`."""
