"""Step 1: image folder -> shards + manifest; on one machine, or fanned out as decode parts + assemble."""

from __future__ import annotations

from kdflow.config import Config
from kdflow.data.preprocess import assemble, decode_part, plan_parts, preprocess
from kdflow.data.shards import DatasetManifest
from kdflow.steps.preamble import begin_step
from kdflow.storage import join


def _summary(manifest: DatasetManifest) -> dict:
    return {
        "fingerprint": manifest.fingerprint,
        "num_classes": manifest.num_classes,
        "counts": {s: info.count for s, info in manifest.splits.items()},
        "dropped": manifest.report.dropped,
        "duplicates_removed": manifest.report.duplicates_removed,
        "groups": manifest.report.groups,  # split units: samples, or near-duplicate groups
    }


def run_preprocess(data_uri: str, config_yaml: str, out_dir: str, expected_source: str = "") -> dict:
    """``expected_source``: the raw folder's fingerprint from the start of the run (checked)."""
    cfg = begin_step(config_yaml, heavy=True)
    return _summary(preprocess(data_uri, out_dir, cfg.data, expected_source))


def run_plan_preprocess(data_uri: str, config_yaml: str) -> list[int]:
    """The part indices of a fanned-out preprocess (one decode task each): ``data.files_per_part``
    files per part."""
    cfg = begin_step(config_yaml, heavy=True)
    return list(range(plan_parts(data_uri, cfg.data.files_per_part)))


def _spools(work_dir: str, expected_source: str) -> str:
    """Where the parts' spools go: below ``work_dir``, in a folder of the raw folder's fingerprint,
    so that two versions of a data folder never share spools."""
    return join(work_dir, "preprocess-spools", expected_source[:16] or "unkeyed")


def _parts(data_uri: str, cfg: Config, parts: int) -> int:
    return int(parts) if int(parts) > 0 else plan_parts(data_uri, cfg.data.files_per_part)


def run_preprocess_part(data_uri: str, config_yaml: str, work_dir: str, part: int, parts: int,
                        expected_source: str = "") -> str:
    """Decode part ``part`` of ``parts`` (0: as many as ``run_plan_preprocess`` plans) into a spool
    below ``work_dir``, a folder shared by the parts and the assemble task (object storage on a
    cluster); returns the spool's URI, and keeps a complete spool that is already there (a retried
    task is cheap). ``expected_source`` (the raw folder's fingerprint) names the spool folder; it is
    checked by the assemble task, not here (that would hash a local folder once per part)."""
    cfg = begin_step(config_yaml, heavy=True)
    return decode_part(data_uri, _spools(work_dir, expected_source), cfg.data, int(part),
                       _parts(data_uri, cfg, parts))


def run_preprocess_assemble(data_uri: str, config_yaml: str, work_dir: str, out_dir: str, parts: int,
                            expected_source: str = "") -> dict:
    """Write the dataset under ``out_dir`` from the spools the parts left below ``work_dir`` (``parts``
    as given to them); the same dict as ``run_preprocess``. The spools stay (a retried assemble needs
    them): give the work prefix a lifecycle rule, they hold the decoded images."""
    cfg = begin_step(config_yaml, heavy=True)
    return _summary(assemble(data_uri, _spools(work_dir, expected_source), out_dir, cfg.data,
                             _parts(data_uri, cfg, parts), expected_source))
