"""Command-line flags of the bench scripts: integer sizes and counts with defaults."""

import argparse


def int_flags(description: str, **defaults: int) -> argparse.Namespace:
    """Parses `--<name>=<int>` for every keyword of `defaults` (its value is the default)."""
    parser = argparse.ArgumentParser(description=description)
    for name, value in defaults.items():
        parser.add_argument(f"--{name}", type=int, default=int(value))
    return parser.parse_args()
