"""The teacher's soft labels: compact codec, content-keyed cache, and the inference that fills it."""
