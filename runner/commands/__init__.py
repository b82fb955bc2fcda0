"""One module per command, each a plain function with typed arguments that returns an exit
code; runner/cli.py parses options and calls them, and turns errors into exit codes.

checking.py holds what several commands share: a flow loaded, compiled and rendered for every
recipient before anything else happens, and which ledger a command reads.
"""
