"""Official (hand-identified) circuits of known tasks, as sets of edges.

Modules:
    tracr: the tracr ``reverse`` and ``xproportion`` circuits
        (:func:`edgewise.circuits_official.tracr.tracr_reverse_official_edges`,
        :func:`edgewise.circuits_official.tracr.tracr_xproportion_official_edges`).
    toy_ioi: the documented circuit of the shipped toy IOI model
        (:func:`edgewise.circuits_official.toy_ioi.toy_ioi_official_edges`, see
        ``docs/toy_ioi.md``).
    papers: published circuits of real models, as data: IOI and greater-than on GPT-2
        small, docstring on attn-only-4l
        (:func:`edgewise.circuits_official.papers.ioi_official_edges`,
        :func:`~edgewise.circuits_official.papers.greaterthan_official_edges`,
        :func:`~edgewise.circuits_official.papers.docstring_official_edges`).
"""
