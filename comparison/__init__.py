"""Support code of compare_models.py: paired statistics over shared validation segments (bootstrap intervals,
Holm correction) and the report (tables, summary, plots)."""
