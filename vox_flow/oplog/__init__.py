"""The op-log: task and node history (log.py), fed from Celery events (ingest.py)."""
