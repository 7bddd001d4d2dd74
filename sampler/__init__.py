"""Environments, forking, the tree sampler, scoring and replay of recorded trajectories."""
