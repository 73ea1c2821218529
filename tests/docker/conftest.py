"""The container images, checked before any test uses them: a Docker engine answers, both images
exist, and each holds exactly this checkout's kdflow (a stale image would test old code).

Where that fails the tests skip with the reason and the command that fixes it; with CI=true they fail
instead, because CI is what proves the containers work."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.helpers import ROOT

# The installed package kdflow (with kdflow.components and kdflow.pipelines) from its source folders,
# as pyproject.toml's package-dir maps them.
SOURCE_DIRS = {"": "kdflow", "components/": "components", "pipelines/": "pipelines"}

# Run inside an image: the same digest over the installed package, without importing it.
IMAGE_DIGEST_SCRIPT = r"""
import hashlib, importlib.util, os
root = importlib.util.find_spec("kdflow").submodule_search_locations[0]
rows = []
for d, dirs, files in os.walk(root):
    dirs[:] = [x for x in dirs if x != "__pycache__"]
    for f in files:
        if f.endswith((".py", ".yaml")):
            p = os.path.join(d, f)
            rows.append(os.path.relpath(p, root) + " " + hashlib.sha256(open(p, "rb").read()).hexdigest())
print(hashlib.sha256("\n".join(sorted(rows)).encode()).hexdigest())
"""


def source_digest() -> str:
    rows = []
    for prefix, folder in SOURCE_DIRS.items():
        base = Path(ROOT) / folder
        for path in base.rglob("*"):
            if path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts:
                rel = prefix + path.relative_to(base).as_posix()
                rows.append(f"{rel} {hashlib.sha256(path.read_bytes()).hexdigest()}")
    return hashlib.sha256("\n".join(sorted(rows)).encode()).hexdigest()


def unavailable(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the container tests must run; .ci/run starts the engine and "
                    "builds the images first)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_client():
    try:
        import docker

        client = docker.from_env()
        client.ping()
    except Exception as exc:  # no SDK, no socket, no permission: all mean "no engine here"
        unavailable(f"no Docker engine answers ({type(exc).__name__}: {exc}); start one (make docker-engine)")
    yield client
    client.close()


@pytest.fixture(scope="session")
def images(docker_client) -> dict[str, str]:
    """{"cpu": CPU_IMAGE, "gpu": GPU_IMAGE}, present and built from this checkout."""
    import docker

    from kdflow.components.images import CPU_IMAGE, GPU_IMAGE

    wanted = {"cpu": CPU_IMAGE, "gpu": GPU_IMAGE}
    missing = []
    for ref in wanted.values():
        try:
            docker_client.images.get(ref)
        except docker.errors.ImageNotFound:
            missing.append(ref)
    if missing:
        unavailable(f"image(s) {', '.join(missing)} not built: run make images (or make test-docker)")
    expected = source_digest()
    for ref in wanted.values():
        out = docker_client.containers.run(ref, ["python3", "-c", IMAGE_DIGEST_SCRIPT], remove=True)
        if out.decode().strip() != expected:
            unavailable(f"{ref} holds another kdflow than this checkout: rebuild it (make images)")
    return wanted
