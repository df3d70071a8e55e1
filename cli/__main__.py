"""`python -m cli`: the same command line as the `bpbench` console script."""

from cli import main

main()
