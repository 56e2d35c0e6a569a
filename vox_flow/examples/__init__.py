"""Example task modules shipped in the wheel (the sample `vox-flow dev` runs)."""
