"""`python -m shiftbench ...` is the same as the `shiftbench` console script."""

from shiftbench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
