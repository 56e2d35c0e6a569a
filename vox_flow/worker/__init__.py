"""The worker side: how typed tasks run, leases, lost runs, the supervisor of `vox-flow worker`."""
