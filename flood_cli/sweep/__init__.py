"""flood sweep: settings x seeds on an Optuna study, run by worker processes."""
