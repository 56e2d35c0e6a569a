"""Cron schedules that fire exactly once across any number of scheduler replicas.

Definitions are data files in ``schedules/`` (loader.py); fire times follow a fixed DST rule
(cron.py); missed-run and overlap policies are pure functions (policy.py); state lives in
Redis behind fenced scripts (store.py, leader.py); ``Timetable`` (timetable.py) is the loop
body that ``VoxScheduler`` (scheduler.py) runs inside ``celery beat``; operations.py holds
list and reload; the audited pause / resume / trigger are in ``vox_flow.actions.schedules``.
See docs/schedules.md.
"""
