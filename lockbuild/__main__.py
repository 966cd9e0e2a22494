"""The `lockbuild` console script and `python -m lockbuild`: uv's head start for `lock --upgrade`
(resolve/headstart.py), with only the standard library loaded, then the CLI."""

import sys


def run() -> None:
    from lockbuild.resolve.headstart import start

    start(sys.argv[1:])
    from lockbuild.cli import main

    main()


if __name__ == "__main__":
    run()
