"""Step 1: image folder -> shards + manifest."""

from __future__ import annotations

from kdflow.config import Config
from kdflow.logs import setup_logging
from kdflow.data.preprocess import preprocess


def run_preprocess(data_uri: str, config_yaml: str, out_dir: str, expected_source: str = "") -> dict:
    """``expected_source``: the raw folder's fingerprint from the start of the run (checked)."""
    setup_logging()
    cfg = Config.from_yaml(config_yaml)
    manifest = preprocess(data_uri, out_dir, cfg.data, expected_source)
    return {
        "fingerprint": manifest.fingerprint,
        "num_classes": manifest.num_classes,
        "counts": {s: manifest.count(s) for s in manifest.data["splits"]},
        "dropped": manifest.data["report"]["dropped"],
        "duplicates_removed": manifest.data["report"]["duplicates_removed"],
        "groups": manifest.data["report"]["groups"],  # split units: samples, or near-duplicate groups
    }
