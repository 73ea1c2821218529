"""Preemption of the teacher-inference step: killed (SIGKILL) at several points and started again, it
resumes from the view shard files already written and ends with exactly the cache entry (every file,
byte for byte) of a run that was never interrupted.

Real processes: each attempt is ``run_teacher_inference`` in a fresh interpreter (``attempt`` below),
on a dataset of a dozen shards of 6 images (the plain view of every shard, two augmented views of
train's: two dozen view shards). A kill point is reached by observing the attempt, never by sleeping: at it the attempt
marks a file and waits to be killed. The points: after its k-th view shard file is written, when it
starts the commit (every shard written), and after it committed one view manifest (not the entry).
Each attempt notes the view shard files it writes, so the test checks that no restart relabels a
shard that a killed attempt had finished, and that a torn file is not trusted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from kdflow.config import Config
from kdflow.data.preprocess import preprocess
from kdflow.data.shards import DatasetManifest
from kdflow.softlabels.ref import SoftLabelRef
from kdflow.softlabels.shardfile import parse_view_file
from tests.helpers import hang_guard

ROOT = Path(__file__).resolve().parents[2]
HANG_S = 240  # a guard against a hung attempt (hang_guard scales it), not a speed limit


def attempt(args_json: str) -> None:
    """One attempt of the step (in a subprocess), instrumented: notes each view shard file it writes
    and each label_part's counts to ``log``; at the kill point, touches ``marker`` and waits."""
    args = json.loads(args_json)
    from kdflow.softlabels.cache import SoftLabelCache
    from kdflow.steps.teacher import run_teacher_inference
    from kdflow.storage.local import LocalStorage

    kill, log = args["kill"], open(args["log"], "a")
    counts = {"kdsl": 0, "created": 0}

    def note(**event) -> None:
        log.write(json.dumps({"run": args["run"], **event}) + "\n")
        log.flush()

    def hold() -> None:
        Path(args["marker"]).touch()
        while True:
            time.sleep(1)  # until the SIGKILL

    real_write, real_create = LocalStorage.write_bytes, LocalStorage.write_if_absent
    real_label, real_commit = SoftLabelCache.label_part, SoftLabelCache.commit

    def write_bytes(self, uri, data):
        real_write(self, uri, data)
        if uri.endswith(".kdsl"):
            counts["kdsl"] += 1
            note(event="write", file=uri)
            if kill == ["shards", counts["kdsl"]]:
                hold()  # the writer thread stops here: nothing more is written

    def write_if_absent(self, uri, data):
        created = real_create(self, uri, data)
        if created and "/manifests/" in uri:
            counts["created"] += 1
            if kill == ["manifests", counts["created"]]:
                hold()
        return created

    def label_part(self, *a, **k):
        stats = real_label(self, *a, **k)
        note(event="label_part", **stats)
        return stats

    def commit(self, *a, **k):
        if kill == ["commit"]:
            hold()
        return real_commit(self, *a, **k)

    LocalStorage.write_bytes, LocalStorage.write_if_absent = write_bytes, write_if_absent
    SoftLabelCache.label_part, SoftLabelCache.commit = label_part, commit
    ref = run_teacher_inference(*args["call"])
    note(event="done", hit=ref.cache_hit)


class Runner:
    def __init__(self, tmp: Path, call: list[str]):
        self.tmp, self.call, self.log = tmp, call, tmp / "events.jsonl"
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

    def start(self, run: str, kill: list | None, cache: str) -> tuple[subprocess.Popen, Path]:
        marker = self.tmp / f"{run}.killpoint"
        args = {"run": run, "kill": kill, "log": str(self.log), "marker": str(marker),
                "call": [self.call[0], self.call[1], self.call[2], cache, str(self.tmp / f"out-{run}")]}
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from tests.faults.test_preemption_teacher import attempt; "
                                   "attempt(sys.argv[1])", json.dumps(args)],
            cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=(self.tmp / f"{run}.log").open("w"))
        return proc, marker

    def killed_at(self, run: str, kill: list, cache: str) -> None:
        """Start an attempt, wait for its kill point, SIGKILL it."""
        proc, marker = self.start(run, kill, cache)
        deadline = time.monotonic() + hang_guard(HANG_S)
        try:
            while not marker.exists():
                assert proc.poll() is None, f"{run} ended before its kill point:\n" + \
                    (self.tmp / f"{run}.log").read_text()[-4000:]
                assert time.monotonic() < deadline, f"{run} never reached its kill point"
                time.sleep(0.02)
        finally:
            proc.kill()  # SIGKILL
            proc.wait()

    def finish(self, proc: subprocess.Popen, run: str) -> None:
        try:
            assert proc.wait(timeout=hang_guard(HANG_S)) == 0, (self.tmp / f"{run}.log").read_text()[-4000:]
        finally:
            proc.kill()

    def events(self, run: str, event: str) -> list[dict]:
        return [e for e in map(json.loads, self.log.read_text().splitlines())
                if e["run"] == run and e["event"] == event]


def _tree(root: Path) -> dict[str, bytes]:
    """Every file of a cache (temp files aside), by path, with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def test_teacher_step_killed_anywhere_resumes_and_ends_with_the_uninterrupted_entry(
        tmp_path, tiny_data, tiny_teacher, tiny_config_yaml):
    config = tiny_config_yaml.replace("data: {", "data: {shard_size: 6, ")
    data = str(preprocess(str(tiny_data), str(tmp_path / "ds"), Config.from_yaml(config).data).root)
    dataset = DatasetManifest.open(data)
    units = {split: len(info.shards) for split, info in dataset.splits.items()}
    total = sum(units.values()) + 2 * units["train"]  # the plain view of every shard, 2 augmented of train's
    assert units["train"] >= 4 and total >= 15
    runner = Runner(tmp_path, [data, tiny_teacher, config])
    cache, clean = tmp_path / "cache", tmp_path / "clean"
    baseline, _ = runner.start("baseline", None, str(clean))  # uninterrupted, beside the killed ones

    runner.killed_at("a", ["shards", 3], str(cache))  # after its 3rd view shard file
    written = [Path(e["file"]) for e in runner.events("a", "write")]
    assert len(written) == 3 and not list(cache.rglob("manifests/*"))
    # A file torn by a store that is not atomic (never by kdflow's): its name claims a digest its
    # bytes do not have, so it is not trusted; the restart labels that shard again.
    torn = written[0]
    torn.write_bytes(torn.read_bytes()[:-7])

    runner.killed_at("b", ["shards", 4], str(cache))
    assert len(runner.events("b", "write")) == 4
    runner.killed_at("c", ["commit"], str(cache))  # every shard written, nothing committed
    [stats_c] = runner.events("c", "label_part")
    assert stats_c == {"run": "c", "event": "label_part", "shards_labelled": total - 6, "shards_kept": 6}
    runner.killed_at("d", ["manifests", 1], str(cache))  # one view manifest committed, not the entry
    [stats_d] = runner.events("d", "label_part")
    assert stats_d["shards_labelled"] == 0 and stats_d["shards_kept"] == total
    assert len(list(cache.rglob("manifests/*.json"))) == 1 and not list(cache.rglob("entries/*"))

    last, _ = runner.start("e", None, str(cache))
    runner.finish(last, "e")
    runner.finish(baseline, "baseline")
    assert [e["shards_labelled"] for e in runner.events("e", "label_part")] == [0]
    # Each shard was labelled once, except the torn one (twice): no restart redid finished work.
    writes = [Path(e["file"]).name for run in "abcde" for e in runner.events(run, "write")]
    assert len(writes) == total + 1 and len(set(writes)) == total
    refs = [SoftLabelRef.load(str(tmp_path / f"out-{run}")) for run in ("e", "baseline")]
    assert refs[0].cache_key == refs[1].cache_key and not refs[0].cache_hit
    # The same entry as the uninterrupted run: every manifest and shard file, byte for byte.
    resumed, uninterrupted = _tree(cache), _tree(clean)
    assert resumed == uninterrupted
    assert sum(parse_view_file(Path(p).name) is not None for p in resumed) == total

