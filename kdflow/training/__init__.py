"""Training: batches from in-memory shards, the loop, schedules and checkpoints."""
