"""Data: ingest image folders, de-duplicate, split, shard; read shards back as tensors."""
