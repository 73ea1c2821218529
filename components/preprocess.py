from kfp import dsl

from kdflow.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def preprocess(data_uri: str, config: str, dataset: dsl.Output[dsl.Dataset], source_fingerprint: str = "") -> str:
    """Ingest an image folder into verified shards plus a manifest; returns the dataset fingerprint.

    ``source_fingerprint`` (the raw folder's content digest) keys KFP's cache; the folder read is
    checked against it."""
    from kdflow.steps.preprocess import run_preprocess

    result = run_preprocess(data_uri, config, dataset.path, source_fingerprint)
    dataset.metadata["source_fingerprint"] = source_fingerprint
    dataset.metadata.update({"fingerprint": result["fingerprint"], "counts": result["counts"],
                             "dropped": result["dropped"], "duplicates_removed": result["duplicates_removed"],
                             "groups": result["groups"]})
    return result["fingerprint"]
