"""Storage: one interface over object storage (local folders and S3), reachability checks, digests.

Importing the package registers both backends, so ``storage_for`` serves every scheme kdflow knows.
"""

from kdflow.storage import local, s3  # noqa: F401  (registration side effects: file:// and s3://)
from kdflow.storage.base import ObjectInfo, Storage, join, list_schemes, local_path, register_scheme, storage_for

__all__ = ["ObjectInfo", "Storage", "join", "list_schemes", "local_path", "register_scheme", "storage_for"]
