"""`python -m scheduler` is the `medgan` command."""

from scheduler.cli import main

if __name__ == "__main__":
    main()
