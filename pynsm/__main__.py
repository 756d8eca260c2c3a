"""``python -m pynsm``: the ``pynsm`` command (:func:`pynsm.cli.main`)."""

from pynsm.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
