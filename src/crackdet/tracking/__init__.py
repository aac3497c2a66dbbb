"""MLflow and provenance: the store, the pipeline run, lineage tags, the registry and promotion,
trace and replay, and the CI gate."""
