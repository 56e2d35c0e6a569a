"""vox_flow: typed Celery workflows with durable retries, dead letters and cron schedules.

The app is ``vox_flow.app.app``; typed tasks are declared with ``vox_flow.tasks.typed_task``
and enqueued with ``vox_flow.submit.submit`` / ``submit_many``.
"""

__version__ = "0.1.0"
