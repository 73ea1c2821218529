"""Evaluation of a student: accuracy with confidence intervals, calibration, cost, privacy, exports.

One concept per module: ``accuracy`` (top-k, per class, agreement), ``stats`` (bootstrap
intervals), ``calibration`` (ECE, reliability bins), ``privacy`` (membership inference), ``cost``
(size and CPU speed), ``plots`` (figures), ``record`` (per-sample predictions kept for the champion
comparison), ``report`` (the HTML report).
"""

from kdflow.evaluation.accuracy import accuracy, per_class_accuracy

__all__ = ["accuracy", "per_class_accuracy"]
