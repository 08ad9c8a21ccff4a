"""Analyses: global maps + PEPPR, model-collection variability, SIS, activation maximisation,
hyperparameter sensitivity, method ranking, transfer study."""
