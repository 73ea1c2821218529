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
) -> bool:
    """Test accuracy of student and teacher, agreement, cost; returns the gate's decision.

    The gate's reasons go to the MLflow run (tag kdflow.gate) and to the metrics artifact.
    (A single output: kfp.local resolves dsl.If conditions only on a task's default output.)
    """
    from kdflow.steps.evaluate import run_evaluation

    report = run_evaluation(dataset.path, soft_labels.path, model.path, config, tracking_uri, run_id)
    for name in ("student_accuracy", "teacher_accuracy", "agreement", "student_parameters"):
        metrics.log_metric(name, float(report[name]))
    metrics.metadata["gate"] = report["gate"]
    return report["passed"]
