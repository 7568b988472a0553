"""``python -m tokenreduce.assets NAME COMMAND ...``: the commands of an offline asset that is
built here (``llava-shapes train``, ``llava-shapes evaluate``, ``dit-fmnist train``,
``dit-fmnist eval``; ``--help`` lists each one's
options)."""

from __future__ import annotations

import sys

from . import dit_fmnist, llava_shapes

#: asset name -> its command-line entry point (argv without the asset name)
COMMANDS = {"llava-shapes": llava_shapes.main, "dit-fmnist": dit_fmnist.main}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        names = ", ".join(COMMANDS)
        sys.exit(f"usage: python -m tokenreduce.assets NAME COMMAND ...; NAME is one of: {names}")
    COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
