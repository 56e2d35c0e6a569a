"""The control service's parts: the signed audit log, its actions seam, and the op-log."""
