"""The command line: one module per verb (``<verb>_cmd.py``), each with ``add_parser`` and
``run``. Only this package prints to the terminal and chooses exit codes."""
