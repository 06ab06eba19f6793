"""Reading images and DICOM series, writing results."""
