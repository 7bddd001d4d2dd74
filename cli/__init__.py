"""The ``branchpoint`` command line and the application wiring."""
