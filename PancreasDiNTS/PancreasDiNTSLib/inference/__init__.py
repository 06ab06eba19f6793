"""The case pipeline: segmenter, fast path, inversion, ROI, and the batch driver."""
