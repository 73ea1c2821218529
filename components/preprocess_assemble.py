from kfp import dsl

from kdflow.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def preprocess_assemble(data_uri: str, config: str, parts: int, work: str, dataset: dsl.Output[dsl.Dataset],
                        source_fingerprint: str = "") -> str:
    """After every preprocess_part: de-duplicate, group and split from the spools' metadata, write the
    shards and the manifest (the same dataset as the one-task preprocess); returns the fingerprint.

    ``parts`` and ``work``: as given to preprocess_part. ``source_fingerprint`` keys KFP's cache and is
    checked against the folder read."""
    from kdflow.steps.preprocess import run_preprocess_assemble

    result = run_preprocess_assemble(data_uri, config, work, dataset.path, parts, source_fingerprint)
    dataset.metadata["source_fingerprint"] = source_fingerprint
    dataset.metadata.update({"fingerprint": result["fingerprint"], "counts": result["counts"],
                             "dropped": result["dropped"], "duplicates_removed": result["duplicates_removed"],
                             "groups": result["groups"]})
    return result["fingerprint"]
