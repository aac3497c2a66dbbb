"""The ``crackdet`` command: stage runners plus the tools around the pipeline (maps, evaluation
on other data, registry, lineage, CI gate). Each subcommand's module is imported only when that
subcommand runs, so ``crackdet check-params`` does not pay for torch and MLflow."""
