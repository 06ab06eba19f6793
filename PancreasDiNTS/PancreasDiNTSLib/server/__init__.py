"""``pancreas-dints serve``: segmentation on a shared GPU server (HTTP API, job store, worker processes)."""
