"""NIfTI conversion: volumes from slices, geometry, sidecars and the NIfTI writer."""
