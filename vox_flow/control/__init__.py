"""The control service (`vox-flow control`): replicas under a leader lock, and their duties."""
