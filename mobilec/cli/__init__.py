"""The command line: `mobilec.cli:main`. Commands register on import."""

from mobilec.cli import ci_commands as ci_commands  # noqa: F401 - registers `compare`
from mobilec.cli import commands as commands  # noqa: F401 - registers the commands
from mobilec.cli import explore_command as explore_command  # noqa: F401 - registers `explore`
from mobilec.cli.app import main

__all__ = ["main"]
