"""The Optuna side of hpsearch: CLI, study files, storage, objective, reports."""
