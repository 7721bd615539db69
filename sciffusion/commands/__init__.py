"""Sub-commands of the ``sciffusion`` command line.

Each module here is one sub-command and defines::

    NAME = "score"                       # the word typed after ``sciffusion``
    HELP = "one line for --help"
    def add_arguments(parser): ...       # argparse arguments (cheap: no heavy imports)
    def run(args) -> int: ...            # does the work (heavy imports inside), returns exit code

``sciffusion.cli`` discovers the modules, so adding a command never edits a shared file.
"""
