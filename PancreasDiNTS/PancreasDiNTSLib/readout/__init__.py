"""Clinical read-out of a segmentation (numpy/scipy only): measurements, location, confidence, case page."""
