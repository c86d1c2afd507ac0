"""Running the ``vig-pyg`` command line inside a test: exit code, stdout and stderr."""
from vig_pyg.cli import main


def run_cli(argv, capsys):
    """main(argv) -> (exit code, stdout, stderr)."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err
