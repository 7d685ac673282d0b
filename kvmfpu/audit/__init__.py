"""Fleet audit: which guests and stored snapshots come back on which host classes.

inventory (the fleet's host classes, the population of guests and files) -> signature (a
state file reduced to what a verdict reads) -> work (reading files, running one source
against every destination: pure functions) -> engine (this process, a process pool or a
Dask cluster) -> results (JSON Lines rows, verdicts, summary, resume) -> report_html.
"""
