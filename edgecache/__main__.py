"""`python -m edgecache` and the pyinstaller entry point."""

from edgecache.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
