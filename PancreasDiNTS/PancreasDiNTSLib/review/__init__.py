"""Review of a batch: which cases a `segment` run wrote, their CT, and the review record of each (torch-free).

``batch``: the cases of an output folder, their status and key numbers, the CT each came from (identity
checked). ``record``: saving a review (accepted, rejected, or corrected labels): ``labels_corrected.nii.gz`` on
the exact grid of ``labels.nii.gz``, the read-out recomputed on it, ``review.json`` (voxels added and removed,
Dice), the case folder's ownership manifest, and ``OUTDIR/review.csv``. The browser page
(``PancreasDiNTSReview``) and the Slicer module reach it through the scene layer; no slicer/vtk/trame here.
"""
