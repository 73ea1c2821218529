"""kdflow: knowledge-distillation pipelines for Kubeflow.

The core library. It never imports ``kfp``: components/ and pipelines/ adapt it to Kubeflow.
"""

__version__ = "0.1.0"
