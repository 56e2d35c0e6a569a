"""The signed audit log: append, canonical bodies, Merkle trees, keys, verify, export."""
