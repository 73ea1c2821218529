"""Container images of the components. Tags follow the package version: an image holds exactly the
kdflow the compiled spec was made from. The repository prefix is a placeholder until the images
issue publishes them; ``kdflow compile --image-prefix`` retargets a spec without code changes."""

from kdflow import __version__

IMAGE_PREFIX = "kdflow"
CPU_IMAGE = f"{IMAGE_PREFIX}/kdflow-cpu:{__version__}"
GPU_IMAGE = f"{IMAGE_PREFIX}/kdflow-gpu:{__version__}"
