"""Results: reading records, model selection rules and tables."""
