"""`python -m downloader`: the same as the `downloader` command."""
from .cli import main

main()
