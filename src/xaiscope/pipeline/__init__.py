"""Pipeline: inputs, validated config, the run store, the runner and its backends."""
