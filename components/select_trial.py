from typing import List, NamedTuple

from kfp import dsl

from kdflow.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def select_trial(
    models: dsl.Input[List[dsl.Model]],
    run_ids: List[str],
    sweep: List[dict],
    trials: str,
    tracking_uri: str,
    best: dsl.Output[dsl.Model],
) -> NamedTuple("Winner", run_id=str, model_uri=str, config=str):
    """Pick the trial with the best final validation metric; its model folder becomes ``best``.

    ``models`` and ``run_ids`` are the trials' collected outputs (matched by run id, not by order);
    ``sweep`` is what start-sweep returned (it names the parent run).
    """
    from collections import namedtuple

    from kdflow.steps.sweep import select_best

    result = select_best(sweep[0]["parent_run_id"], list(run_ids), trials, tracking_uri,
                         [(m.path, m.metadata.get("run_id", "")) for m in models], best.path)
    best.metadata.update({"run_id": result["run_id"], "model_uri": result["model_uri"], "trial": result["name"],
                          result["metric"]: result["value"]})
    return namedtuple("Winner", ["run_id", "model_uri", "config"])(result["run_id"], result["model_uri"],
                                                                  result["config"])
