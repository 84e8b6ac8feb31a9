"""Tools shared by tests/ and bench/: generators of realistic DICOM studies and launchers of real peers
(DCMTK, Orthanc, dcm2niix, the node as a process). Never imported by node/."""
