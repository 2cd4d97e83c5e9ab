"""`python -m cli` is the `medgan` command."""

from cli import main

if __name__ == "__main__":
    main()
