"""What the tables compare: the metrics a study file may name for the loss table."""

from __future__ import annotations

# What the loss table may report (``[ablation] loss_metric``): the last epoch's validation
# accuracy (the default) or the best epoch's, as seed 003 reported it.
LOSS_METRICS = ("final_val_acc", "max_val_acc")
DEFAULT_LOSS_METRIC = LOSS_METRICS[0]

__all__ = ["DEFAULT_LOSS_METRIC", "LOSS_METRICS"]
