"""trajlake's front door: the `trajlake` command line, the only module allowed to import every part."""
