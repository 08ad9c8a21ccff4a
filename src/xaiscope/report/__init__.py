"""Report: figures and the HTML report (reads the run directory, never writes results)."""
