from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def preprocess(data_uri: str, config: str, dataset: dsl.Output[dsl.Dataset]) -> str:
    """Ingest an image folder into verified shards plus a manifest; returns the dataset fingerprint."""
    from kdflow.steps.preprocess import run_preprocess

    result = run_preprocess(data_uri, config, dataset.path)
    dataset.metadata.update({"fingerprint": result["fingerprint"], "counts": result["counts"],
                             "dropped": result["dropped"], "duplicates_removed": result["duplicates_removed"]})
    return result["fingerprint"]
