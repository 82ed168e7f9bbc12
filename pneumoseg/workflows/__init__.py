"""Multi-stage workflows built from the stages: studies and the demo."""
