"""``python -m svdguard`` runs the command-line tool."""

from svdguard.cli.app import main

if __name__ == "__main__":
    main()
