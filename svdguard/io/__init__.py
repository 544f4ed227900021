"""Loaders and writers of matrices and checkpoints; lazy, and never import rich/typer."""
