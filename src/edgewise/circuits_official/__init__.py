"""Official (hand-identified) circuits of known tasks, as sets of edges.

Modules:
    tracr: the tracr ``reverse`` and ``xproportion`` circuits
        (:func:`edgewise.circuits_official.tracr.tracr_reverse_official_edges`,
        :func:`edgewise.circuits_official.tracr.tracr_xproportion_official_edges`).
    toy_ioi: the documented circuit of the shipped toy IOI model
        (:func:`edgewise.circuits_official.toy_ioi.toy_ioi_official_edges`, see
        ``docs/toy_ioi.md``).
"""
