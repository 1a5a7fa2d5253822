"""`python -m loadtest`: the command line, with Ctrl-C handled from the first moment (`loadtest.cli.console`)."""

from loadtest.cli.console import main

main()
