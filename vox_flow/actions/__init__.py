"""Every audited operator action: the perform/outbox seam (perform.py), the one registry of
effects (registry.py), and the actions of each area (deadletters.py, schedules.py)."""
