"""Container images of the components (images/: `make images` builds them, `make push REGISTRY=...`
publishes them). Tags follow the package version, never ``latest``: an image holds exactly the kdflow
the compiled spec was made from. ``IMAGE_PREFIX`` is the local name; ``kdflow compile --image-prefix
REGISTRY`` retargets a spec to where `make push REGISTRY=...` put the same images. The Makefile reads
``IMAGE_PREFIX`` from this file: keep it a plain string literal."""

from kdflow import __version__

IMAGE_PREFIX = "kdflow"
CPU_IMAGE = f"{IMAGE_PREFIX}/kdflow-cpu:{__version__}"
GPU_IMAGE = f"{IMAGE_PREFIX}/kdflow-gpu:{__version__}"
