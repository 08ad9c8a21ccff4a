"""Commands: one module per CLI job, thin (parse, open inputs, call the analysis, write).

A command may import every layer below it (``run``, ``analyses``, ``evaluate``,
``explain``, ``models``, ``data``, ``report``) and other commands; nothing below imports
a command.
"""
