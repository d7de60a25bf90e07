from __future__ import annotations

import subprocess
import sys

import pytest

from tailored.cli import main

COMMANDS = [
    ["data", "fetch"],
    ["data", "import"],
    ["data", "synth"],
    ["train"],
    ["evaluate"],
    ["bundle", "build"],
    ["bundle", "verify"],
    ["refresh"],
]


def test_help_lists_every_command_with_one_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tailored.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for line in ("data ", "train ", "evaluate ", "bundle ", "refresh "):
        assert any(
            row.strip().startswith(line) and len(row.split()) > 2 for row in out.splitlines()
        ), line


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([*command, "--help"])
    assert e.value.code == 0
    assert "usage: tailored " + " ".join(command) in capsys.readouterr().out


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys\nfrom tailored.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().endswith("False")
