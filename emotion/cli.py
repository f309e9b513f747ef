"""The `emotion` command: a thin layer that parses arguments and calls one entry point per subcommand.

Each area registers its subcommands from its own module in `emotion.commands`, so adding a command
never touches the others. User mistakes (bad config, missing files, Redis down) end with one clear
line on stderr and exit code 2, never a bare traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from pydantic import ValidationError

from emotion.errors import UserError

COMMAND_MODULES = ("services", "pipeline", "training", "models", "framing", "store", "bench", "analyze")
# What a shell reports for a command whose reader went away (128 + SIGPIPE), as `yes | head` does.
BROKEN_PIPE_EXIT = 141


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emotion", description="Real-time facial emotion recognition platform.")
    parser.add_argument("--log-level", default=None, type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="DEBUG, INFO, WARNING or ERROR")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"emotion.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=(args.log_level or "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    from shared.errors import StartupError
    from shared.model_runtime import ModelError
    from shared.redis_conn import RedisUnavailable
    from shared.settings import describe_validation_error

    try:
        return int(args.func(args) or 0)
    except (UserError, StartupError, RedisUnavailable, ModelError, FileNotFoundError) as exc:
        print(f"emotion {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"emotion {args.command}: invalid configuration: {describe_validation_error(exc)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `emotion export --output - | head`: the reader has what it wanted. Point stdout at /dev/null
        # so that the interpreter's final flush cannot raise (and print) the same error again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE_EXIT
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
