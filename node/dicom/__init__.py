"""Reading DICOM: the one dataset walker, Part 10 meta, status codes, charsets, validators, shared facts."""
