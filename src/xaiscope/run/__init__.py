"""Run machinery: the validated config, the inputs it opens, the plan of work units,
the run store, the runner and its backends (local, Ray).

Nothing here imports a command: the runner takes the analyses that follow the units as
an argument (``xaiscope.commands.run_job`` passes them).
"""
