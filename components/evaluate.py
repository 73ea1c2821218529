from kfp import dsl

from kdflow.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def evaluate(
    dataset: dsl.Input[dsl.Dataset],
    soft_labels: dsl.Input[dsl.Artifact],
    model: dsl.Input[dsl.Model],
    config: str,
    tracking_uri: str,
    run_id: str,
    metrics: dsl.Output[dsl.Metrics],
    classification: dsl.Output[dsl.ClassificationMetrics],
    report: dsl.Output[dsl.HTML],
) -> bool:
    """Accuracy with intervals, calibration, cost, membership inference and exports on the test split;
    returns whether the gate's absolute checks passed (the student may be registered).

    The verdict and every check go to the MLflow run; the KFP UI gets the headline metrics, the
    confusion matrix and the HTML report. (A single output: kfp.local resolves dsl.If conditions
    only on a task's default output.)
    """
    from kdflow.steps.evaluate import run_evaluation

    result = run_evaluation(dataset.path, soft_labels.path, model.path, config, tracking_uri, run_id)
    for name, value in result["metrics"].items():
        metrics.log_metric(name, value)
    if len(result["class_names"]) <= 100:  # beyond, C x C cells swamp the KFP UI (the PNG is in MLflow)
        classification.log_confusion_matrix(result["class_names"], result["accuracy"]["confusion_matrix"])
    with open(report.path, "w") as f:
        f.write(result["report_html"])
    metrics.metadata.update({"gate": result["gate"], "promotable": result["promotable"]})
    return result["passed"]
