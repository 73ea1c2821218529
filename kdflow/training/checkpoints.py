"""Training checkpoints: where a step's checkpoints live, what they must belong to, how they are read.

A checkpoint (``last.pt``) holds what a preempted run needs to go on to the same weights: model,
optimizer, scheduler, RNG, the position in the data order, the kind of batches, and an **identity**:

- ``run``: what the caller says the run is (the distillation step: its pipeline run, inputs, config and
  world size, ``kdflow.steps.distill``), empty for a bare ``fit``;
- ``structure``: what ``fit`` itself can see (epochs, steps per epoch, batch size, processes, the
  optimisation settings), so that a checkpoint from another schedule is never continued.

``fit`` resumes only from a checkpoint whose identity equals the one it expects, and refuses any other
(``CheckpointError``, naming the fields that differ), so an arbitrary ``last.pt`` found at a location
is never trained on. A file that cannot be read is refused too, naming it and the fix (delete it):
writes are atomic (``storage.write_bytes``: temp file + rename locally, one PUT on S3), so a kill
during a write leaves the previous checkpoint, and a torn file means storage lost data.

Determinism: on the CPU a resumed run ends with bit-identical weights (torch.equal) to a run that was
never interrupted. On CUDA it does not: cuDNN picks kernels per run and some (atomics-based
reductions) are not deterministic, so expect the difference of two uninterrupted runs (last-bit noise
that grows with the steps), not equality. The stated tolerance there: the resumed student's test
accuracy within 0.5 percentage points of an uninterrupted run with the same seed (not measured yet:
no GPU has been lent to this work; docs/reliability.md).
"""

from __future__ import annotations

import io
import logging
from typing import Any

import torch

from kdflow.storage.digest import digest_of
from kdflow.util.errors import KdflowError
from kdflow.storage import join, storage_for

log = logging.getLogger(__name__)

CHECKPOINT = "last.pt"
ROOT = "checkpoints"  # under the soft-label cache root: <cache_uri>/checkpoints/<run key>/
# The TrainConfig fields that decide the weights a run ends with (device, compile, resident, checkpoint
# interval and channels_last change how, not what; processes counts through the world size).
_TRAINING_FIELDS = ("epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "warmup_epochs",
                    "seed", "sync_batchnorm")


class CheckpointError(KdflowError):
    """A checkpoint cannot be read, or belongs to another run."""


def location(cache_uri: str, run_identity: dict[str, Any]) -> str:
    """``<cache_uri>/checkpoints/<digest of the identity>``: the same on every retry of the same run
    (same pipeline run, inputs, config), another one as soon as any of them differs.

    The cache root is the object storage every task of a pipeline shares, so a retried pod (a new
    output folder, maybe another node) finds it. Checkpoints stay there after the run (a retry after
    success then trains nothing); a lifecycle rule on the ``checkpoints/`` prefix removes them."""
    return join(cache_uri, ROOT, digest_of(run_identity))


def structure(cfg, steps_per_epoch: int, batch_rows: int, world: int) -> dict[str, Any]:
    """The part of the identity ``fit`` checks on its own (``cfg``: a TrainConfig; ``batch_rows``: the
    batch source's batch size)."""
    return {**{k: getattr(cfg, k) for k in _TRAINING_FIELDS}, "steps_per_epoch": steps_per_epoch,
            "batch_rows": batch_rows, "world": world}


def read(checkpoint_dir: str | None, device: torch.device | str = "cpu") -> dict[str, Any] | None:
    """The checkpoint under ``checkpoint_dir`` (None: none there, or no folder given).
    Raises ``CheckpointError`` when the file is there but cannot be read as a checkpoint."""
    if not checkpoint_dir:
        return None
    uri = join(checkpoint_dir, CHECKPOINT)
    store = storage_for(uri)
    if not store.exists(uri):
        return None
    data = store.read_bytes(uri)  # storage that fails now (StorageError, OSError) is not a broken checkpoint
    try:
        state = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
        if not isinstance(state, dict) or not {"model", "optimizer", "scheduler", "rng", "epoch"} <= set(state):
            raise ValueError("not a kdflow training checkpoint")
    except CheckpointError:
        raise
    except Exception as exc:  # torn zip, garbage bytes, a foreign pickle: the loader's own exception types vary
        raise CheckpointError(f"the training checkpoint {uri} cannot be read ({type(exc).__name__}: {exc})",
                              f"delete {uri} to train this step from the start") from exc
    return state


def differences(expected: dict[str, Any], found: dict[str, Any] | None, prefix: str = "") -> list[str]:
    """``field (checkpoint: x, this run: y)`` for every field that differs, nested dicts flattened."""
    found = found if isinstance(found, dict) else {}
    out = []
    for key in sorted(set(expected) | set(found)):
        mine, theirs = expected.get(key), found.get(key, "<missing>")
        if isinstance(mine, dict) and isinstance(theirs, dict):
            out += differences(mine, theirs, f"{prefix}{key}.")
        elif mine != theirs:
            out.append(f"{prefix}{key} (checkpoint: {theirs}, this run: {mine})")
    return out


def check(checkpoint_dir: str, state: dict[str, Any], expected: dict[str, Any]) -> None:
    """Refuse ``state`` (read from ``checkpoint_dir``) unless its identity is ``expected``: one from
    another config, inputs or pipeline run (a hash collision, a manual copy) must not be continued."""
    found = state.get("identity")
    if found is None:
        diff = ["identity (the checkpoint records none: it was written by an older kdflow)"]
    else:
        # Only what this caller knows: the distillation step checks the run part before fit builds
        # its optimizer, fit checks both.
        diff = differences(expected, {k: found.get(k) for k in expected})
    if diff:
        uri = join(checkpoint_dir, CHECKPOINT)
        raise CheckpointError(f"the training checkpoint {uri} belongs to another run: " + "; ".join(diff),
                              f"delete {uri} to train from the start, or resume with the run's own inputs "
                              "and config")


def resident(checkpoint_dir: str | None) -> bool | None:
    """Whether the run checkpointed under ``checkpoint_dir`` trained on a resident split (None: no
    checkpoint, or one from before this was recorded). Resident and streamed batches visit the rows
    in different orders, so a resumed run must take the kind it started with, whatever memory the
    device it resumes on has free."""
    state = read(checkpoint_dir)
    return None if state is None else state.get("resident")


def save(uri: str, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    storage_for(uri).write_bytes(uri, buf.getvalue())  # atomic: a kill leaves the previous file whole
