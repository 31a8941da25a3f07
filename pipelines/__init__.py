"""Pipelines over run stores: one task per checkpoint, each reading its weights from the store
and writing its own region, run synchronously, on a ``distributed.LocalCluster`` or on any
scheduler. Already-done checkpoints are skipped, so an interrupted pipeline resumes."""
