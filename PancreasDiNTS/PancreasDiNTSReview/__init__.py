"""The browser review page of a batch: ``pancreas-dints review OUTDIR`` (trame-slicer, one process per reviewer).

``session``: the batch, the case on screen and the segment editor (loads and saves through the scene layer
``PancreasDiNTSSceneLib.review``); ``page``: the web page (trame, vuetify) and its token check; ``__main__``:
``python -m PancreasDiNTSReview OUTDIR`` (what the CLI starts). A front end: the engine never imports it.
"""
