"""Example task modules and node configs for a vox_flow mesh (not installed with the wheel).

A node loads the task modules named in ``VOX_FLOW_TASK_MODULES``; ``vox-flow dev`` runs the
sample shipped in the wheel, ``vox_flow.examples.sample``.
"""
