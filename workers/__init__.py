"""Task modules a vox_flow node loads (``VOX_FLOW_TASK_MODULES``, default ``workers.sample``)."""
