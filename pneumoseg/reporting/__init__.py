"""Human-readable outputs: the run report and the comparison of runs (HTML + Markdown)."""
