"""`python -m loadtest`: the command line, with Ctrl-C handled from the first moment (`loadtest.console`)."""

from .console import main

main()
