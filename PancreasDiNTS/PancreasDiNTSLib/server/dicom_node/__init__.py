"""The DICOM node of ``pancreas-dints serve`` (docs/PACS.md): a PACS sends a study (C-STORE or STOW-RS) or the
node pulls one (DICOMweb); the study is spooled durably, its series chosen by documented rules, the chosen series
segmented as a server job, and the DICOM results sent back (C-STORE or STOW-RS) with retries that survive restarts.

``config`` (the node's settings and their file), ``spool`` (durable instances and the node's SQLite records),
``scp`` (the pynetdicom Storage SCP), ``stow`` (STOW-RS in, pull, and the node's HTTP listing), ``selection``
(the series rules and their recorded decisions), ``sender`` (C-STORE SCU / STOW-RS out), ``node`` (the loop that
moves each study from received to done).
"""
