"""Broker helpers: a private Redis-compatible server process and its binaries."""
